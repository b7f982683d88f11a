"""serve() in this process (as from a kernel): /health, the page, auth, the shared Store."""

from __future__ import annotations

import json
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
