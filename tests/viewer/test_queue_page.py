"""The Queue page in real Chromium: what two other processes queued, and who holds each GPU."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect
from viewer_support import EXPECT_TIMEOUT_MS, screenshot, start_viewer, stop_process

from notebook_exp._style import STATUS_COLORS


def _rgb(hex_color: str) -> str:
    """``#rrggbb`` as the browser's computed style writes it."""
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"

#: Queues three one-GPU runs named <tag>-0..2; each runs until its release file appears.
SUBMITTER = """
    import pathlib, sys, time
    import notebook_exp as nx

    tag, gate = sys.argv[1], pathlib.Path(sys.argv[2])

    def work(run, i):
        release = gate / f"{tag}-{i}"
        while not release.exists():
            run.log(k=1.0)
            time.sleep(0.05)

    jobs = [nx.submit(work, {"i": i}, gpus=1, name=f"{tag}-{i}", experiment="queue-page") for i in range(3)]
    print("queued", flush=True)
    print(nx.wait(jobs, timeout=300), flush=True)
"""


def queue_rows(page):
    return page.locator(".nx-queue .tabulator-row")


def row_of(page, name: str):
    return queue_rows(page).filter(has=page.locator(f'.tabulator-cell[tabulator-field="name"]:text-is("{name}")'))


def holder_names(page) -> dict[str, str]:
    return {card.get_attribute("data-index"): card.inner_text() for card in page.locator(".nx-gpu").all()}


@pytest.fixture
def submitters(fake_gpus, store_path, tmp_path, request):
    """Two processes (a and b), each with three one-GPU runs queued on a 2-GPU machine."""
    fake_gpus(2)
    gate = tmp_path / "gate"
    gate.mkdir()
    procs = {}
    for tag in ("a", "b"):
        procs[tag] = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SUBMITTER), tag, str(gate)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        request.addfinalizer(lambda p=procs[tag]: (p.kill(), p.communicate()))
    for proc in procs.values():
        assert proc.stdout.readline().strip() == "queued"
    return procs, gate


@pytest.fixture
def queue_viewer(submitters, store_path):
    proc, url = start_viewer(Path(store_path), refresh=0.5)  # inherits the virtual GPUs and the lock folder
    yield url
    stop_process(proc)


@pytest.fixture
def page(browser, queue_viewer):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(EXPECT_TIMEOUT_MS)
    yield page
    context.close()


def release(gate: Path, *names: str) -> None:
    for name in names:
        (gate / name).touch()


def test_the_queue_page_lists_both_processes_runs_and_gpu_holders(page, queue_viewer, submitters):
    procs, gate = submitters
    page.goto(f"{queue_viewer}/?page=queue")
    expect(queue_rows(page)).to_have_count(6, timeout=30_000)
    statuses = page.locator('.nx-queue .tabulator-cell[tabulator-field="status"]')
    deadline = time.monotonic() + 30
    while statuses.all_inner_texts().count("running") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    texts = statuses.all_inner_texts()
    assert texts.count("running") == 2 and texts.count("queued") == 4, texts
    # Each status in its colour, the scheme of the runs table and the header (the cell's inner div).
    # The live table re-renders its rows on each tick; Playwright finds the cells, then evaluates in a
    # second step, so a cell may be detached by then (its computed style is empty): read again.
    deadline = time.monotonic() + 10
    while True:
        shown = statuses.evaluate_all("""els => els.map(el => {
            const span = el.firstElementChild || el;
            return [el.innerText.trim(), getComputedStyle(span).color, getComputedStyle(span).fontWeight,
                    el.isConnected];
        })""")
        if all(connected for *_, connected in shown) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    shown = [entry[:3] for entry in shown]
    expected = {s: _rgb(STATUS_COLORS[s]) for s in ("running", "queued")}
    assert all(color == expected[text] and int(weight) >= 700 for text, color, weight in shown), shown
    owners = set(page.locator('.nx-queue .tabulator-cell[tabulator-field="owner"]').all_inner_texts())
    assert any(f"pid {procs['a'].pid}" in o for o in owners) and any(f"pid {procs['b'].pid}" in o for o in owners)
    cards = holder_names(page)
    assert set(cards) == {"0", "1"}
    with urllib.request.urlopen(f"{queue_viewer}/api/v1/queue", timeout=30) as response:  # the same, as JSON
        listed = json.loads(response.read())["runs"]
    assert sorted(r["name"] for r in listed) == sorted(f"{t}-{i}" for t in "ab" for i in range(3))
    assert {r["owner"]["pid"] for r in listed} == {procs["a"].pid, procs["b"].pid}
    with urllib.request.urlopen(f"{queue_viewer}/api/v1/gpus", timeout=30) as response:
        gpus = json.loads(response.read())["gpus"]
    assert [g["index"] for g in gpus] == [0, 1] and all(len(g["holders"]) == 1 for g in gpus)
    running = [name for name in (f"{t}-{i}" for t in "ab" for i in range(3))
               if row_of(page, name).locator('[tabulator-field="status"]').inner_text() == "running"]
    assert len(running) == 2 and sorted(running[0] in c or running[1] in c for c in cards.values()) == [True, True]
    screenshot(page, "queue-page")

    # one holder finishes: its GPU changes hands, in place (no reload)
    page.evaluate("window.__not_reloaded = true")
    first = running[0]
    gpu = next(index for index, text in cards.items() if first in text)
    release(gate, first)
    expect(row_of(page, first)).to_have_count(0, timeout=30_000)
    card = page.locator(f'.nx-gpu[data-index="{gpu}"]')
    expect(card).not_to_contain_text(first, timeout=30_000)
    others = [f"{t}-{i}" for t in "ab" for i in range(3) if f"{t}-{i}" != first]
    deadline = time.monotonic() + 30
    while not any(name in card.inner_text() for name in others) and time.monotonic() < deadline:
        time.sleep(0.2)  # a queued run of either process takes the freed GPU
    assert any(name in card.inner_text() for name in others), card.inner_text()
    assert page.evaluate("window.__not_reloaded") is True
    expect(queue_rows(page)).to_have_count(5)
    release(gate, *(f"{t}-{i}" for t in "ab" for i in range(3)))
    for proc in procs.values():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    expect(page.locator(".nx-queue-note")).to_contain_text("Nothing queued or running", timeout=30_000)
