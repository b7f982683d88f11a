"""The viewer never blocks on the store: another process holds the file (plain duckdb),
the viewer says "store busy, retrying", stays responsive, and recovers by itself."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from notebook_exp_viewer import serve
from notebook_exp_viewer.app import ViewerApp
from notebook_exp_viewer.state import DEFAULT_READ_TIMEOUT, ViewerState
from playwright.sync_api import expect
from viewer_support import start_viewer, stop_process

import notebook_exp as nx
from notebook_exp.exceptions import StoreLocked
from notebook_exp.store import close_all
from notebook_exp.testing import StoreHolder

OLD_LOCK_WAIT = 10.0  # what a read waited for the file before (ViewerState's lock_timeout)
SWEEP = {"lr-0.1": 0.1, "lr-0.01": 0.01, "lr-0.001": 0.001}


def make_store(path, names=SWEEP) -> dict[str, str]:
    ids = {}
    for name, lr in names.items():
        with nx.start_run(name, experiment="busy", params={"lr": lr}, store=path) as run:
            for step in range(30):
                run.log(loss=lr / (step + 1), step=step)
        ids[name] = run.run_id
    close_all()  # this process lets go of the file: only the holder will have it
    return ids


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "busy.duckdb"
    return path, make_store(path)


def test_a_read_gives_up_after_the_short_wait_and_names_the_holder(store):
    path, ids = store
    state = ViewerState(path)
    with StoreHolder(path) as holder:
        started = time.monotonic()
        with pytest.raises(StoreLocked) as info:
            state.list_runs()
        took = time.monotonic() - started
    print(f"a read of a held store gave up after {took:.3f} s")
    assert DEFAULT_READ_TIMEOUT <= took < DEFAULT_READ_TIMEOUT + 0.5
    assert info.value.pid == holder.pid
    assert len(state.list_runs()) == len(ids)  # released: reads work again


def test_app_refresh_while_held_says_busy_keeps_the_table_and_recovers(store):
    path, ids = store
    app = ViewerApp(ViewerState(path))
    assert len(app.runs.table.value) == len(ids)
    make_store(path, {"late": 0.5})  # a run the app has not seen yet
    with StoreHolder(path) as holder:
        started = time.monotonic()
        app.refresh()
        took = time.monotonic() - started
        print(f"an inline app refresh of a held store took {took:.3f} s")
        assert took < OLD_LOCK_WAIT / 5
        assert app.state.status == f"store busy, retrying (held by process {holder.pid})"
        assert "store busy, retrying" in app.status.object
        assert len(app.runs.table.value) == len(ids)  # what it showed stays
        app.runs.text.value = "late"  # a filter typed meanwhile waits for the store
        assert app.state.reads.waiting == ["runs"] and app.state.text == ""
    app.refresh()  # the periodic callback: retries what waited, then refreshes
    assert app.state.status == "" and app.status.object == ""
    assert app.state.text == "late" and list(app.runs.table.value["name"]) == ["late"]
    assert app.state.reads.waiting == []


def get(url: str, timeout: float = 30) -> tuple[int, bytes, float]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read(), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), time.monotonic() - started


def test_served_pages_and_health_answer_while_the_store_is_held(store):
    path, ids = store
    server = serve(store=path, port=0, threaded=True)
    try:
        url = server.url
        assert json.loads(get(url + "health")[1])["runs"] == len(ids)
        with StoreHolder(path):
            status, page, took = get(url)  # a new session: its reads go to the pool
            health, body, health_took = get(url + "health")
        print(f"while held: a page in {took:.3f} s, /health in {health_took:.3f} s")
        assert status == 200 and b"notebook_exp viewer" in page and took < 3.0
        assert health == 503 and json.loads(body)["error"] == "StoreLocked" and health_took < 2.0
        assert json.loads(get(url + "health")[1])["runs"] == len(ids)
    finally:
        server.stop()


def rows(page):
    return page.locator(".nx-runs-table .tabulator-row")


def test_two_pages_stay_responsive_while_held_and_recover(browser, tmp_path):
    path = tmp_path / "held.duckdb"
    make_store(path)
    proc, url = start_viewer(path, refresh=1.0)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    context.on("page", lambda page: page.on("pageerror", lambda exc: errors.append(str(exc))))
    try:
        watcher, other = context.new_page(), context.new_page()
        for page in (watcher, other):
            page.goto(url)
            expect(rows(page)).to_have_count(len(SWEEP))
        with StoreHolder(path) as holder:
            expect(watcher.locator(".nx-status")).to_contain_text("store busy, retrying")
            expect(watcher.locator(".nx-status")).to_contain_text(str(holder.pid))
            started = time.monotonic()
            other.locator(".bk-tab", has_text="Compare").click()  # dynamic tab: the server sends it
            expect(other.get_by_text("Select runs on the Runs page, then open Compare.")).to_be_visible()
            switched = time.monotonic() - started
            other.locator(".bk-tab", has_text="Runs").click()
            box = other.locator(".nx-filter input")
            box.fill("lr < 0.05")
            box.press("Enter")
            expect(box).to_have_value("lr < 0.05")
            late = context.new_page()  # a page opened while the store is held loads too
            late.goto(url)
            expect(late.locator(".nx-status")).to_contain_text("store busy, retrying")
            expect(rows(watcher)).to_have_count(len(SWEEP))  # what it showed stays
        print(f"while held: switching tabs took {switched:.3f} s")
        assert switched < 5.0
        for page in (watcher, late):
            expect(rows(page)).to_have_count(len(SWEEP))
            expect(page.locator(".nx-status")).to_have_text("")
        expect(rows(other)).to_have_count(2)  # the filter typed while held was applied after
        assert errors == []
    finally:
        context.close()
        stop_process(proc)
