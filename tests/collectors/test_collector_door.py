"""Collectors through the plugin door: what the built-ins record, the ``collectors``
setting, and the failure policy, with collector plugins installed by the test."""

import functools
import inspect
import json
import platform
import sys
import textwrap
import time
from importlib import metadata

import pytest

import notebook_exp as nx
from notebook_exp import _plugins as plugins
from notebook_exp.collectors import telemetry
from notebook_exp.collectors.base import Collector
from notebook_exp.collectors.git import git_info

INTERVAL = 0.2
SYS_KEY = "sys/memory_rss_mb"


def _row(read_only, store_path, run_id, columns="git, source, info"):
    return read_only(store_path, f"SELECT {columns} FROM runs WHERE run_id = ?", [run_id])[0]


def _info(read_only, store_path, run_id) -> dict | None:
    (value,) = _row(read_only, store_path, run_id, "info")
    return None if value is None else json.loads(value)


def _events(read_only, store_path, run_id, *names):
    return read_only(store_path, "SELECT event, detail FROM events WHERE run_id = ? AND event IN (SELECT unnest(?)) "
                     "ORDER BY ts, detail", [run_id, list(names)])


def _keys(read_only, store_path, run_id):
    return {k for (k,) in read_only(store_path, "SELECT DISTINCT key FROM metrics WHERE run_id = ?", [run_id])}


def train(run, steps=3):
    """A function submitted by the tests, whose source the run keeps."""
    for step in range(steps):
        run.log(loss=1.0 / (step + 1))
    return steps


def test_the_builtins_are_collectors_of_both_shapes():
    assert {"environment", "git", "gpu", "source", "system"} <= set(plugins.names("collector"))
    loaded = {name: plugins.load("collector", name, Collector) for name in ("environment", "git", "gpu", "source",
                                                                              "system")}
    assert {name for name, cls in loaded.items() if cls.sampled} == {"gpu", "system"}
    assert loaded["system"].shared and not loaded["gpu"].shared


def test_a_run_records_its_environment_in_its_info(store_path, read_only):
    with nx.start_run("env") as run:
        run.log(loss=1.0)
    environment = _info(read_only, store_path, run.run_id)["environment"]
    assert environment["python"] == platform.python_version()
    assert environment["implementation"] == platform.python_implementation()
    assert environment["executable"] == sys.executable
    packages = environment["packages"]
    assert packages["notebook-exp"] == nx.__version__
    assert packages["duckdb"] == metadata.version("duckdb") and packages["numpy"] == metadata.version("numpy")
    for name, version in packages.items():  # only what is installed, at its installed version
        assert metadata.version(name) == version


def test_package_versions_are_read_without_importing_the_packages(store_path, run_python):
    code = textwrap.dedent("""
        import json, sys
        import notebook_exp as nx
        with nx.start_run("light") as run:
            pass
        print(json.dumps(sorted(m for m in ("mlflow", "wandb", "tensorboard", "scipy", "sklearn") if m in sys.modules)))
    """)
    out = run_python(code, env={"NOTEBOOK_EXP_TELEMETRY_INTERVAL": "0"})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    # and yet they are listed (they are installed with the test extra)
    import duckdb

    (value,) = duckdb.connect(str(store_path), read_only=True).execute("SELECT info FROM runs").fetchone()
    assert {"mlflow", "wandb", "tensorboard"} <= set(json.loads(value)["environment"]["packages"])


def test_extra_packages_come_from_the_collectors_own_setting(store_path, read_only, monkeypatch):
    monkeypatch.setenv("NOTEBOOK_EXP_ENVIRONMENT_PACKAGES", "pytest, no-such-distribution-xyz")
    with nx.start_run("more") as run:
        pass
    packages = _info(read_only, store_path, run.run_id)["environment"]["packages"]
    assert packages["pytest"] == metadata.version("pytest")
    assert "no-such-distribution-xyz" not in packages


def test_a_submitted_function_keeps_its_source(store_path, read_only):
    def fit(run, steps=3):  # nested: a process run gets it by value
        for step in range(steps):
            run.log(loss=1.0 / (step + 1))

    thread = nx.submit(fit, {"steps": 2})
    process = nx.submit(fit, executor="process")
    assert nx.wait([thread, process], timeout=120) == ["completed", "completed"], (thread.error, process.error)
    for job in (thread, process):
        git, source, info = _row(read_only, store_path, job.run_id)
        assert source == inspect.getsource(fit) and source.lstrip().startswith("def fit(run, steps=3):")
        assert json.loads(info)["environment"]["python"] == platform.python_version()
        assert json.loads(git) == git_info()  # unchanged: the git state at submission


def test_a_function_python_has_no_source_for_still_runs(store_path, read_only):
    namespace = {}
    exec("def made(run, n):\n    return n * 2\n", namespace)  # no file: inspect cannot find its source
    job = nx.submit(functools.partial(namespace["made"], n=21))
    assert job.result(timeout=60) == 42
    assert _row(read_only, store_path, job.run_id, "source") == (None,)
    partial = nx.submit(functools.partial(train, steps=1))
    partial.wait(timeout=60)
    assert _row(read_only, store_path, partial.run_id, "source") == (inspect.getsource(train),)


def test_the_source_given_with_a_submission_wins(store_path, read_only):
    job = nx.submit(train, source="print('the cell')")
    job.wait(timeout=60)
    assert _row(read_only, store_path, job.run_id, "source") == ("print('the cell')",)


def test_the_notebook_path_the_kernel_was_given_goes_into_info(store_path, read_only, monkeypatch):
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/me/work/train.ipynb")
    with nx.start_run("in a notebook") as run:
        pass
    job = nx.submit(train)
    job.wait(timeout=60)
    assert _info(read_only, store_path, run.run_id)["notebook"] == "/home/me/work/train.ipynb"
    assert _info(read_only, store_path, job.run_id)["notebook"] == "/home/me/work/train.ipynb"
    monkeypatch.delenv("JPY_SESSION_NAME")
    with nx.start_run("a script") as script:
        pass
    assert "notebook" not in _info(read_only, store_path, script.run_id)


def test_the_collectors_setting_picks_the_collectors(settings_env, store_path, read_only, monkeypatch):
    settings_env(COLLECTORS="git", TELEMETRY_INTERVAL=str(INTERVAL))
    with nx.start_run("git only") as only_git:
        time.sleep(telemetry.FIRST_SAMPLE + 2 * INTERVAL)
    git, source, info = _row(read_only, store_path, only_git.run_id)
    assert json.loads(git)["commit"] and info is None
    assert not [k for k in _keys(read_only, store_path, only_git.run_id) if k.startswith("sys/")]
    settings_env(COLLECTORS="system,environment")
    with nx.start_run("no git") as no_git:
        time.sleep(telemetry.FIRST_SAMPLE + 2 * INTERVAL)
    git, source, info = _row(read_only, store_path, no_git.run_id)
    assert git is None and set(json.loads(info)) == {"environment"}
    assert SYS_KEY in _keys(read_only, store_path, no_git.run_id)
    settings_env(COLLECTORS="")
    job = nx.submit(train)
    job.wait(timeout=60)
    assert _row(read_only, store_path, job.run_id) == (None, None, None)


# -- collectors installed by a test --------------------------------------------------

PLUGINS = '''
from notebook_exp.collectors.base import Collector


class BoomAtCollect(Collector):
    """Raises when it records."""

    def collect(self, context):
        raise RuntimeError("kaput at start")


class BoomAtRead(Collector):
    """Raises when it is sampled."""

    sampled = True

    def read(self, run):
        raise ValueError("kaput when sampled")


class BoomAtInit(Collector):
    """Raises when it is made."""

    sampled = True

    def __init__(self, settings=None):
        raise OSError("no device")


class NeedsLibrary(Collector):
    """Needs a library nobody installed."""

    libraries = ("nx_no_such_library",)
    extra = None


class NeedsGit(Collector):
    """Records after git."""

    requires = ("git",)

    def collect(self, context):
        return {"needs_git": {"after": "git"}}


class Counting(Collector):
    """Samples a counter, shared by the process's runs."""

    sampled = True
    shared = True
    reads = 0

    def read(self, run):
        type(self).reads += 1
        return {"plugin/reads": type(self).reads}


class NotACollector:
    """Registered under the collectors' group by mistake."""
'''

ENTRY_POINTS = """[notebook_exp.collectors]
boom_collect = nx_test_collectors:BoomAtCollect
boom_read = nx_test_collectors:BoomAtRead
boom_init = nx_test_collectors:BoomAtInit
boom_import = nx_test_broken_collector:Anything
needs_library = nx_test_collectors:NeedsLibrary
needs_git = nx_test_collectors:NeedsGit
counting = nx_test_collectors:Counting
not_a_collector = nx_test_collectors:NotACollector
"""

FAILING = ("boom_collect", "boom_read", "boom_init", "boom_import", "not_a_collector")


@pytest.fixture
def test_plugins(tmp_path):
    """Install collector plugins (a module and a dist-info folder on sys.path) for one test."""
    folder = tmp_path / "site"
    dist = folder / "nx_test_collectors-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nx-test-collectors\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    (folder / "nx_test_collectors.py").write_text(PLUGINS)
    (folder / "nx_test_broken_collector.py").write_text("raise RuntimeError('broken at import')\n")
    sys.path.insert(0, str(folder))
    plugins.reset()
    yield
    sys.path.remove(str(folder))
    for module in ("nx_test_collectors", "nx_test_broken_collector"):
        sys.modules.pop(module, None)
    plugins.reset()


def _notes(read_only, store_path, run_id):
    return _events(read_only, store_path, run_id, "collector_failed", "collector_skipped")


@pytest.mark.parametrize("how", ["start_run", "submit"])
def test_a_collector_that_fails_is_skipped_with_one_event_and_the_run_completes(
        how, test_plugins, settings_env, store_path, read_only, caplog):
    settings_env(TELEMETRY_INTERVAL=str(INTERVAL))
    caplog.set_level("WARNING", logger="notebook_exp.collectors")
    runs = []
    for _ in range(2):
        if how == "start_run":
            with nx.start_run("with broken collectors") as run:
                time.sleep(telemetry.FIRST_SAMPLE + 3 * INTERVAL)  # sampled several times
            runs.append(run.run_id)
        else:
            job = nx.submit(lambda run: time.sleep(telemetry.FIRST_SAMPLE + 3 * INTERVAL))
            assert job.result(timeout=60) is None
            runs.append(job.run_id)
    for run_id in runs:  # each run has its own single note of each
        notes = _notes(read_only, store_path, run_id)
        by_name = {}
        for event, detail in notes:
            by_name.setdefault(detail.split(":", 1)[0], []).append((event, detail))
        assert sorted(by_name) == sorted((*FAILING, "needs_library"))
        assert all(len(found) == 1 for found in by_name.values()), notes
        assert by_name["needs_library"][0][0] == "collector_skipped"
        assert "nx_no_such_library" in by_name["needs_library"][0][1]
        assert {event for name, [(event, _)] in by_name.items() if name != "needs_library"} == {"collector_failed"}
        assert "RuntimeError: kaput at start" in by_name["boom_collect"][0][1]
        assert "ValueError: kaput when sampled" in by_name["boom_read"][0][1]
        assert "OSError: no device" in by_name["boom_init"][0][1]
        assert "broken at import" in by_name["boom_import"][0][1]
        # the others recorded as always
        (status,) = _row(read_only, store_path, run_id, "status")
        assert status == "completed"
        git, _source, info = _row(read_only, store_path, run_id)
        assert json.loads(git)["commit"]
        assert json.loads(info)["needs_git"] == {"after": "git"} and "environment" in json.loads(info)
        keys = _keys(read_only, store_path, run_id)
        assert SYS_KEY in keys and "plugin/reads" in keys
    assert not [r for r in caplog.records if "needs_library" in r.getMessage()]  # skipped quietly


def test_a_collector_whose_requirement_is_not_enabled_is_skipped(test_plugins, settings_env, store_path, read_only):
    settings_env(COLLECTORS="needs_git,environment")
    with nx.start_run("no git for it") as run:
        pass
    assert _notes(read_only, store_path, run.run_id) == [
        ("collector_failed", "needs_git: requires collector 'git', which is not enabled")]
    assert set(_info(read_only, store_path, run.run_id)) == {"environment"}


def test_an_unknown_collector_in_the_setting_is_noted_not_fatal(settings_env, store_path, read_only):
    settings_env(COLLECTORS="environment,nope")
    with nx.start_run("typo") as run:
        run.log(loss=1.0)
    ((event, detail),) = _notes(read_only, store_path, run.run_id)
    assert event == "collector_failed" and detail.startswith("nope: unknown collector 'nope'")
    assert "environment" in _info(read_only, store_path, run.run_id)


def test_a_shared_reading_serves_every_run_of_the_process(test_plugins, settings_env):
    settings_env(COLLECTORS="counting,gpu", TELEMETRY_INTERVAL="60")
    import nx_test_collectors

    with nx.start_run("one") as first, nx.start_run("two") as second:
        # what the sampler thread takes for each run when they are due (it first is after FIRST_SAMPLE)
        readings = [telemetry.sampler._readings(run, 60.0) for run in (first, second, first)]
    assert readings == [{"plugin/reads": 1.0}] * 3
    assert nx_test_collectors.Counting.reads == 1
