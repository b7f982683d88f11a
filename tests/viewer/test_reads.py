"""``Reads`` as a server session uses them: reads on the pool, results applied through a
bokeh Document's next-tick callbacks (run here by the test, as the session's loop would)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from bokeh.document import Document
from notebook_exp_viewer.background import BUSY, Reads
from notebook_exp_viewer.components.runs_table import RunsList
from notebook_exp_viewer.state import ViewerState

from notebook_exp.exceptions import StoreLocked
from notebook_exp.testing import StoreHolder


def drain(doc: Document, reads: Reads, timeout: float = 20.0) -> None:
    """Play the session's loop: run its callbacks (finished reads hand themselves over),
    then the document's next-tick callbacks (where they are applied), until none is in flight."""
    deadline = time.monotonic() + timeout
    while True:
        reads.loop.run_until_complete(asyncio.sleep(0.01))
        callbacks = list(doc.session_callbacks)
        for callback in callbacks:
            doc.remove_next_tick_callback(callback)
            callback.callback()
        if not callbacks and not reads.in_flight:
            return
        assert time.monotonic() < deadline, f"reads still in flight: {reads.in_flight}"
        time.sleep(0.01)


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def served(loop):
    doc = Document()
    statuses: list[str] = []
    return doc, Reads(doc, on_status=statuses.append, loop=loop), statuses


def test_reads_run_off_the_calling_thread_and_apply_only_through_the_document(served):
    doc, reads, _statuses = served
    caller = threading.get_ident()
    seen = {}
    reads.submit("k", lambda: threading.get_ident(), lambda ident: seen.setdefault("read_on", ident))
    assert seen == {}  # submit returns at once; nothing applied outside the document's callbacks
    drain(doc, reads)
    assert seen["read_on"] != caller


def test_the_newest_read_of_a_key_wins(served):
    doc, reads, _statuses = served
    gate = threading.Event()
    applied = []
    reads.submit("k", lambda: gate.wait(10) and "old", applied.append)
    reads.submit("k", lambda: "new", applied.append)
    gate.set()
    drain(doc, reads)
    assert applied == ["new"]


def test_periodic_reads_skip_while_one_is_in_flight(served):
    doc, reads, _statuses = served
    gate = threading.Event()
    calls = []

    def slow():
        calls.append(1)
        gate.wait(10)
        return len(calls)

    applied = []
    reads.submit("tick", slow, applied.append, periodic=True)
    reads.submit("tick", slow, applied.append, periodic=True)  # still in flight: skipped
    gate.set()
    drain(doc, reads)
    assert calls == [1] and applied == [1]


def test_a_busy_read_waits_says_so_and_a_retry_recovers(served):
    doc, reads, statuses = served
    answers = iter([StoreLocked("s.duckdb", 4242, 0.5), "rows"])

    def read():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    applied = []
    reads.submit("runs", read, applied.append)
    drain(doc, reads)
    assert applied == [] and reads.waiting == ["runs"]
    assert statuses == [f"{BUSY} (held by process 4242)"]
    reads.retry()
    drain(doc, reads)
    assert applied == ["rows"] and reads.waiting == [] and statuses[-1] == ""


def test_quick_filter_changes_in_a_session_all_apply(tmp_path, loop):
    import notebook_exp as nx
    from notebook_exp.store import close_all

    path = tmp_path / "filters.duckdb"
    for name, lr, experiment in [("a", 0.1, "x"), ("b", 0.01, "x"), ("c", 0.001, "y")]:
        with nx.start_run(name, experiment=experiment, params={"lr": lr}, store=path):
            pass
    close_all()
    doc = Document()
    state = ViewerState(path, doc=doc, loop=loop)
    table = RunsList(state)
    assert len(table.table.value) == 0  # the first read is still on its way
    drain(doc, state.reads)
    assert len(table.table.value) == 3
    table.experiments.value = ["x"]  # two changes before either read came back:
    table.expression.value = "lr < 0.05"  # the newer read carries both
    drain(doc, state.reads)
    assert state.experiments == ["x"] and state.expression == "lr < 0.05"
    assert list(table.table.value["name"]) == ["b"]
    with StoreHolder(path):
        table.text.value = "b"
        drain(doc, state.reads)
        assert state.reads.waiting == ["runs"] and state.status.startswith(BUSY)
    state.reads.retry()
    drain(doc, state.reads)
    assert state.text == "b" and state.status == "" and list(table.table.value["name"]) == ["b"]


def test_a_download_waits_for_a_held_store_and_completes_once_free(tmp_path):
    from notebook_exp_viewer.components.export import MetricsExport

    import notebook_exp as nx
    from notebook_exp.store import close_all

    path = tmp_path / "export.duckdb"
    with nx.start_run("exported", store=path) as run:
        run.log(loss=0.5, step=0)
    close_all()
    state = ViewerState(path, selected=[run.run_id])
    export = MetricsExport(state)
    with StoreHolder(path) as holder:
        async def click():
            download = asyncio.ensure_future(export._download())  # FileDownload's async callback
            await asyncio.sleep(1.0)
            assert not download.done() and state.status.startswith(BUSY)
            holder.release()
            return await download

        data = asyncio.run(click())
    assert data.getvalue().startswith(b'"run_name","run_id","key"') and b"exported" in data.getvalue()
    assert state.status == ""
