"""Servers stop like servers: ``notebook-exp view`` / ``demo`` as real processes, real
signals, a real Chromium session; and the viewer a kernel serves stops with the kernel."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import notebook_exp as nx
from notebook_exp import _exit, _viewing
from notebook_exp.store import close_all

CLI = [sys.executable, "-m", "notebook_exp.cli"]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
STOP_BUDGET = 2.0  # seconds from the signal to the process's exit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, timeout: float = 20) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"server exited with {proc.returncode}:\n{out}\n{err}")
        try:
            return json.loads(get(url + "/health", timeout=2)[1])
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer /health in {timeout} s")


def refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def one_run_store(tmp_path) -> Path:
    path = tmp_path / "served.duckdb"
    with nx.start_run("served-run", experiment="srv", params={"lr": 0.1}, store=path) as run:
        for step in range(20):
            run.log(loss=1.0 / (step + 1), step=step)
    close_all()  # the file is free for the server process
    return path


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Served:
    """A ``notebook-exp`` command serving on a free loopback port, as a real process."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([*CLI, *args, "--port", str(self.port)], cwd=cwd, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def stop(self, sig: int) -> tuple[float, str, str]:
        """Send ``sig``; returns (seconds until exit, stdout, stderr)."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return time.monotonic() - sent, out, err


def open_session(browser, url: str):
    """A Chromium page with a live bokeh session (its websocket is watched for the close)."""
    page = browser.new_page()
    closed: list[bool] = []
    page.on("websocket", lambda ws: ws.on("close", lambda _ws: closed.append(True)))
    page.goto(url)
    page.locator(".nx-runs-table .tabulator-row").first.wait_for(timeout=60_000)
    return page, closed


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_view_stops_cleanly_on_signal(sig, one_run_store, chromium, tmp_path):
    served = Served(["view", "--store", str(one_run_store)], tmp_path)
    assert wait_healthy(served.url, served.proc)["runs"] == 1
    page, ws_closed = open_session(chromium, served.url)
    try:
        took, out, err = served.stop(sig)
        deadline = time.monotonic() + 5
        while not ws_closed and time.monotonic() < deadline:
            page.wait_for_timeout(50)  # lets Playwright deliver the websocket's close event
    finally:
        page.close()
    print(f"{signal.Signals(sig).name}: view exited {took:.3f} s after the signal")
    assert served.proc.returncode == 0, err
    assert took < STOP_BUDGET, (took, err)
    assert "Traceback" not in err and "Error" not in err, err
    assert f"viewer stopped on {signal.Signals(sig).name}; 1 browser session closed" in out
    assert ws_closed, "the browser's websocket was not closed by the server"
    assert refused(served.port)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_demo_stops_cleanly_on_signal_while_serving(sig, tmp_path):
    store = tmp_path / "demo.duckdb"
    served = Served(["demo", "--steps", "2000", "--store", str(store)], tmp_path)
    assert wait_healthy(served.url, served.proc)["runs"] == 6
    status, page = get(served.url + "/")  # a real page request: the server makes a session for it
    assert status == 200 and b"notebook_exp viewer" in page
    took, out, err = served.stop(sig)
    print(f"{signal.Signals(sig).name}: demo exited {took:.3f} s after the signal")
    assert served.proc.returncode == 0, err
    assert took < STOP_BUDGET, (took, err)
    assert "Traceback" not in err, err
    assert "Read back from DuckDB" in out
    assert f"viewer stopped on {signal.Signals(sig).name}; 1 browser session closed" in out


@pytest.mark.parametrize(("sig", "code", "reason"), [
    (signal.SIGINT, 130, "cancelled"), (signal.SIGTERM, 143, "terminated by SIGTERM"),
], ids=["SIGINT", "SIGTERM"])
def test_signal_during_the_demo_sweep_cancels_the_run_without_a_traceback(sig, code, reason, tmp_path, read_only):
    store = tmp_path / "sweep.duckdb"
    proc = subprocess.Popen([*CLI, "demo", "--steps", "400000", "--store", str(store), "--port", str(free_port())],
                            cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().startswith("Sweeping")
        deadline = time.monotonic() + 60
        while not store.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # well inside the first run (400,000 steps take several seconds)
        sent = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"{signal.Signals(sig).name} during the sweep: exited {took:.3f} s after the signal")
    assert proc.returncode == code, err
    assert took < STOP_BUDGET, took
    assert "Traceback" not in err, err
    assert err.strip().startswith("notebook-exp: ")
    rows = read_only(store, "SELECT name, status, error FROM runs ORDER BY created_at")
    assert rows[-1][1:] == ("cancelled", reason), rows
    assert not any(status == "running" for _name, status, _error in rows)


def wait_up(url: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return json.loads(get(url + "health")[1])
        except OSError:
            assert time.monotonic() < deadline, f"{url} did not come up"
            time.sleep(0.1)


def test_a_kernel_viewer_stops_with_the_kernel(one_run_store):
    link = nx.view(store=one_run_store)
    port = int(link.url.rstrip("/").rsplit(":", 1)[1])
    assert wait_up(link.url)["runs"] == 1
    assert get(link.url)[0] == 200  # a session
    server = _viewing._server
    started = time.monotonic()
    _exit.shutdown()  # what the kernel's exit runs
    took = time.monotonic() - started
    print(f"kernel viewer: stopped by the shutdown steps in {took:.3f} s")
    assert _viewing._server is None and server.sessions_closed == 1
    assert took < STOP_BUDGET and refused(port)
    again = nx.view(store=one_run_store)  # a later call serves again (the fixture's shutdown stops it)
    assert wait_up(again.url)["runs"] == 1


CHILD = """
import sys, urllib.request
import notebook_exp as nx
from notebook_exp import _exit, _viewing
link = nx.view(store=sys.argv[1])
for _ in range(600):
    try:
        urllib.request.urlopen(link.url + "health", timeout=2).read()
        break
    except OSError:
        import time; time.sleep(0.1)
urllib.request.urlopen(link.url, timeout=20).read()
server = _viewing._server

def report():  # runs after the viewer's own step (order 30), before the stores close (90)
    print("after-viewer-step", _viewing._server is None, server.sessions_closed, flush=True)

_exit.on_shutdown(report, order=31)
print("serving", link.url, flush=True)
sys.stdin.readline()
"""


def test_the_viewer_of_an_exiting_interpreter_stops_at_exit(one_run_store):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(one_run_store)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        port = int(line.split()[1].rstrip("/").rsplit(":", 1)[1])
        started = time.monotonic()
        out, err = proc.communicate("\n", timeout=30)  # the script ends: the interpreter exits
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "after-viewer-step True 1" in out, (out, err)
    assert "Traceback" not in err, err
    assert took < STOP_BUDGET + 1 and refused(port)


def test_a_threaded_server_carries_port_and_url_and_stops_idempotently(one_run_store):
    from notebook_exp_viewer import ViewerServer, serve

    server = serve(store=one_run_store, port=0, threaded=True)
    assert isinstance(server, ViewerServer) and server.url == f"http://127.0.0.1:{server.port}/"
    assert wait_up(server.url)["runs"] == 1
    server.stop()
    server.stop()  # again: nothing to do
    assert refused(server.port) and repr(server) == f"<ViewerServer {server.url}>"
