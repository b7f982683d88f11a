"""``notebook-exp queue``, ``cancel`` and ``priority`` from a terminal, against a real Jupyter
kernel (nbclient) and a real script, each with its own scheduler; and the magics that do
the same from a kernel (``%experiment_cancel`` of another process's run, ``--gpu-ids``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import nbclient
import nbformat
import pytest

import notebook_exp as nx

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "notebook_exp.cli"]

SCRIPT = r"""
import json, sys, threading, time
import notebook_exp as nx
from notebook_exp.scheduler.core import get_scheduler

gate = threading.Event()

def hold(run):
    while not gate.is_set():
        run.log(alive=1.0)
        time.sleep(0.02)

first = nx.submit(hold, name="script-hold")
while first.status.value != "running":
    time.sleep(0.01)
rest = [nx.submit(lambda run: None, name=f"script-{i}") for i in range(2)]
get_scheduler().store.writer.flush()
print(json.dumps([j.run_id for j in [first, *rest]]), flush=True)
sys.stdin.read()
gate.set()
nx.wait([first, *rest], timeout=60)
print(json.dumps([[j.name, j.status.value, j.error, j.spec.priority] for j in [first, *rest]]), flush=True)
"""


class Script:
    """A script queueing three runs (the first holds the only slot) until its stdin closes."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SCRIPT)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line, self.proc.communicate(timeout=30)
        self.ids, self.pid = json.loads(line), self.proc.pid

    def close(self) -> list:
        """Let its runs end: [name, status, error, priority] of each."""
        out, err = self.proc.communicate("", timeout=60)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def script(settings_env):
    settings_env(max_concurrent=1)
    started = Script()
    yield started
    if started.proc.poll() is None:
        started.proc.kill()
        started.proc.communicate(timeout=30)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def cell_text(cell) -> str:
    return "".join(out.get("text", "") + out.get("evalue", "") + (json.dumps(out["data"]) if out.get("data") else "")
                   for out in cell.get("outputs", []))


KERNEL_CELLS = [
    "%load_ext notebook_exp\nimport os, threading, time, notebook_exp as nx\ngate = threading.Event()\n"
    "print('kernel pid', os.getpid())",
    "%%experiment blocker --gpu-ids 1\nwhile not gate.is_set():\n    run.log(x=1.0)\n    time.sleep(0.02)",
    "%%experiment waiting -p lr=0.1\nrun.log(loss=lr)",
    "%%experiment --gpu-ids 5\nx = 1",
    "from notebook_exp.scheduler.core import get_scheduler\nimport time\n"
    "while get_scheduler().jobs()[0].status.value != 'running':\n    time.sleep(0.01)\n"
    "get_scheduler().store.writer.flush()\n"
    "print(*[f'{j.name}={j.run_id}' for j in get_scheduler().jobs()])",
]


def test_notebook_exp_cancel_from_a_terminal_cancels_a_queued_run_of_a_kernel(tmp_path, settings_env, script):
    settings_env(fake_gpus=2)  # the kernel inherits the settings (and max_concurrent=1)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in KERNEL_CELLS]
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                                     resources={"metadata": {"path": str(tmp_path)}})
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        kernel_pid = int(re.search(r"kernel pid (\d+)", cell_text(nb.cells[0])).group(1))
        bad = cell_text(nb.cells[3])
        assert bad.startswith("UsageError: gpu_ids=[5]: GPU 5 is not on this machine") and bad.count("\n") == 1
        ids = dict(pair.split("=") for pair in cell_text(nb.cells[4]).split())
        assert set(ids) == {"blocker", "waiting"}

        listed = cli("queue")
        assert listed.returncode == 0, listed.stderr
        rows = {line.split()[0]: line for line in listed.stdout.splitlines() if line[:16] in {*ids.values(),
                                                                                              *script.ids}}
        assert len(rows) == 5, listed.stdout
        assert "running" in rows[ids["blocker"]] and "1 of 1; holds 1" in rows[ids["blocker"]]
        assert f"a Jupyter kernel (pid {kernel_pid} on " in rows[ids["waiting"]]
        assert re.search(r"queued\s+5\s+0\s", rows[ids["waiting"]])  # priority 5, next in its kernel's queue
        assert f"(pid {script.pid} on " in rows[script.ids[1]]
        assert re.search(rf"\n1\s+Virtual GPU 1 .*{ids['blocker']} \(blocker\) pid {kernel_pid}", listed.stdout)
        data = json.loads(cli("queue", "--json").stdout)
        assert {run["run_id"] for run in data["runs"]} == {*ids.values(), *script.ids}

        cancelled = cli("cancel", ids["waiting"][:8])
        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout == f"cancelled run {ids['waiting']} (it was queued)\n"

        mine = nbformat.v4.new_code_cell(f"%experiment_cancel {script.ids[1]}\n"
                                         f"%experiment_priority {script.ids[2][:10]} 9\n"
                                         "job = get_scheduler().jobs()[1]\nprint(job.status.value, '|', job.error)\n"
                                         "gate.set()\n%experiment_wait")
        nb.cells.append(mine)
        client.execute_cell(mine, len(nb.cells) - 1)
    lines = cell_text(mine).splitlines()
    assert lines[0] == f"cancelled run {script.ids[1]} (it was queued)"
    assert lines[1] == f"run {script.ids[2]}: priority 5 -> 9, now at position 0"
    assert re.fullmatch(r"cancelled \| cancelled by \S+@\S+ pid \d+ \(notebook-exp cancel\)", lines[2])
    assert lines[3] == "1 run: 1 completed"
    ended = script.close()
    assert ended[1][1] == "cancelled" and re.fullmatch(rf"cancelled by \S+ pid {kernel_pid} \(%experiment_cancel\)",
                                                       ended[1][2])
    assert ended[2][1:] == ["completed", None, 9]
    events = nx.sql("SELECT event, pid FROM events WHERE run_id = ? ORDER BY ts", [ids["waiting"]])
    assert list(events.event) == ["queued", "cancel_requested", "cancel", "cancelled"]
    assert events.pid[1] != kernel_pid and events.pid[2] == kernel_pid  # asked by the terminal, done by the kernel


def test_cli_control_exit_statuses_and_messages(script, capsys):
    from notebook_exp.cli import main

    hold, queued, other = script.ids
    assert main(["priority", other, "3", "--by", "ops"]) == 0
    assert capsys.readouterr().out == f"run {other}: priority 5 -> 3, now at position 1\n"
    assert main(["priority", hold, "9"]) == 1  # running: refused
    assert "is running: a priority only orders queued runs" in capsys.readouterr().err
    assert main(["priority", queued, "eleven"]) == 2
    assert capsys.readouterr().err == "notebook-exp: error: a priority is a whole number from 0 to 10, not 'eleven'\n"
    assert main(["cancel", queued, "nope", "--by", "ops"]) == 2  # each id answered on its own line
    out, err = capsys.readouterr()
    assert out == f"cancelled run {queued} (it was queued)\n"
    assert err.startswith("notebook-exp: error: no run 'nope' in the store ") and err.count("\n") == 1
    assert main(["cancel", queued]) == 1
    assert capsys.readouterr().err == f"run {queued} ('script-0') already cancelled; nothing to cancel\n"
    assert main(["queue", "--no-gpus"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Queue of ") and "(1 running, 1 queued)" in text and queued not in text
    ended = script.close()
    assert ended[1][1:] == ["cancelled", "cancelled by ops", 5] and ended[2][1:] == ["completed", None, 3]
    assert main(["queue"]) == 0 and "(nothing queued or running)" in capsys.readouterr().out
