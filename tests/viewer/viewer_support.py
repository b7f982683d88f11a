"""Support for the viewer tests: stores made by real runs (the tracking API writes them),
a live run to start in a subprocess, and starting/stopping a real viewer server."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
XSS_NAME = "<img src=x onerror=alert(1)>"
XSS_EXPERIMENT = "<svg onload=alert(2)>"
XSS_TAG = "<b>bold-tag</b>"
XSS_PARAM = "<i onmouseover=alert(3)>p</i>"
XSS_ERROR = "<script>alert(4)</script>"
FAIL_MESSAGE = "diverged: loss is nan at step 7"


def _log_curve(run, lr: float, steps: int = 200, telemetry: bool = False) -> None:
    deadline = time.monotonic() + 30
    while telemetry and time.monotonic() < deadline and not any(k.startswith("gpu/") for k in run.last_values()):
        time.sleep(0.01)  # the sampler's first reading of this run (real system and GPU telemetry)
    for step in range(steps):
        loss = math.exp(-lr * 30 * step / steps) + 0.01 * math.sin(step)
        run.log(loss=loss, acc=1 - loss / 2, step=step)


def make_sample_store(path: Path, artifact_dir: Path) -> dict[str, str]:
    """A sweep of three runs, a failed run and a run full of markup; returns name -> run id."""
    import notebook_exp as nx
    from notebook_exp.config import Settings
    from notebook_exp.store import close_all, get_store

    ids: dict[str, str] = {}
    sweep = [("lr-0.1", 0.1, 32), ("lr-0.01", 0.01, 32), ("lr-0.001", 0.001, 64)]
    for i, (name, lr, bs) in enumerate(sweep):
        params = {"lr": lr, "bs": bs, "opt": "adam", "layers": 2}
        tags = ["sweep", "baseline"] if i == 0 else ["sweep"]
        # the first run holds virtual GPU 0: its telemetry (system and GPU) is sampled for real
        gpu = {"settings": Settings(fake_gpus=1), "columns": {"gpus": [0]}} if i == 0 else {}
        with nx.start_run(name, experiment="mnist", params=params, tags=tags, store=path, **gpu) as run:
            _log_curve(run, lr * 10, telemetry=(i == 0))
            if i == 0:
                _rich_records(run, artifact_dir)
        ids[name] = run.run_id
    try:
        with nx.start_run("exploding", experiment="mnist", params={"lr": 5.0, "bs": 32}, store=path) as run:
            run.log(loss=1.0, step=0)
            raise FloatingPointError(FAIL_MESSAGE)
    except FloatingPointError:
        pass
    ids["exploding"] = run.run_id
    try:
        with nx.start_run(XSS_NAME, experiment=XSS_EXPERIMENT, params={XSS_PARAM: "<b>v</b>", "lr": 0.5},
                          tags=[XSS_TAG], store=path) as run:
            run.log(loss=0.5, step=0)
            raise RuntimeError(XSS_ERROR)
    except RuntimeError:
        pass
    ids["xss"] = run.run_id
    store = get_store(path)
    seq = store.writer.submit(
        "UPDATE runs SET output = ?, source = ? WHERE run_id = ?",
        ["epoch 1 done <b>not bold</b>\n", "for step in range(200):\n    run.log(loss=...)\n", ids["lr-0.1"]],
    )
    store.writer.wait(seq)
    close_all()
    return ids


def _rich_records(run, artifact_dir: Path) -> None:
    rng = np.random.default_rng(0)
    for step in range(3):
        run.log_histogram("weights", rng.normal(step, 1, 500), step=step)
    run.log_text("sample", "the <b>model</b> said hello", step=0)
    run.log_image("digit", rng.random((16, 16)), step=0)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    artifact = artifact_dir / "model.txt"
    artifact.write_text("weights: 1 2 3\n")
    run.log_artifact(artifact)


def live_run_main(store: str, name: str, seconds: float) -> None:
    """Log one point every 50 ms until ``seconds`` pass or SIGTERM arrives."""
    import notebook_exp as nx

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    with nx.start_run(name, experiment="live", params={"lr": 0.02}, store=store) as run:
        print(run.run_id, flush=True)
        deadline = time.monotonic() + seconds
        step = 0
        while not stop and time.monotonic() < deadline:
            run.log(loss=1.0 / (step + 1), step=step)
            step += 1
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"viewer exited with {proc.returncode}; see {proc.log_path}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"viewer at {url} did not answer /health in {timeout} s")


def start_viewer(store: Path, refresh: float = 1.0) -> tuple[subprocess.Popen, str]:
    """Start ``python -m notebook_exp_viewer`` on a free loopback port; its output goes to a log file."""
    port = free_port()
    log_path = store.parent / f"viewer-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "notebook_exp_viewer", "--store", str(store), "--port", str(port),
             "--refresh", str(refresh)],
            stdout=log, stderr=subprocess.STDOUT, cwd=str(store.parent),
        )
    proc.log_path = log_path
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, url


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"viewer-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


if __name__ == "__main__":
    live_run_main(sys.argv[1], sys.argv[2], float(sys.argv[3]))



EXPECT_TIMEOUT_MS = 20_000  # a loaded 2-core machine renders slowly; assertions retry until then
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@contextlib.contextmanager
def chromium():
    """Debian's headless Chromium through Playwright, with assertions retrying for
    ``EXPECT_TIMEOUT_MS`` (the ``browser`` fixtures of the viewer and sweep tests)."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
