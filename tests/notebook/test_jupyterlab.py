"""JupyterLab in Chromium: a %%experiment cell's card advances and completes."""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
TOKEN = "notebook-exp-test-token"
CELL = """%%experiment browser-run -e browser -p steps=150
import time
for i in run.track(range(steps)):
    run.log(loss=1.0 / (i + 1))
    time.sleep(0.02)
print("finished", steps)"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def lab(tmp_path, store_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("%load_ext notebook_exp"), nbformat.v4.new_code_cell(CELL)]
    nbformat.write(nb, tmp_path / "run.ipynb")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}",
         "--ServerApp.ip=127.0.0.1", "--allow-root", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={tmp_path}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "JupyterLab did not start"
            time.sleep(0.5)
    yield f"{url}/lab/tree/run.ipynb?token={TOKEN}"
    proc.terminate()
    try:
        proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def test_run_card_progress_advances_and_completes_in_jupyterlab(lab, store_path, read_only):
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "Debian's chromium is missing: run .ci/run (it installs it)"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.goto(lab, timeout=90_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            page.get_by_text(re.compile(r"Python 3 \(ipykernel\) \| Idle")).wait_for(timeout=90_000)
            page.locator(".jp-Cell").first.click()
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_text("Run All Cells", exact=True).click()
            label = page.locator(".widget-label", has_text=re.compile(r"/150"))
            label.first.wait_for(timeout=60_000)
            first = int(label.first.inner_text().split("/")[0])
            time.sleep(1.0)
            second = int(label.first.inner_text().split("/")[0])
            assert second > first  # the bar advances live
            page.locator(".widget-html", has_text="completed").first.wait_for(timeout=60_000)
            page.locator(".jp-OutputArea-output", has_text="finished 150").first.wait_for(timeout=10_000)
            assert "150/150" in page.locator(".widget-label", has_text="/150").first.inner_text()
        finally:
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-run-card.png"), full_page=True)
            browser.close()
    assert read_only(store_path, "SELECT name, status FROM runs") == [("browser-run", "completed")]
    assert read_only(store_path, "SELECT count(*) FROM metrics WHERE key = 'loss'") == [(150,)]
