"""Control from the Queue page (``--allow-control``), and none without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import duckdb
import pytest
from playwright.sync_api import expect
from viewer_support import EXPECT_TIMEOUT_MS, free_port, screenshot, stop_process, wait_healthy

#: One process-executor run that logs until it is stopped, and one queued behind it (after=).
OWNER = """
    import time
    import notebook_exp as nx

    def work(run):
        while True:
            run.log(k=1.0)
            time.sleep(0.05)

    first = nx.submit(work, name="long-one", executor="process")
    second = nx.submit(lambda run: None, name="after-long", after=[first])
    while first.status.value != "running":
        time.sleep(0.02)
    print(first.run_id, second.run_id, flush=True)
    print(nx.wait([first, second], timeout=300), flush=True)
"""


@pytest.fixture
def owner(store_path, request):
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(OWNER)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "NOTEBOOK_EXP_CANCEL_GRACE": "3"})
    request.addfinalizer(lambda: (proc.kill(), proc.communicate()))
    first, second = proc.stdout.readline().split()
    return proc, first, second


def serve(store_path: Path, *extra: str):
    port = free_port()
    log_path = Path(store_path).parent / f"viewer-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "notebook_exp_viewer", "--store", str(store_path),
                                 "--port", str(port), "--refresh", "0.5", *extra],
                                stdout=log, stderr=subprocess.STDOUT, cwd=str(Path(store_path).parent))
    proc.log_path = log_path
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc)
    return proc, url


@pytest.fixture
def open_page(browser):
    contexts = []

    def open_at(url: str):
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(EXPECT_TIMEOUT_MS)
        page.goto(url)
        return page

    yield open_at
    for context in contexts:
        context.close()


def row_of(page, name: str):
    return page.locator(".nx-queue .tabulator-row").filter(
        has=page.locator(f'.tabulator-cell[tabulator-field="name"]:text-is("{name}")'))


def stored(store, sql: str, args=()):
    """Read with plain duckdb, waiting for a live run's writer to let go of the file."""
    deadline = time.monotonic() + 20
    while True:
        try:
            with duckdb.connect(str(store), read_only=True) as conn:
                return conn.execute(sql, list(args)).fetchall()
        except duckdb.IOException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_cancel_from_the_page_stops_another_processes_running_run(owner, store_path, open_page):
    proc, first, second = owner
    viewer, url = serve(store_path, "--allow-control")
    try:
        page = open_page(f"{url}/?page=queue")
        expect(row_of(page, "long-one")).to_have_count(1)
        expect(row_of(page, "after-long").locator('[tabulator-field="raise"]')).to_have_text("priority +1")
        row_of(page, "after-long").locator('[tabulator-field="raise"]').click()
        expect(page.locator(".nx-control-answer")).to_contain_text("priority", timeout=15_000)
        expect(row_of(page, "after-long").locator('[tabulator-field="priority"]')).to_have_text("6", timeout=15_000)
        screenshot(page, "queue-control")

        clicked = time.monotonic()
        row_of(page, "long-one").locator('[tabulator-field="cancel"]').click()
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - clicked
        assert proc.returncode == 0, err
        assert took < 3 + 10  # cancel_grace, plus the request's round trip and the process's exit
        rows = dict(stored(store_path, "SELECT name, status FROM runs"))
        assert rows == {"long-one": "cancelled", "after-long": "cancelled"}  # its dependent cannot run now
        events = stored(store_path, "SELECT event, detail FROM events WHERE run_id=? ORDER BY ts", [first])
        asked = [detail for event, detail in events if event == "cancel_requested"]
        assert len(asked) == 1 and "viewer user" in asked[0] and f"pid {viewer.pid}" in asked[0]
        priority = stored(store_path, "SELECT detail FROM events WHERE run_id=? AND event='priority'", [second])
        assert priority and "viewer user" in priority[0][0]
        expect(page.locator(".nx-queue-note")).to_contain_text("Nothing queued or running", timeout=30_000)
    finally:
        stop_process(viewer)


def test_without_allow_control_there_is_no_control(owner, store_path, open_page):
    proc, first, _second = owner
    viewer, url = serve(store_path)
    try:
        page = open_page(f"{url}/?page=queue")
        expect(row_of(page, "long-one")).to_have_count(1)
        assert page.locator('.nx-queue [tabulator-field="cancel"]').count() == 0
        assert "cancel" not in page.locator(".nx-queue").inner_text()
        row_of(page, "long-one").locator('[tabulator-field="status"]').click()  # a click does nothing else
        for method in ("POST", "PUT", "DELETE"):  # the API only reads
            request = urllib.request.Request(f"{url}/api/v1/runs/{first}", method=method, data=b"{}")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 405 and "message" in json.loads(refused.value.read())
        time.sleep(1.5)  # a request would be acted on within a second
        assert dict(stored(store_path, "SELECT name, status FROM runs"))["long-one"] == "running"
        assert stored(store_path, "SELECT count(*) FROM requests") == [(0,)]
    finally:
        stop_process(viewer)
        proc.kill()
