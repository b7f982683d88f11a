"""The plugin door (notebook_exp._plugins): four kinds, metadata, settings, start order, listing."""

import pytest
from pydantic import Field

import notebook_exp as nx
from notebook_exp import _plugins as plugins
from notebook_exp._plugins import PluginSettings
from notebook_exp.exceptions import ConfigError, SinkError
from notebook_exp.sinks import Sink, registry
from notebook_exp.testing import MemorySink

BUILTINS = {
    "sink": {"duckdb", "jsonl", "mlflow", "tensorboard", "wandb"},
    "collector": {"environment", "git", "gpu", "source", "system"},
    "processor": {"drop_nonfinite", "every", "filter", "rename", "scale"},
}


def test_every_builtin_registers_through_entry_points_and_loads():
    for kind, names in BUILTINS.items():
        assert names <= set(plugins.names(kind)), kind
    listed = {(p.kind, p.name): p for p in plugins.installed()}
    for kind, names in BUILTINS.items():
        for name in names:
            found = listed[(kind, name)]
            assert found.loads, (kind, name, found.problem)
            assert found.version == nx.__version__ and found.distribution == "notebook-exp"
            assert found.description, (kind, name)
    assert plugins.names("framework") == [] or all(p.kind == "framework" for p in plugins.installed(["framework"]))


def test_nx_plugins_is_the_same_table():
    table = nx.plugins()
    assert list(table.columns[:4]) == ["kind", "name", "version", "loads"]
    assert {(k, n) for k, n in zip(table.kind, table.name)} == {(p.kind, p.name) for p in plugins.installed()}
    assert set(nx.plugins("processor").kind) == {"processor"}
    with pytest.raises(ConfigError, match="unknown plugin kind 'nope'"):
        nx.plugins("nope")


class Demo(PluginSettings):
    steps: int = Field(10, ge=1)
    keys: list[str] = Field(default_factory=list)
    label: str = "x"


def test_settings_come_from_options_then_env_then_the_config_file(monkeypatch, tmp_path):
    config = tmp_path / "nx.toml"
    config.write_text('[plugins.demo]\nsteps = 3\nlabel = "from-file"\nkeys = ["a", "b"]\n')
    monkeypatch.setenv("NOTEBOOK_EXP_CONFIG", str(config))
    assert plugins.settings_for("demo", Demo) == Demo(steps=3, label="from-file", keys=["a", "b"])
    monkeypatch.setenv("NOTEBOOK_EXP_DEMO_STEPS", "7")
    monkeypatch.setenv("NOTEBOOK_EXP_DEMO_KEYS", "train/*, val/*")
    assert plugins.settings_for("demo", Demo) == Demo(steps=7, label="from-file", keys=["train/*", "val/*"])
    assert plugins.settings_for("demo", Demo, {"steps": 9}).steps == 9


def test_a_bad_setting_is_one_config_error_naming_plugin_field_and_source(monkeypatch, tmp_path):
    monkeypatch.setenv("NOTEBOOK_EXP_DEMO_STEPS", "0")
    with pytest.raises(ConfigError, match=r"plugin 'demo': setting 'steps' \(from NOTEBOOK_EXP_DEMO_STEPS\): .*greater"):
        plugins.settings_for("demo", Demo)
    monkeypatch.delenv("NOTEBOOK_EXP_DEMO_STEPS")
    config = tmp_path / "nx.toml"
    config.write_text("[plugins.demo]\nstep = 3\n")
    monkeypatch.setenv("NOTEBOOK_EXP_CONFIG", str(config))
    with pytest.raises(ConfigError, match=r"plugin 'demo': setting 'step' \(from \[plugins.demo\] in .*nx.toml\): unknown"):
        plugins.settings_for("demo", Demo)
    with pytest.raises(ConfigError, match=r"plugin 'demo': setting 'label' \(from the run's options\)"):
        plugins.settings_for("demo", Demo, {"label": 5, "step": 1})


def test_sink_settings_from_the_environment_reach_the_sink(settings_env):
    settings_env(JSONL_EXCLUDE="secret/*")
    sink = registry.create("jsonl")
    assert sink.settings.exclude == ["secret/*"]
    settings_env(JSONL_RATE="-1")
    with pytest.raises(ConfigError, match=r"plugin 'jsonl': setting 'rate' \(from NOTEBOOK_EXP_JSONL_RATE\)"):
        nx.start_run(sinks=["jsonl"])
    assert nx.runs().empty  # nothing started


def test_start_order_is_topological_and_refuses_cycles_and_missing_plugins():
    order = plugins.start_order([
        ("sink", "c", ("b",)), ("sink", "b", ("a", "collector:git")), ("sink", "a", ()), ("collector", "git", ()),
    ])
    assert order.index(("sink", "a")) < order.index(("sink", "b")) < order.index(("sink", "c"))
    assert order.index(("collector", "git")) < order.index(("sink", "b"))
    with pytest.raises(ConfigError, match="cycle: sink:a -> sink:b -> sink:a"):
        plugins.start_order([("sink", "a", ("b",)), ("sink", "b", ("a",))])
    with pytest.raises(ConfigError, match="sink plugin 'a' requires sink plugin 'nope', which is not installed"):
        plugins.start_order([("sink", "a", ("nope",))])
    with pytest.raises(ConfigError, match="requires sink plugin 'jsonl', which is not enabled"):
        plugins.start_order([("sink", "a", ("jsonl",))])


def test_sinks_start_after_the_sinks_they_require(store_path):
    started = []

    class Early(MemorySink):
        name = "early"

        def start_run(self, run):
            started.append(self.name)
            super().start_run(run)

    class Late(Early):
        name = "late"
        requires = ("early",)

    with nx.start_run(sinks=[Late, Early]) as run:
        run.log(x=1.0)
    assert started == ["early", "late"]
    with pytest.raises(ConfigError, match="'late' requires sink plugin 'early'"):
        nx.start_run(sinks=[Late])


def test_a_plugin_missing_its_library_says_which_install_fixes_it(tmp_path, monkeypatch):
    class NeedsLib(Sink):
        libraries = ("surely_not_installed_lib",)
        extra = "mlflow"

        def log_metrics(self, batch):
            pass

    dist = tmp_path / "needslib-2.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: needslib\nVersion: 2.0\n")
    (dist / "entry_points.txt").write_text(
        "[notebook_exp.sinks]\nneedslib = needslib_mod:NeedsLib\n[notebook_exp.processors]\nnoimport = gone_mod:X\n")
    (tmp_path / "needslib_mod.py").write_text(
        "from notebook_exp.sinks import Sink\n"
        "class NeedsLib(Sink):\n"
        "    '''Needs a library.'''\n"
        "    libraries = ('surely_not_installed_lib',)\n    extra = 'mlflow'\n"
        "    def log_metrics(self, batch): pass\n")
    (tmp_path / "gone_mod.py").write_text("import another_missing_lib\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.reset()
    try:
        found = plugins.info("sink", "needslib")
        assert not found.loads and found.install == "pip install 'notebook-exp[mlflow]'"
        assert found.version == "2.0" and found.distribution == "needslib"
        assert "surely_not_installed_lib" in found.problem
        gone = plugins.info("processor", "noimport")
        assert not gone.loads and gone.install == "pip install another_missing_lib"
        with pytest.raises(SinkError, match=r"needslib.*pip install 'notebook-exp\[mlflow\]'"):
            nx.start_run(sinks=["needslib"])
    finally:
        monkeypatch.undo()
        plugins.reset()
