"""The sink host (notebook_exp.sinks._host): isolated sinks run in a child process."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import cloudpickle
import pytest

import notebook_exp as nx
from notebook_exp.sinks import Sink, SinkSettings, _host, registry
from notebook_exp.sinks._host import ProcessSink

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the host cannot import this test module

FILE_SINK = '''
import json, os
from pathlib import Path
from notebook_exp.sinks import Sink, SinkSettings

class FileSettings(SinkSettings):
    path: str = ""

class FileSink(Sink):
    """Writes what it gets, and the pid that got it, as JSON lines."""
    isolated = True
    Settings = FileSettings

    def _write(self, **record):
        with open(self.settings.path, "a") as fh:
            fh.write(json.dumps({"pid": os.getpid(), **record}) + "\\n")

    def start_run(self, run):
        self._write(event="start", run_id=run.run_id)

    def log_metrics(self, batch):
        self._write(event="metrics", points=[[k, s, v] for k, s, _t, v in batch])

    def end_run(self, status, error):
        self._write(event="end", status=str(status), error=error)

    def close(self):
        self._write(event="close")
'''


@pytest.fixture
def file_sink(tmp_path, monkeypatch):
    """The FileSink class from a module both this process and the host can import."""
    (tmp_path / "file_sink_mod.py").write_text(FILE_SINK)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    import file_sink_mod

    yield file_sink_mod.FileSink, tmp_path / "sink.jsonl"
    sys.modules.pop("file_sink_mod", None)


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_isolated_sink_runs_in_the_host_and_gets_everything_in_order(file_sink, store_path):
    FileSink, out = file_sink
    with nx.start_run(sinks=["duckdb", (FileSink, {"path": str(out)})]) as run:
        (proxy,) = [s for s in run._dispatcher.sinks if isinstance(s, ProcessSink)]
        for i in range(1000):
            run.log(x=float(i), step=i)
            if i % 100 == 0:
                run._flush(force=True)
    got = records(out)
    pids = {r["pid"] for r in got}
    assert len(pids) == 1 and os.getpid() not in pids
    assert [r["event"] for r in got][0] == "start" and [r["event"] for r in got][-2:] == ["end", "close"]
    assert got[-2]["status"] == "completed"
    steps = [s for r in got if r["event"] == "metrics" for _k, s, _v in r["points"]]
    assert steps == list(range(1000))
    assert nx.sql("SELECT count(*) AS n FROM metrics").n[0] == 1000
    assert repr(proxy).startswith("ProcessSink(FileSink")


def test_process_false_keeps_it_in_this_process_and_instances_stay_here(file_sink, store_path):
    FileSink, out = file_sink
    with nx.start_run(sinks=[(FileSink, {"path": str(out), "process": False})]) as run:
        run.log(x=1.0)
    instance = FileSink()
    with nx.start_run(sinks=[(instance, {"path": str(out)})]) as run:
        run.log(x=1.0)
    assert {r["pid"] for r in records(out)} == {os.getpid()}


class Raising(Sink):
    isolated = True
    name = "raising"

    def log_metrics(self, batch):
        raise RuntimeError("refused by the backend")


def test_a_failure_in_the_host_follows_the_same_policy(store_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with nx.start_run(sinks=["duckdb", Raising]) as run:
            for i in range(10):
                run.log(x=float(i))
    disabled = [str(w.message) for w in caught if "disabled" in str(w.message)]
    assert len(disabled) == 1 and "refused by the backend" in disabled[0] and "in the sink host" in disabled[0]
    assert run.status == nx.RunStatus.COMPLETED and run.dropped == {"raising": 10}
    assert nx.sql("SELECT count(*) AS n FROM metrics").n[0] == 10


class Slow(Sink):
    isolated = True
    name = "slow"
    breaker_failures = 2

    def log_metrics(self, batch):
        time.sleep(0.05)


def test_a_host_killed_mid_run_costs_its_sinks_only_and_the_next_run_gets_a_new_one(store_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with nx.start_run(sinks=["duckdb", (Slow, {"breaker_cooldown": 0.2})]) as run:
            for i in range(20):
                run.log(x=float(i), step=i)
                run._flush(force=True)
            first = _host.host().pid
            os.kill(first, signal.SIGKILL)
            for i in range(20, 40):
                run.log(x=float(i), step=i)
    assert run.status == nx.RunStatus.COMPLETED
    assert nx.sql("SELECT count(*) AS n FROM metrics").n[0] == 40
    events = nx.sql("SELECT event, detail FROM events WHERE run_id = ? AND event LIKE 'sink_%'", [run.run_id])
    assert "sink_failed" in set(events.event) and any("sink host" in d for d in events.detail)
    with nx.start_run(sinks=[Slow]) as again:
        again.log(x=1.0)
    assert _host.host().pid != first and again.dropped == {}


def test_a_killed_training_process_leaves_no_run_open_in_the_host(file_sink, tmp_path):
    _FileSink, out = file_sink
    script = textwrap.dedent(f"""
        import os, signal, sys
        import notebook_exp as nx
        from notebook_exp.sinks import _host
        from file_sink_mod import FileSink
        run = nx.start_run(sinks=[(FileSink, {{"path": {str(out)!r}}})])
        for i in range(100):
            run.log(x=float(i), step=i)
        run.flush(timeout=30)
        print(_host.host().pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = {**os.environ, "NOTEBOOK_EXP_STORE": str(tmp_path / "killed.duckdb")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    host_pid = int(proc.stdout.split()[-1])
    deadline = time.monotonic() + 20
    while _alive(host_pid):
        assert time.monotonic() < deadline, "the host outlived the process it served"
        time.sleep(0.05)
    got = records(out)
    assert [r["event"] for r in got][-2:] == ["end", "close"]
    assert got[-2]["status"] == "failed" and "ended without ending it" in got[-2]["error"]
    assert sum(len(r["points"]) for r in got if r["event"] == "metrics") == 100


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def test_builtin_sinks_run_here_unless_their_settings_ask_for_the_host(settings_env):
    for name in registry.available():
        assert not registry.load(name).isolated
    (plain,) = registry.resolve(["tensorboard"])
    assert not isinstance(plain, ProcessSink)
    settings_env(TENSORBOARD_PROCESS="true")
    (proxy,) = registry.resolve(["tensorboard"])
    assert isinstance(proxy, ProcessSink) and proxy.name == "tensorboard"
    assert isinstance(SinkSettings(process=True).process, bool)
