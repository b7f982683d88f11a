"""Flushing while the store's writer is idle, the writer ready before a loop starts,
and the GIL switch interval as a setting (issue 17)."""

import sys
import time

import notebook_exp as nx
from notebook_exp.store import _gil
from notebook_exp.store.core import get_store
from notebook_exp.testing import MemorySink

PATIENCE = 30.0  # seconds a background flush gets on a loaded machine: a functional bound only


def wait_for(condition, timeout: float = PATIENCE) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def stored_points(read_only, path, run_id) -> int:
    return read_only(path, "SELECT count(*) FROM metrics WHERE run_id = ?", [run_id])[0][0]


def test_an_idle_writer_gets_the_buffer_long_before_flush_interval(store_path, settings_env, read_only):
    settings_env(FLUSH_INTERVAL="60", IDLE_FLUSH_ROWS="100")
    sink = MemorySink()
    run = nx.start_run(sinks=["duckdb", sink])
    for i in range(150):
        run.log(loss=float(i), step=i)
    # no flush call, and flush_interval is a minute away: only the idle rule hands it over
    assert wait_for(lambda: run.points == 150)
    writer = get_store(store_path).writer
    assert wait_for(lambda: writer.pending(run.run_id) == 0 and writer.idle)
    assert stored_points(read_only, store_path, run.run_id) == 150
    batches = sink.methods.count("log_metrics")
    run.end()
    assert sink.methods.count("log_metrics") == batches  # end() found nothing left to hand over
    assert [step for _k, step, _t, _v in sink.points] == list(range(150))


def test_below_idle_flush_rows_the_buffer_waits_for_flush_interval(store_path, settings_env):
    settings_env(FLUSH_INTERVAL="60", IDLE_FLUSH_ROWS="1000")
    run = nx.start_run()
    for i in range(999):
        run.log(loss=float(i), step=i)
    for _ in range(10):  # as many flusher ticks as the test likes: none is due
        run._flush()
    assert run.points == 0
    run.log(loss=1.0, step=999)
    assert wait_for(lambda: run.points == 1000)
    run.end()


def test_a_busy_writer_makes_batches_grow(store_path, settings_env):
    settings_env(FLUSH_INTERVAL="60", IDLE_FLUSH_ROWS="100")
    run = nx.start_run()
    store = get_store(store_path)
    writer = store.writer
    with store.session(write=True):  # this thread holds the file: the writer's next commit waits
        run.log(loss=0.0, step=0)
        run.flush(timeout=0)  # one point queued: the writer is busy, waiting for the file
        assert wait_for(lambda: not writer.idle)
        for i in range(1, 500):
            run.log(loss=float(i), step=i)
        for _ in range(10):
            run._flush()
        assert run.points == 1  # 499 points over idle_flush_rows, but the writer is busy
    assert wait_for(lambda: run.points == 500)  # idle again: the rest goes in one batch
    run.end()
    frame = nx.metrics(run.run_id)
    assert list(frame.step) == list(range(500))


def test_idle_flush_rows_zero_turns_it_off(store_path, settings_env):
    settings_env(FLUSH_INTERVAL="60", IDLE_FLUSH_ROWS="0")
    run = nx.start_run()
    for i in range(5000):
        run.log(loss=float(i), step=i)
    for _ in range(10):
        run._flush()
    assert run.points == 0
    run.end()
    assert run.points == 5000


def test_start_run_returns_with_the_run_row_committed(store_path, read_only):
    run = nx.start_run("ready")
    writer = get_store(store_path).writer
    assert writer.idle
    assert read_only(store_path, "SELECT name, status FROM runs WHERE run_id = ?", [run.run_id]) == [
        ("ready", "running")
    ]
    run.end()


def test_the_switch_interval_setting_is_used_in_sessions_and_restored(store_path, settings_env):
    store = get_store(store_path)
    store.ensure()
    before = sys.getswitchinterval()
    settings_env(GIL_SWITCH_INTERVAL="0.0005")
    with store.session(write=True):
        assert sys.getswitchinterval() == 0.0005
    assert sys.getswitchinterval() == before
    settings_env(GIL_SWITCH_INTERVAL="0")  # 0: the interpreter's own interval stays
    with store.session(write=True):
        assert sys.getswitchinterval() == before
    assert sys.getswitchinterval() == before


def test_configure_overrides_the_setting_until_reset(store_path, settings_env):
    settings_env(GIL_SWITCH_INTERVAL="0.002")
    before = sys.getswitchinterval()
    try:
        _gil.configure(0.0007)
        with _gil.quick_gil_handoff():
            assert sys.getswitchinterval() == 0.0007
        _gil.configure(None)
        with _gil.quick_gil_handoff():
            assert sys.getswitchinterval() == min(before, 0.002)
    finally:
        _gil.configure(None)
    assert sys.getswitchinterval() == before
