"""serve() in this process (as from a kernel): /health, the page, auth, the shared Store."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import logging
import time
import urllib.error
import urllib.request

import pytest
from notebook_exp_viewer import ViewerState, serve

from notebook_exp.store import get_store


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_up(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            get(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def threaded(sample):
    servers = []

    def start(**kw):
        server = serve(store=sample[0], port=0, threaded=True, **kw)
        servers.append(server)
        url = server.url.rstrip("/")
        wait_up(url + "/health")
        return url

    yield start
    for server in servers:
        server.stop()


def test_threaded_serve_answers_health_and_page(threaded, sample):
    url = threaded()
    status, body = get(url + "/health")
    assert status == 200
    assert json.loads(body) == {"status": "ok", "runs": len(sample[1]), "store": str(sample[0])}
    status, page = get(url + "/")
    assert status == 200 and b"notebook_exp viewer" in page


def test_an_update_to_a_tab_that_closed_is_no_warning_on_the_kernels_stderr(threaded):
    """A served viewer demotes bokeh's one warning for a message to a closed websocket to
    DEBUG (in a kernel it printed into the next cell: nbval saw it on 05_viewer); other
    warnings of that logger stay warnings."""
    import bokeh.server.views.ws as ws
    from notebook_exp_viewer.server import CLOSED_TAB_WARNING

    assert CLOSED_TAB_WARNING in inspect.getsource(ws)  # bokeh's wording, which the filter matches
    threaded()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    ws.log.addHandler(handler)
    level = ws.log.level
    try:
        ws.log.warning(CLOSED_TAB_WARNING)
        ws.log.warning("Refusing websocket connection from Origin 'http://elsewhere'")
        ws.log.setLevel(logging.DEBUG)
        ws.log.warning(CLOSED_TAB_WARNING)
    finally:
        ws.log.removeHandler(handler)
        ws.log.setLevel(level)
    assert [(r.levelname, r.getMessage()) for r in records] == [
        ("WARNING", "Refusing websocket connection from Origin 'http://elsewhere'"),
        ("DEBUG", CLOSED_TAB_WARNING),
    ]


def test_stop_lets_every_pending_task_end_and_a_dead_socket_write_is_no_error(sample):
    """What stop() printed into a kernel's cell: tasks destroyed pending with the loop
    (Panel's indicator throttles) and a dropped write to a closed websocket ("Task
    exception was never retrieved"). Now stop cancels and ends the pending tasks, and the
    loop logs a closed-socket error at DEBUG; any other unretrieved error is still an error."""
    from tornado.websocket import WebSocketClosedError

    server = serve(store=sample[0], port=0, threaded=True)
    made: dict[str, asyncio.Task] = {}

    async def fail(exc: BaseException) -> None:
        raise exc

    def start_tasks() -> None:
        made["pending"] = asyncio.ensure_future(asyncio.sleep(3600))
        made["closed"] = asyncio.ensure_future(fail(WebSocketClosedError()))
        made["other"] = asyncio.ensure_future(fail(ValueError("a real bug")))

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addHandler(handler)
    try:
        server._loop.call_soon_threadsafe(start_tasks)
        deadline = time.monotonic() + 10
        while not (made.get("other") and made["other"].done()) and time.monotonic() < deadline:
            time.sleep(0.01)
        server.stop()
        assert not server._thread.is_alive()
        assert made["pending"].cancelled()
        made.clear()  # nobody retrieves the two exceptions: the loop reports them when collected
        gc.collect()
    finally:
        asyncio_log.removeHandler(handler)
        server.stop()
    reported = [r.exc_info[1] for r in records if r.levelno >= logging.ERROR and r.exc_info]
    assert [type(exc).__name__ for exc in reported] == ["ValueError"]


def test_basic_auth_guards_pages_and_hides_store_path(threaded, sample):
    url = threaded(basic_auth="s3cret-pass")
    status, body = get(url + "/health")
    assert status == 200 and json.loads(body) == {"status": "ok", "runs": len(sample[1])}
    request = urllib.request.Request(url + "/")
    opener = urllib.request.build_opener(_NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as info:
        opener.open(request, timeout=10)
    assert info.value.code in (302, 401, 403)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_state_reads_through_the_process_store(sample):
    assert ViewerState(sample[0]).store is get_store(sample[0])


def test_front_door_names():
    import notebook_exp_viewer

    for name in notebook_exp_viewer.__all__:
        assert callable(getattr(notebook_exp_viewer, name))
    assert 1024 <= notebook_exp_viewer.free_port() <= 65535
