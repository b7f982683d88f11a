"""Control from anywhere: cancel and reprioritise runs of another process, the machine's
queue as data, GPU pinning across processes. Owners are real processes (a script with
its own scheduler), requests go through the real store, stops through real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import notebook_exp as nx
from notebook_exp.exceptions import ConfigError, GpuUnavailable
from notebook_exp.models import RunStatus
from notebook_exp.scheduler.control import CONTROL_EVERY

pytestmark = pytest.mark.slow

OWNER = r"""
import json, os, sys, threading, time
import notebook_exp as nx
from notebook_exp.scheduler.core import get_scheduler

GATE = threading.Event()

def hold(run):  # holds its slot (and GPUs) until the owner's stdin closes
    while not GATE.is_set():
        run.log(alive=1.0)
        time.sleep(0.02)
    return run.gpus

def quick(run):
    return run.gpus

def loop(run):  # a process run that logs until it is stopped
    import time
    while True:
        run.log(x=1.0)
        time.sleep(0.01)

def stubborn(run):  # a process run deaf to SIGTERM: only the SIGKILL after cancel_grace ends it
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    run.log(x=1.0)
    while True:
        time.sleep(0.05)

jobs = []
for spec in json.loads(sys.argv[1]):
    fn = globals()[spec.pop("fn")]
    running = spec.pop("running", False)
    job = nx.submit(fn, after=[jobs[i] for i in spec.pop("after", [])], **spec)
    jobs.append(job)
    while running and job.status.value != "running":
        time.sleep(0.01)
get_scheduler().store.writer.flush()
print(json.dumps({"ids": [job.run_id for job in jobs], "pid": os.getpid()}), flush=True)
sys.stdin.read()
GATE.set()
nx.wait(jobs, timeout=60)
print(json.dumps([[job.status.value, job.error, job.result() if job.status.value == "completed" else None]
                  for job in jobs]), flush=True)
"""


class Owner:
    """A script that queues runs on its own scheduler and keeps them until closed."""

    def __init__(self, specs: list[dict], **env: str) -> None:
        full_env = {**os.environ, **{f"NOTEBOOK_EXP_{k.upper()}": str(v) for k, v in env.items()}}
        self.proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(OWNER), json.dumps(specs)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=full_env)
        line = self.proc.stdout.readline()
        assert line, f"the owner died: {self.proc.communicate(timeout=30)}"
        started = json.loads(line)
        self.ids, self.pid = started["ids"], started["pid"]

    def close(self, timeout: float = 60) -> list:
        """Let its runs end; their [status, error, result] each."""
        out, err = self.proc.communicate("", timeout=timeout)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> list[psutil.Process]:
        """SIGKILL the owner; returns its process runs' children, which outlive it (by design)."""
        orphans = []
        if self.proc.poll() is None:
            try:
                orphans = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.Error:
                pass
            self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=30)
        return orphans


@pytest.fixture
def owners():
    started: list[Owner] = []

    def start(specs, **env):
        owner = Owner(specs, **env)
        started.append(owner)
        return owner

    yield start
    orphans = [child for owner in started for child in owner.kill()]
    for child in orphans:  # a test that failed midway leaves no run going on behind it
        try:
            child.kill()
        except psutil.Error:
            pass


def db(sql, params=None):
    """Rows of a read-only query, retried while an owner's writer holds the store (as every reader does)."""
    from notebook_exp.store import queries

    return queries.read(lambda conn: conn.execute(sql, params or []).fetchall())


def wait_for(predicate, seconds=30.0, every=0.05):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)


def test_a_queued_run_of_another_process_is_cancelled_within_a_second(owners, store_path):
    owner = owners([{"fn": "hold", "running": True}, {"fn": "quick", "name": "waiting"}], max_concurrent=1)
    blocker, waiting = owner.ids
    result = nx.cancel(waiting, by="a test")
    assert result and result.outcome == "done" and result.request_id
    assert result.message == f"cancelled run {waiting} (it was queued)"
    (requested, handled, outcome), = db("SELECT requested_at, handled_at, outcome FROM requests WHERE run_id = ?", [waiting])
    assert outcome == "done" and (handled - requested).total_seconds() < 1.0  # the promise
    assert db("SELECT status, error FROM runs WHERE run_id = ?", [waiting]) == [
        ("cancelled", "cancelled by a test")]
    statuses = owner.close()
    assert statuses[0][0] == "completed" and statuses[1][:2] == ["cancelled", "cancelled by a test"]


def test_a_running_process_run_of_another_process_stops_within_its_grace(owners, store_path):
    grace = 1.5
    owner = owners([{"fn": "stubborn", "executor": "process", "running": True},
                    {"fn": "loop", "executor": "process", "running": True}], cancel_grace=grace)
    stubborn, polite = owner.ids
    for run_id in owner.ids:
        result = nx.cancel(run_id)
        assert result and result.message.startswith(f"stopping run {run_id}: it was running")
    ended = {}

    def both_ended():
        rows = db("SELECT run_id, status, ended_at FROM runs WHERE status != 'running'")
        ended.update({run_id: (status, at) for run_id, status, at in rows})
        return len(ended) == 2

    wait_for(both_ended, 30)
    asked = dict(db("SELECT run_id, requested_at FROM requests"))
    took = {run_id: (ended[run_id][1] - asked[run_id]).total_seconds() for run_id in owner.ids}
    assert {status for status, _at in ended.values()} == {"cancelled"}
    assert took[polite] < 1.0 + 1.0  # seen within a second, SIGTERM ends it at once
    assert grace - 0.2 < took[stubborn] < grace + 1.0 + 1.0  # SIGKILL after the grace
    statuses = owner.close()
    assert [s[0] for s in statuses] == ["cancelled", "cancelled"]
    assert all(s[1].startswith("cancelled by ") and "(nx.cancel)" in s[1] for s in statuses)


def test_a_priority_change_from_another_process_reorders_its_queue(owners, store_path):
    owner = owners([{"fn": "hold", "running": True, "name": "blocker"}]
                   + [{"fn": "quick", "name": f"p{p}-{i}", "priority": p} for i, p in enumerate([5, 5, 5, 1])],
                   max_concurrent=1)
    blocker, a, b, c, low = owner.ids
    before = {e.run_id: e.position for e in nx.queue().queued}
    assert [before[i] for i in (a, b, c, low)] == [0, 1, 2, 3]
    assert nx.set_priority(low, 9) and nx.set_priority(c[:8], 7)  # a prefix will do
    after = {e.run_id: (e.position, e.priority) for e in nx.queue().queued}
    assert [after[i] for i in (low, c, a, b)] == [(0, 9), (1, 7), (2, 5), (3, 5)]
    refused = nx.set_priority(blocker, 9)  # running: refused by the asker, the owner is not bothered
    assert not refused and refused.outcome == "refused" and "is running" in refused.message
    owner.close()
    order = [name for (name,) in db("SELECT name FROM runs WHERE name != 'blocker' "
                                                       "ORDER BY started_at")]
    assert order == ["p1-3", "p5-2", "p5-0", "p5-1"]
    (detail,), = db("SELECT detail FROM events WHERE event = 'priority' AND run_id = ?", [low])
    assert detail.startswith("1 -> 9, asked by ") and "(nx.set_priority)" in detail


def test_priority_in_this_process_moves_the_job_at_once(use_settings):
    use_settings(max_concurrent=1)
    gate, order = threading.Event(), []
    first = nx.submit(lambda run: gate.wait(30), name="blocker")
    wait_for(lambda: first.status == RunStatus.RUNNING)
    jobs = [nx.submit(lambda run, i=i: order.append(i), name=f"j{i}") for i in range(3)]
    assert jobs[2].set_priority(8) and jobs[2].queue_position == 0
    result = nx.set_priority(jobs[1].run_id, 7, by="bob")
    assert result and result.request_id is None and [j.queue_position for j in jobs] == [2, 1, 0]
    with pytest.raises(ConfigError, match="from 0 to 10"):
        nx.set_priority(jobs[0].run_id, 11)
    gate.set()
    nx.wait([first, *jobs], timeout=30)
    assert order == [2, 1, 0]
    assert not jobs[0].set_priority(9)  # ended


def test_unknown_ids_and_runs_nobody_can_act_on_get_one_clear_message(owners, store_path):
    with pytest.raises(Exception, match="no store at"):
        nx.cancel("abc")
    done = nx.submit(lambda run: None, name="done")
    assert done.wait(30) == RunStatus.COMPLETED
    with pytest.raises(ConfigError, match=r"^no run 'nope' in the store "):
        nx.cancel("nope")
    refused = nx.cancel(done.run_id)  # this process's own job: answered here
    assert not refused and "already completed" in refused.message
    for run_id in ("feed0001", "feed0002"):
        nx.start_run(run_id=run_id).end()
    with pytest.raises(ConfigError, match=r"^'feed' matches several runs \(feed0001, feed0002\); give more of the id$"):
        nx.cancel("feed")
    # a run started with start_run in another, live process: no scheduler owns it
    plain = subprocess.Popen([sys.executable, "-c", "import sys, notebook_exp as nx\n"
                              "from notebook_exp.store import get_store\nrun = nx.start_run('plain')\n"
                              "get_store(nx.get_settings().store_path).writer.flush()\n"
                              "print(run.run_id, flush=True)\nsys.stdin.read()\nrun.end()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        plain_id = plain.stdout.readline().strip()
        with pytest.raises(ConfigError, match=r"started with start_run by process \d+ .*only that process can end it"):
            nx.cancel(plain_id)
    finally:
        plain.communicate("", timeout=30)
    # the owner of a queued run was killed: its run is lost, and the message says so
    dead = owners([{"fn": "hold", "running": True}, {"fn": "quick"}], max_concurrent=1)
    dead.kill()
    with pytest.raises(ConfigError, match=rf"has no live owner: lost: queued by process {dead.pid}.*nx.resubmit"):
        nx.cancel(dead.ids[1])
    # the owner of a running process run was killed; the run goes on in its own process
    orphaning = owners([{"fn": "loop", "executor": "process", "running": True}])
    found = []
    wait_for(lambda: found.extend(db("SELECT pid FROM runs WHERE run_id = ? AND status = "
                                                        "'running' AND pid != ?", [orphaning.ids[0], orphaning.pid]))
             or found)  # the child has recorded its start
    (child,), = found
    assert [p.pid for p in orphaning.kill()] == [child]
    try:
        with pytest.raises(ConfigError, match=rf"its owner, .*pid {orphaning.pid} .*has exited.*`kill {child}` stops it"):
            nx.cancel(orphaning.ids[0])
        assert not db("SELECT * FROM requests")  # nothing asked of nobody
    finally:
        os.kill(child, signal.SIGTERM)  # it ends its run as cancelled
        wait_for(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE)


def test_every_control_action_is_an_event_naming_who_asked(owners, store_path, use_settings):
    owner = owners([{"fn": "hold", "running": True}, {"fn": "quick", "name": "x"}, {"fn": "quick", "name": "y"}],
                   max_concurrent=1)
    blocker, x, y = owner.ids
    assert nx.set_priority(x, 8, by="viewer user ann")
    assert nx.cancel(y, by="viewer user bob")
    assert nx.cancel(blocker)  # by default: user@host pid N (nx.cancel)
    owner.close()
    rows = db("SELECT run_id, event, detail, pid FROM events WHERE event IN "
                                 "('priority_requested', 'priority', 'cancel_requested', 'cancel') ORDER BY ts")
    me, them = os.getpid(), owner.pid
    assert [(run_id, event, pid) for run_id, event, _detail, pid in rows] == [
        (x, "priority_requested", me), (x, "priority", them),
        (y, "cancel_requested", me), (y, "cancel", them),
        (blocker, "cancel_requested", me), (blocker, "cancel", them),
    ]
    details = [detail for _r, _e, detail, _p in rows]
    assert details[0].startswith("priority 8, by viewer user ann (request ") and details[1] == \
        "5 -> 8, asked by viewer user ann"
    assert details[2].startswith("by viewer user bob (request ") and details[3] == "by viewer user bob"
    assert f"pid {me} (nx.cancel)" in details[4] and "stopping it (cancel_grace" in details[5]
    # in the owning process itself: the same events, and refusals are events too
    use_settings(max_concurrent=1)

    def logs(run):
        while True:
            run.log(x=1.0)
            time.sleep(0.01)

    local = nx.submit(logs)
    wait_for(lambda: local.status == RunStatus.RUNNING)
    assert not nx.set_priority(local.run_id, 3, by="carol")
    assert local.cancel(by="dave")
    assert local.wait(30) == RunStatus.CANCELLED
    assert db("SELECT event, detail FROM events WHERE run_id = ? AND event IN "
                                 "('request_refused', 'cancel') ORDER BY ts", [local.run_id]) == [
        ("request_refused", f"priority asked by carol: run {local.run_id} is running: a priority only orders "
                            "queued runs"),
        ("cancel", "by dave; stopping it (cancel_grace 5 s)"),
    ]
    assert local.error == "cancelled by dave"


def test_a_request_written_without_ringing_is_answered_on_the_fallback_read(owners, store_path):
    from notebook_exp.scheduler.control import FALLBACK_EVERY, INSERT_REQUEST_SQL
    from notebook_exp.store import get_store, utcnow

    owner = owners([{"fn": "hold", "running": True}, {"fn": "quick"}], max_concurrent=1)
    store = get_store(store_path)
    seq = store.writer.submit(INSERT_REQUEST_SQL, ["by-hand", owner.ids[1], "cancel", None, "a cron job",
                                                   utcnow(), "elsewhere", 1])
    assert store.writer.wait(seq, 30)
    wait_for(lambda: db("SELECT outcome FROM requests WHERE request_id = 'by-hand'") == [("done",)],
             FALLBACK_EVERY + 5)
    assert owner.close()[1][:2] == ["cancelled", "cancelled by a cron job"]


def test_the_machine_queue_shows_every_owner_position_dependency_and_gpu(owners, fake_gpus, store_path):
    fake_gpus(2)  # for both processes: the owners inherit the setting
    first = owners([{"fn": "hold", "running": True, "gpus": 1, "name": "a-hold"},
                    {"fn": "quick", "name": "a-next", "priority": 7},
                    {"fn": "quick", "name": "a-dep", "after": [1], "retries": 2}], max_concurrent=1)
    second = owners([{"fn": "hold", "running": True, "gpus": 0.5, "gpu_ids": [1], "name": "b-hold"},
                     {"fn": "quick", "name": "b-next", "gpu_ids": "1"}], max_concurrent=1)
    started = time.monotonic()
    machine = nx.queue()
    took = time.monotonic() - started
    by_name = {e.name: e for e in machine.runs}
    assert [e.name for e in machine.runs][:2] == ["a-hold", "b-hold"]  # running first, then queued
    assert {e.name for e in machine.queued} == {"a-next", "a-dep", "b-next"}
    assert by_name["a-hold"].owner.pid == first.pid and by_name["b-hold"].owner.pid == second.pid
    assert by_name["a-hold"].owner.alive is True and by_name["a-hold"].owner.program == "python -c"
    assert by_name["a-hold"].gpus_held == (0,) and by_name["b-hold"].gpus_held == (1,)
    assert by_name["b-hold"].gpu_ids == (1,) and by_name["b-hold"].gpus == 0.5
    assert by_name["b-next"].gpus == 1 and by_name["b-next"].gpu_ids == (1,)  # pinned without a count: all of them
    assert (by_name["a-next"].position, by_name["a-dep"].position, by_name["b-next"].position) == (0, 1, 0)
    assert by_name["a-dep"].after == (by_name["a-next"].run_id,) and by_name["a-dep"].retries == 2
    assert by_name["a-hold"].running >= 0 and by_name["a-hold"].waiting is None
    assert by_name["a-next"].waiting >= 0 and by_name["a-next"].running is None
    gpu0, gpu1 = machine.gpus
    assert [h.name for h in gpu0.holders] == ["a-hold"] and gpu0.held == 1.0
    assert [(h.name, h.fraction, h.owner.pid) for h in gpu1.holders] == [("b-hold", 0.5, second.pid)]
    data = json.loads(json.dumps(machine.to_dict()))  # JSON-able as it is
    assert {run["name"] for run in data["runs"]} == set(by_name) and data["gpus"][1]["held"] == 0.5
    assert len(machine.frame()) == 5 and took < 5
    first.close()
    second.close()
    assert nx.queue().runs == ()


def test_gpu_ids_pin_runs_to_gpus_across_two_processes(owners, fake_gpus, store_path):
    fake_gpus(3)
    other = owners([{"fn": "hold", "running": True, "gpu_ids": [1], "name": "other"}])
    assert nx.queue().running[0].gpus_held == (1,)
    waits = nx.submit(lambda run: run.gpus, gpu_ids=[1], name="wants-1")
    moves = nx.submit(lambda run: run.gpus, gpu_ids="1,2", gpus=1, name="1-or-2")
    both = nx.submit(lambda run: run.gpus, gpu_ids=(0, 2), name="0-and-2")
    assert moves.result(timeout=30) == [2] and both.result(timeout=30) == [0, 2]
    time.sleep(5 * CONTROL_EVERY)
    assert waits.status == RunStatus.QUEUED  # GPU 0 is free, but it is pinned to 1, held elsewhere
    assert [e.name for e in nx.queue().queued] == ["wants-1"]
    assert other.close()[0] == ["completed", None, [1]]
    assert waits.result(timeout=30) == [1]
    assert db("SELECT name, gpus FROM runs ORDER BY name") == [
        ("0-and-2", [0, 2]), ("1-or-2", [2]), ("other", [1]), ("wants-1", [1])]


def test_gpu_ids_that_are_reserved_or_absent_are_refused_at_submit(fake_gpus, store_path):
    fake_gpus(4, reserved=[2])
    with pytest.raises(GpuUnavailable, match=r"gpu_ids=\[2\]: GPU 2 is reserved .*leasable GPUs are \[0, 1, 3\]"):
        nx.submit(lambda run: None, gpu_ids=[2])
    with pytest.raises(GpuUnavailable, match=r"gpu_ids=\[1, 4, 7\]: GPUs \[4, 7\] are not on this machine "
                                              r"\(its GPUs are \[0, 1, 2, 3\]\)"):
        nx.submit(lambda run: None, gpu_ids=[7, 4, 1], wait_for_gpus=True)  # waiting would not bring them
    with pytest.raises(ConfigError, match="gpus=2 with gpu_ids=\\[1\\]: a run pinned to 1 GPU"):
        nx.submit(lambda run: None, gpu_ids=[1], gpus=2)
    for bad, message in (([], "gpu_ids is empty"), ([-1], "0 and up"), ("one", "like 1,3"), ([1.5], "whole")):
        with pytest.raises(ConfigError, match=message):
            nx.submit(lambda run: None, gpu_ids=bad)
    assert nx.runs().empty  # nothing was queued
    assert nx.submit(lambda run: run.gpus, gpu_ids=[3]).result(timeout=30) == [3]
