"""The front door, lazy imports, settings, packaging and the CLI."""

import json
import sys
from pathlib import Path

import pytest
import tomllib

import notebook_exp as nx
from notebook_exp.config import Settings, get_settings, reset_settings

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("duckdb", "panel", "bokeh", "ray", "mlflow", "pynvml", "pyarrow", "pandas", "torch", "tensorboard")


def test_all_is_sorted_and_every_public_name_is_exported():
    assert nx.__all__ == sorted(nx.__all__)
    for name in nx.__all__:
        assert getattr(nx, name) is not None
    public = {n for n in dir(nx) if not n.startswith("_")}
    submodules = {p.stem if p.name != "__init__.py" else p.parent.name
                  for p in (ROOT / "notebook_exp").glob("*") if not p.name.startswith(("_", "."))} - {"py"}
    submodules = {n.removesuffix(".py") for n in submodules}
    assert public - set(nx.__all__) - submodules - {"annotations", "importlib", "TYPE_CHECKING",
                                                     "load_ipython_extension"} == set()
    # what users reach for is at the front door: the error tree, the run states, the sink contract
    from notebook_exp import exceptions

    assert set(exceptions.__all__) <= set(nx.__all__)
    assert {"RunStatus", "Sink", "MemorySink", "MetricBatch", "RunInfo", "Job", "Run"} <= set(nx.__all__)


def test_every_export_is_documented():
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    import re

    undocumented = [name for name in nx.__all__ if not re.search(rf"`(nx\.)?{name}[`(]", text)]
    assert undocumented == []


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        nx.nope  # noqa: B018


def test_import_is_light(run_python):
    code = (
        "import sys, json, notebook_exp as nx\n"
        "nx.__all__\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    assert json.loads(run_python(code).stdout) == []


def test_start_run_is_still_light_until_the_store_is_used(run_python):
    code = (
        "import sys, json\nfrom notebook_exp import start_run, current_run, RunStatus\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    assert json.loads(run_python(code).stdout) == []


def test_every_setting_has_a_description():
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no description"


def test_settings_from_environment_and_file(monkeypatch, tmp_path):
    config = tmp_path / "nx.toml"
    config.write_text('flush_interval = 2.0\nsinks = ["duckdb", "jsonl"]\nstore = "/from/file.duckdb"\n')
    monkeypatch.setenv("NOTEBOOK_EXP_CONFIG", str(config))
    monkeypatch.setenv("NOTEBOOK_EXP_STORE", "/from/env.duckdb")
    reset_settings()
    settings = get_settings()
    assert settings.flush_interval == 2.0
    assert settings.sinks == ["duckdb", "jsonl"]
    assert settings.store == Path("/from/env.duckdb")  # the environment wins over the file
    monkeypatch.setenv("NOTEBOOK_EXP_SINKS", "jsonl ,duckdb")
    reset_settings()
    assert get_settings().sinks == ["jsonl", "duckdb"]


def test_bad_settings_are_clear(monkeypatch):
    monkeypatch.setenv("NOTEBOOK_EXP_FLUSH_INTERVAL", "-1")
    reset_settings()
    with pytest.raises(ValueError, match="flush_interval"):
        get_settings()


def test_pyproject_lists_every_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "notebook_exp").rglob("__init__.py")
    } | {
        ".".join(("notebook_exp_viewer",) + p.parent.relative_to(ROOT / "viewer").parts)
        for p in (ROOT / "viewer").rglob("__init__.py")
    }
    assert found == listed


def test_exceptions_derive_from_the_root_and_builtins():
    from notebook_exp import exceptions

    for name in exceptions.__all__:
        assert issubclass(getattr(exceptions, name), exceptions.NotebookExpError)
    assert issubclass(nx.InvalidMetric, TypeError) and issubclass(nx.ConfigError, ValueError)
    assert issubclass(nx.StoreLocked, nx.StoreError)


def test_cli_demo_runs_a_real_sweep(store_path, run_python, read_only):
    proc = run_python(
        "import sys\nfrom notebook_exp.cli import main\nsys.exit(main(['demo', '--no-view', '--steps', '40000']))"
    )
    assert "Read back from DuckDB" in proc.stdout
    # every state the viewer shows: four trainings, one that diverges, one cancelled
    assert read_only(store_path, "SELECT status, count(*) FROM runs GROUP BY 1 ORDER BY 1") \
        == [("cancelled", 1), ("completed", 4), ("failed", 1)]
    # loss every step, acc every 50th step and the last one
    assert read_only(store_path, "SELECT key, count(*) FROM metrics JOIN runs USING (run_id) WHERE status = 'completed' "
                                 "AND key IN ('loss', 'acc') GROUP BY 1 ORDER BY 1") \
        == [("acc", 4 * 801), ("loss", 4 * 40_000)]
    # runs of about a second, sampled every 0.25 s: the System tab has something to show for each
    sampled = read_only(store_path, "SELECT run_id, count(*) FROM metrics JOIN runs USING (run_id) "
                                    "WHERE status = 'completed' AND key = 'sys/memory_rss_mb' GROUP BY 1")
    assert len(sampled) == 4 and all(n >= 1 for _run, n in sampled)


def test_cli_runs_and_sql(store_path, capsys):
    from notebook_exp.cli import main

    with nx.start_run("cli-run", experiment="cli", params={"lr": 0.5}) as run:
        run.log(loss=0.25)
    assert main(["runs", "-e", "cli"]) == 0
    out = capsys.readouterr().out
    assert "cli-run" in out and "params.lr" in out and "0.25" in out
    assert main(["sql", "SELECT count(*) AS n FROM metrics WHERE key = 'loss'"]) == 0
    assert capsys.readouterr().out.split() == ["n", "1"]


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    from notebook_exp.cli import main

    assert main(["sql", "SELECT 1", "--store", str(tmp_path / "missing.duckdb")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("notebook-exp: error: no store at") and err.count("\n") == 1


def test_cli_help_mentions_every_command(run_python):
    out = run_python("from notebook_exp.cli import main\nmain(['--help'])", check=False).stdout
    for command in ("demo", "runs", "sql", "view"):
        assert command in out
    assert sys.version_info >= (3, 10)


def test_cli_view_refuses_a_public_address_without_auth(store_path, capsys):
    from notebook_exp.cli import main

    assert main(["view", "--host", "0.0.0.0", "--store", str(store_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("notebook-exp: error:") and "auth" in err and err.count("\n") == 1
