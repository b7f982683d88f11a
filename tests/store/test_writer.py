import sys

import pytest

from notebook_exp.store import get_store


@pytest.fixture
def switch_interval():
    before = sys.getswitchinterval()
    yield before
    sys.setswitchinterval(before)


def test_the_gil_switch_interval_is_lowered_only_while_the_writer_commits(store_path, switch_interval):
    writer = get_store(store_path).writer
    seen = []
    writer.submit_call(lambda conn: seen.append(sys.getswitchinterval()))
    assert writer.flush(timeout=30)
    assert seen and seen[0] <= 0.001 < switch_interval
    assert sys.getswitchinterval() == switch_interval


def test_reads_in_this_process_get_the_short_interval_too(store_path, switch_interval):
    import notebook_exp as nx

    with nx.start_run() as run:
        run.log(x=1.0)
    store = get_store(store_path)
    with store.session() as conn:
        assert sys.getswitchinterval() <= 0.001
        assert conn.execute("SELECT count(*) FROM runs").fetchall() == [(1,)]
    assert sys.getswitchinterval() == switch_interval


def test_a_switch_interval_set_during_a_window_is_left_alone(store_path, switch_interval):
    writer = get_store(store_path).writer
    writer.submit_call(lambda conn: sys.setswitchinterval(0.02))
    assert writer.flush(timeout=30)
    assert sys.getswitchinterval() == pytest.approx(0.02)


def test_a_failing_write_still_restores_the_switch_interval(store_path, switch_interval):
    writer = get_store(store_path).writer
    seq = writer.submit("INSERT INTO no_such_table VALUES (1)")
    with pytest.raises(Exception, match="no_such_table"):
        writer.wait(seq, timeout=60)
    assert sys.getswitchinterval() == switch_interval
    ok = writer.submit("SELECT 1")
    assert writer.wait(ok, timeout=30)


def block_size(read_only, path) -> int:
    ((size,),) = read_only(path, "SELECT block_size FROM pragma_database_size()")
    return size


def test_a_new_store_has_small_blocks_and_an_old_one_keeps_its_own(store_path, tmp_path, read_only):
    """A store this package creates uses ``schema.BLOCK_SIZE`` (64 KiB) blocks, not DuckDB's
    256 KiB; a store made before keeps its 256 KiB blocks and takes new points as before."""
    import duckdb

    import notebook_exp as nx
    from notebook_exp.store import schema
    from notebook_exp.testing import shutdown

    with nx.start_run("new") as run:
        run.log(loss=0.5, step=0)
    old = tmp_path / "old.duckdb"
    conn = duckdb.connect(":memory:")
    conn.execute(f"ATTACH '{old}' AS store (BLOCK_SIZE 262144)")
    conn.close()
    with nx.start_run("into the old one", store=old) as run:
        for step in range(1000):
            run.log(loss=1.0 / (step + 1), step=step)
    shutdown()
    assert block_size(read_only, store_path) == schema.BLOCK_SIZE == 65_536
    assert block_size(read_only, old) == 262_144
    assert read_only(old, "SELECT count(*), max(step) FROM metrics") == [(1000, 999)]
