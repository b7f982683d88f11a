"""Widgets without a browser: live cards, the throttle, output routing, the queue monitor."""

import threading
import time

import notebook_exp as nx
from notebook_exp.models import RunStatus
from notebook_exp.scheduler.core import get_scheduler
from notebook_exp.widgets._ticker import RATE
from notebook_exp.widgets.queue_monitor import QueueMonitor
from notebook_exp.widgets.run_card import RunCard, SweepView


def test_card_updates_stay_under_the_throttle_while_a_run_logs_flat_out(store_path):
    seconds = 3.0
    counted = {}

    def flood(run):
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            for _ in range(1000):
                run.log(loss=1.0 / (n + 1))
                n += 1
            run.progress(n=n, total=None)
        counted["points"] = n

    job = nx.submit(flood)
    card = RunCard(job)
    job.wait(30)
    time.sleep(0.3)  # the last redraw
    assert counted["points"] > 100_000  # it really logged flat out
    assert 5 <= card.updates <= RATE * (seconds + 1)
    assert "loss" in card.metrics.value and str(counted["points"] - 1) in card.metrics.value
    assert "completed" in card.header.value
    assert card.cancel_button.disabled


def test_prints_go_to_the_card_output_only(store_path, capsys):
    def chatty(run):
        for i in range(3):
            print(f"line {i}")

    job = nx.submit(chatty)
    card = RunCard(job)
    job.wait(10)
    time.sleep(0.3)
    text = "".join(o.get("text", "") for o in card.output.outputs)
    assert text == "line 0\nline 1\nline 2\n"
    assert "line" not in capsys.readouterr().out


def test_output_printed_before_the_card_existed_is_shown_once(store_path):
    started = threading.Event()
    release = threading.Event()

    def early(run):
        print("early")
        started.set()
        release.wait(10)
        print("late")

    job = nx.submit(early)
    started.wait(10)
    card = RunCard(job)
    release.set()
    job.wait(10)
    time.sleep(0.3)
    assert "".join(o.get("text", "") for o in card.output.outputs) == "early\nlate\n"


def test_cancel_button_cancels_the_run(store_path):
    def forever(run):
        while True:
            run.log(x=1.0)
            time.sleep(0.005)

    job = nx.submit(forever)
    card = RunCard(job)
    while job.status != RunStatus.RUNNING:
        time.sleep(0.01)
    card.cancel_button.click()
    assert job.wait(10) == RunStatus.CANCELLED
    time.sleep(0.3)
    assert "cancelled" in card.header.value


def test_progress_bar_shows_rate_and_total(store_path):
    gate = threading.Event()

    def tracked(run):
        for i in run.track(range(50)):
            if i == 25:
                gate.wait(10)
            time.sleep(0.002)

    job = nx.submit(tracked)
    card = RunCard(job)
    time.sleep(0.5)
    assert card.bar.max == 50 and 0 < card.bar.value <= 26
    assert "it/s" in card.bar_label.value and "ETA" in card.bar_label.value
    gate.set()
    job.wait(10)
    time.sleep(0.3)
    assert card.bar.value == 50


def test_stable_reprs_for_nbval(store_path):
    jobs = nx.sweep(lambda run, lr: None, {"lr": [1, 2]}, experiment="x")
    view = SweepView(jobs, "x")
    assert repr(view) == "<SweepView 'x': 2 runs>"
    assert repr(view.cards[0]) == "<RunCard 'lr=1'>"
    monitor = QueueMonitor(get_scheduler())
    assert repr(monitor) == "<QueueMonitor>"
    nx.wait(jobs, 10)
    monitor.close()


def test_queue_monitor_lists_jobs_gpus_and_cancels(settings_env):
    settings_env(fake_gpus=1, max_concurrent=1)
    gate = threading.Event()
    running = nx.submit(lambda run: gate.wait(10), gpus=1, name="holder")
    while running.status != RunStatus.RUNNING:
        time.sleep(0.01)
    queued = nx.submit(lambda run: None, name="waiting", priority=7)
    monitor = QueueMonitor(get_scheduler())
    time.sleep(1.2)  # GPU bars refresh once a second
    texts = [row.children[0].value for row in monitor.jobs_box.children]
    assert any("holder" in t and "running" in t and "GPU 0" in t for t in texts)
    assert any("waiting" in t and "#1 in queue" in t and "priority 7" in t for t in texts)
    gpu_label = monitor.gpus_box.children[0].children[0].value
    assert "Virtual GPU" in gpu_label and running.run_id in gpu_label
    row = next(r for r in monitor.jobs_box.children if "waiting" in r.children[0].value)
    row.children[1].click()
    assert queued.status == RunStatus.CANCELLED
    gate.set()
    running.wait(10)
    monitor.close()
