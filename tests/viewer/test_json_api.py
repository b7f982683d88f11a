"""The viewer's read-only JSON API (viewer/api.py), against a real server on a store of real runs."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import duckdb
import pytest
from viewer_support import free_port, stop_process, wait_healthy


def get(url: str, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.headers["Content-Type"].startswith("application/json")
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        assert exc.headers["Content-Type"].startswith("application/json")
        return exc.code, json.loads(exc.read())


def api(viewer: str, path: str, **query) -> tuple[int, dict]:
    text = urllib.parse.urlencode(query, doseq=True)
    return get(f"{viewer}/api/v1/{path}" + (f"?{text}" if text else ""))


def stored(store, sql: str, args=()):
    with duckdb.connect(str(store), read_only=True) as conn:
        return conn.execute(sql, list(args)).fetchall()


def test_runs_lists_every_run_with_params_and_last_metrics(viewer, browser_store):
    store, ids = browser_store
    status, body = api(viewer, "runs", metrics="loss")
    assert status == 200
    assert body["total"] == len(ids) and {run["run_id"] for run in body["runs"]} == set(ids.values())
    run = next(r for r in body["runs"] if r["run_id"] == ids["lr-0.1"])
    assert run["name"] == "lr-0.1" and run["status"] == "completed" and run["experiment"] == "mnist"
    assert run["params"] == {"lr": 0.1, "bs": 32, "opt": "adam", "layers": 2}
    ((last,),) = stored(store, "SELECT value FROM metrics WHERE run_id=? AND key='loss' ORDER BY step DESC LIMIT 1",
                        [ids["lr-0.1"]])
    assert run["metrics"] == {"loss": last}
    assert run["created_at"].startswith("20") and isinstance(run["duration"], (int, float))


def test_runs_filters_with_the_viewers_language_and_pages(viewer, browser_store):
    _store, ids = browser_store
    _, body = api(viewer, "runs", filter="lr < 0.05 and bs == 32")
    assert [r["name"] for r in body["runs"]] == ["lr-0.01"]
    _, body = api(viewer, "runs", status="failed")
    assert {r["run_id"] for r in body["runs"]} == {ids["exploding"], ids["xss"]}
    _, body = api(viewer, "runs", experiment="mnist", tag="sweep")
    assert {r["name"] for r in body["runs"]} == {"lr-0.1", "lr-0.01", "lr-0.001"}
    _, first = api(viewer, "runs", limit=2)
    _, rest = api(viewer, "runs", limit=2, offset=2)
    assert first["total"] == rest["total"] == len(ids) and len(first["runs"]) == 2
    assert not {r["run_id"] for r in first["runs"]} & {r["run_id"] for r in rest["runs"]}


@pytest.mark.parametrize("expression, token", [
    ("lr <", "position 5, found the end"),
    ("lr < 0.1 )", "')'"),
    ("lr < 1; DROP TABLE runs", "';'"),
    ("nosuchparam > 1", "nosuchparam"),
])
def test_a_bad_filter_is_a_400_naming_the_token(viewer, expression, token):
    status, body = api(viewer, "runs", filter=expression)
    assert status == 400 and body["error"] == "FilterError"
    assert token in body["message"], body["message"]


def test_no_argument_reaches_sql_as_text(viewer, browser_store):
    store, ids = browser_store
    for text in ["'; DROP TABLE runs; --", "%' OR 1=1 --"]:
        status, body = api(viewer, "runs", text=text, experiment=text, tag=text)
        assert (status, body["total"]) == (200, 0)
    status, _ = api(viewer, "runs/" + urllib.parse.quote("x' OR '1'='1", safe="") + "/metrics", key="loss")
    assert status == 404
    assert stored(store, "SELECT count(*) FROM runs") == [(len(ids),)]


def test_one_run_has_its_row_params_events_and_summary(viewer, browser_store):
    _store, ids = browser_store
    status, body = api(viewer, f"runs/{ids['exploding']}")
    assert status == 200
    assert body["run"]["status"] == "failed" and "FloatingPointError" in body["run"]["error"]
    assert body["run"]["params"] == {"lr": 5.0, "bs": 32}
    assert [e["event"] for e in body["events"]][-1] == "failed"
    assert [(m["key"], m["count"]) for m in body["metrics"]] == [("loss", 1)]
    status, body = api(viewer, "runs/nosuchrun")
    assert status == 404 and body["error"] == "NotFound" and "nosuchrun" in body["message"]


def test_metrics_are_downsampled_like_the_charts(viewer, browser_store):
    store, ids = browser_store
    run_id = ids["lr-0.01"]
    points = stored(store, "SELECT step, value FROM metrics WHERE run_id=? AND key='loss' ORDER BY step", [run_id])
    status, body = api(viewer, f"runs/{run_id}/metrics", key="loss")
    assert status == 200 and body["x"] == "step" and body["extent"] == [0, len(points) - 1]
    assert [tuple(p) for p in body["points"]] == [(float(s), v) for s, v in points]  # fewer than points=: all

    _, body = api(viewer, f"runs/{run_id}/metrics", key="loss", points=20)
    got = [tuple(p) for p in body["points"]]
    assert 2 <= len(got) <= 20 and set(got) <= {(float(s), v) for s, v in points}
    values = [v for _, v in points]
    assert min(values) in [v for _, v in got] and max(values) in [v for _, v in got]  # spikes survive


def test_metrics_arguments_are_checked(viewer, browser_store):
    _store, ids = browser_store
    run = f"runs/{ids['lr-0.1']}/metrics"
    status, body = api(viewer, run)
    assert status == 400 and "pass key=" in body["message"] and "loss" in body["message"]
    status, body = api(viewer, run, key="nokey")
    assert status == 404 and "'nokey'" in body["message"]
    for query in ({"points": "many"}, {"points": 10**9}, {"x": "epoch"}):
        status, body = api(viewer, run, key="loss", **query)
        assert status == 400 and body["error"] == "BadArgument", body
    status, body = api(viewer, "nothing/here")
    assert status == 404 and "/api/v1/runs" in body["message"]


@pytest.fixture(scope="module")
def guarded(browser_store, tmp_path_factory):
    """A viewer off loopback (0.0.0.0) with a password file: (url, password)."""
    store, _ids = browser_store
    secret = tmp_path_factory.mktemp("auth") / "password.json"
    secret.write_text(json.dumps({"ana": "s3cret-pass"}))
    port = free_port()
    log_path = store.parent / f"viewer-auth-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "notebook_exp_viewer", "--store", str(store), "--host", "0.0.0.0",
             "--port", str(port), "--basic-auth", str(secret)],
            stdout=log, stderr=subprocess.STDOUT, cwd=str(store.parent))
    proc.log_path = log_path
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        stop_process(proc)


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_off_loopback_the_api_needs_the_viewers_credentials(guarded, browser_store):
    _store, ids = browser_store
    for path in ("runs", f"runs/{ids['lr-0.1']}", f"runs/{ids['lr-0.1']}/metrics?key=loss", "queue", "gpus"):
        status, body = get(f"{guarded}/api/v1/{path}")
        assert status == 401 and body["error"] == "Unauthorized", path
        status, _ = get(f"{guarded}/api/v1/{path}", basic("ana", "wrong"))
        assert status == 401
        status, _ = get(f"{guarded}/api/v1/{path}", basic("bob", "s3cret-pass"))
        assert status == 401  # the password is ana's
    status, body = get(f"{guarded}/api/v1/runs", basic("ana", "s3cret-pass"))
    assert status == 200 and body["total"] == len(ids)


def test_the_login_cookie_of_the_viewers_page_opens_the_api(guarded):
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    form = urllib.parse.urlencode({"username": "ana", "password": "s3cret-pass"}).encode()
    with opener.open(f"{guarded}/login", data=form, timeout=30) as response:
        response.read()
    with opener.open(f"{guarded}/api/v1/runs?limit=1", timeout=30) as response:
        assert response.status == 200 and len(json.loads(response.read())["runs"]) == 1
