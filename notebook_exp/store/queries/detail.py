"""Reads of single things: the values the filters offer, runs to compare, one run's
records, and the small reads of the widgets and the CLI. Each takes the
connection of an open read session (``access.read``, the viewer's ``_read``).
"""

from __future__ import annotations

from ...models import RunStatus
from .fragments import IN_LIST, SWEEP_ID
from .paths import param_paths

__all__ = [
    "EARLY_STOPPED", "EMPTY_FACETS", "compare_rows", "count_runs", "demo_summary", "status_counts", "facets", "last_values",
    "metric_keys", "recent_runs", "resume_state", "run_media", "run_params", "run_overview", "sweep_runs", "sweeps",
]

EMPTY_FACETS = {"experiments": [], "statuses": [], "tags": [], "params": [], "metrics": [], "sweeps": [],
                "param_pointers": {}}
FACETS_SQL = {
    "experiments": "SELECT DISTINCT experiment FROM runs ORDER BY 1",
    "statuses": "SELECT DISTINCT status FROM runs",
    "tags": "SELECT DISTINCT t FROM (SELECT unnest(tags) AS t FROM runs) ORDER BY 1",
    "metrics": "SELECT DISTINCT key FROM metric_summary ORDER BY 1",
    "sweeps": f"SELECT {SWEEP_ID} FROM runs WHERE {SWEEP_ID} IS NOT NULL GROUP BY 1 ORDER BY max(runs.created_at) DESC",
}
PARAM_STRUCTURE_SQL = "SELECT json_group_structure(params) FROM runs"
COUNT_SQL = "SELECT count(*) FROM runs"
STATUS_COUNTS_SQL = "SELECT status, count(*) FROM runs GROUP BY status"
METRIC_KEYS_SQL = f"SELECT DISTINCT key FROM metric_summary WHERE run_id IN {IN_LIST} ORDER BY 1"
COMPARE_RUNS_SQL = f"SELECT run_id, name, status, CAST(params AS VARCHAR) AS params FROM runs WHERE run_id IN {IN_LIST}"
RUN_PARAMS_SQL = f"SELECT run_id, CAST(params AS VARCHAR) FROM runs WHERE run_id IN {IN_LIST}"
COMPARE_SUMMARY_SQL = (f"SELECT run_id, key, last_value, min_value, max_value FROM metric_summary "
                       f"WHERE run_id IN {IN_LIST}")
RUN_SQL = "SELECT * FROM runs WHERE run_id = ?"
EVENTS_SQL = "SELECT ts, event, detail, host, pid FROM events WHERE run_id = ? ORDER BY ts"
RUN_SUMMARY_SQL = ("SELECT key, count, first_step, last_step, last_value, min_value, max_value, last_ts "
                   "FROM metric_summary WHERE run_id = ? ORDER BY key")
NEWEST_PER_KEY = "QUALIFY row_number() OVER (PARTITION BY key ORDER BY step DESC) <= ? ORDER BY key, step"
TEXTS_SQL = f"SELECT key, step, ts, text FROM texts WHERE run_id = ? {NEWEST_PER_KEY}"
HISTOGRAMS_SQL = f"SELECT key, step, bin_edges, counts FROM histograms WHERE run_id = ? {NEWEST_PER_KEY}"
IMAGES_SQL = f"SELECT key, step, width, height, png FROM images WHERE run_id = ? {NEWEST_PER_KEY} LIMIT ?"
ARTIFACTS_SQL = "SELECT name, path, size, sha256, ts FROM artifacts WHERE run_id = ? ORDER BY name"
RECENT_RUNS_SQL = "SELECT run_id, name, experiment, status, started_at FROM runs ORDER BY created_at DESC LIMIT ?"
LAST_VALUES_SQL = "SELECT key, last_step, last_value FROM metric_summary WHERE run_id = ?"
RESUME_RUN_SQL = """SELECT experiment, name, status, CAST(params AS VARCHAR) AS params, tags, created_at, started_at,
                           host, pid, pid_started FROM runs WHERE run_id = ?"""
RESUME_RICH_SQL = """SELECT key, max(step) FROM (
    SELECT key, step FROM texts WHERE run_id = $1 UNION ALL
    SELECT key, step FROM histograms WHERE run_id = $1 UNION ALL
    SELECT key, step FROM images WHERE run_id = $1) GROUP BY key"""
EARLY_STOPPED = "early-stopped by "  # how a stop rule's reason starts (scheduler.stopping)
SWEEPS_SQL = f"""
WITH s AS (
    SELECT runs.run_id, runs.name, runs.experiment, runs.status, runs.error, runs.started_at, runs.created_at,
           {SWEEP_ID} AS sweep_id, json_extract_string(runs.spec, '$.sweep.method') AS method,
           json_extract_string(runs.spec, '$.sweep.stop.rule') AS rule,
           coalesce(json_extract_string(runs.spec, '$.sweep.stop.metric'), ?) AS metric,
           coalesce(json_extract_string(runs.spec, '$.sweep.stop.mode'), ?) AS mode
    FROM runs WHERE {SWEEP_ID} IS NOT NULL
), v AS (
    SELECT s.*, CASE WHEN s.mode = 'max' THEN ms.max_value ELSE ms.min_value END AS best
    FROM s LEFT JOIN metric_summary ms ON ms.run_id = s.run_id AND ms.key = s.metric
)
SELECT sweep_id, any_value(experiment) AS experiment, any_value(method) AS method, any_value(rule) AS rule,
       any_value(metric) AS metric, any_value(mode) AS mode, count(*) AS runs,
       count(started_at) AS started,
       count(*) FILTER (WHERE status = 'running') AS running,
       count(*) FILTER (WHERE status = 'cancelled' AND starts_with(coalesce(error, ''), ?)) AS stopped_early,
       count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'queued') AS queued,
       CASE WHEN any_value(mode) = 'max' THEN arg_max(run_id, best) ELSE arg_min(run_id, best) END AS best_run_id,
       CASE WHEN any_value(mode) = 'max' THEN arg_max(name, best) ELSE arg_min(name, best) END AS best_run,
       CASE WHEN any_value(mode) = 'max' THEN max(best) ELSE min(best) END AS best_value,
       min(created_at) AS created
FROM v GROUP BY sweep_id ORDER BY created DESC LIMIT ?
"""
SWEEP_RUNS_SQL = f"SELECT runs.run_id FROM runs WHERE {SWEEP_ID} = ? ORDER BY runs.created_at, runs.run_id"
DEMO_SUMMARY_SQL = f"""
SELECT r.name, r.status, json_extract(r.params, '$.lr')::DOUBLE AS lr,
       json_extract(r.params, '$.batch_size')::INT AS batch_size,
       count(m.value) AS points,
       round(arg_max(m.value, m.step) FILTER (WHERE m.key = 'loss'), 4) AS final_loss,
       round(arg_max(m.value, m.step) FILTER (WHERE m.key = 'acc'), 4) AS final_acc
FROM runs r JOIN metrics m USING (run_id)
WHERE r.run_id IN {IN_LIST}
GROUP BY ALL ORDER BY final_loss
"""


# -- the viewer ---------------------------------------------------------------------
def facets(conn) -> dict:
    """The values the filter widgets offer: experiments, statuses (in life order, then any
    others), tags, param names (dotted: ``optim.lr``), metric keys and sweep ids (newest
    first) present in the store; and ``param_pointers``, each param's JSON pointer (for
    ``FilterNames``)."""
    def column(sql: str) -> list[str]:
        return [row[0] for row in conn.execute(sql).fetchall() if row[0] is not None]

    found = {name: column(sql) for name, sql in FACETS_SQL.items()}
    paths = param_paths(conn.execute(PARAM_STRUCTURE_SQL).fetchall()[0][0])
    found["params"] = [name for name, _pointer, _numeric in paths]
    found["param_pointers"] = {name: pointer for name, pointer, _numeric in paths}
    known = RunStatus.values()
    present = found["statuses"]
    found["statuses"] = [s for s in known if s in present] + sorted(set(present) - set(known))
    return found


def sweeps(conn, key: str | None = None, mode: str = "min", limit: int = 100):
    """One row per sweep (pandas), newest first: sweep_id, experiment, method, rule, the
    metric its best run is judged by (its stop rule's, else ``key``) and ``mode``,
    how many runs it has, started, running, stopped early, completed, failed and
    queued, and its best run so far (best_run_id, best_run, best_value: by the
    runs' min, or max, of that metric)."""
    return conn.execute(SWEEPS_SQL, [key, mode, EARLY_STOPPED, limit]).df()


def sweep_runs(conn, sweep_id: str) -> list[str]:
    """The run ids of one sweep, in the order they were queued."""
    return [row[0] for row in conn.execute(SWEEP_RUNS_SQL, [sweep_id]).fetchall()]


def count_runs(conn) -> int:
    return conn.execute(COUNT_SQL).fetchall()[0][0]


def status_counts(conn) -> dict[str, int]:
    """How many runs are in each status (statuses without runs left out)."""
    return dict(conn.execute(STATUS_COUNTS_SQL).fetchall())


def metric_keys(conn, run_ids: list[str]) -> list[str]:
    """Metric keys logged by any of these runs, sorted."""
    return [row[0] for row in conn.execute(METRIC_KEYS_SQL, [list(run_ids)]).fetchall()]


def compare_rows(conn, run_ids: list[str]):
    """(runs, summaries) of the runs to compare, as pandas: run_id, name, status, params
    (JSON text); and run_id, key, last_value, min_value, max_value."""
    ids = [list(run_ids)]
    return conn.execute(COMPARE_RUNS_SQL, ids).df(), conn.execute(COMPARE_SUMMARY_SQL, ids).df()


def run_params(conn, run_ids: list[str]) -> list[tuple[str, str | None]]:
    """(run_id, params as JSON text) of these runs: what a chart groups runs by (no
    metric summaries, no pandas: a tenth of ``compare_rows``' time for 100 runs)."""
    return conn.execute(RUN_PARAMS_SQL, [list(run_ids)]).fetchall()


def run_overview(conn, run_id: str) -> dict | None:
    """The run's row (a dict), its events and its metric summary (pandas); ``None`` if no such run."""
    row = conn.execute(RUN_SQL, [run_id]).df()
    if not len(row):
        return None
    events = conn.execute(EVENTS_SQL, [run_id]).df()
    summary = conn.execute(RUN_SUMMARY_SQL, [run_id]).df()
    return {"run": row.iloc[0].to_dict(), "events": events, "summary": summary}


def run_media(conn, run_id: str, limit: int, images: int, images_per_key: int) -> dict:
    """Texts and histograms (newest ``limit`` per key), the newest ``images`` images (at
    most ``images_per_key`` per key, PNG) and the artifacts of a run, as pandas."""
    return {
        "texts": conn.execute(TEXTS_SQL, [run_id, limit]).df(),
        "histograms": conn.execute(HISTOGRAMS_SQL, [run_id, limit]).df(),
        "images": conn.execute(IMAGES_SQL, [run_id, images_per_key, images]).df(),
        "artifacts": conn.execute(ARTIFACTS_SQL, [run_id]).df(),
    }


# -- widgets and the CLI ------------------------------------------------------------
def recent_runs(conn, limit: int) -> list[tuple]:
    """The ``limit`` newest runs: (run_id, name, experiment, status, started_at) each."""
    return conn.execute(RECENT_RUNS_SQL, [limit]).fetchall()


def last_values(conn, run_id: str) -> dict[str, tuple[int, float]]:
    """key -> (last step, last value) of every metric of a run."""
    return {key: (step, value) for key, step, value in conn.execute(LAST_VALUES_SQL, [run_id]).fetchall()}


def resume_state(conn, run_id: str) -> dict | None:
    """What resuming a run needs (``start_run(resume=True)``), or ``None`` if no such run:
    its row's experiment, name, status, params (JSON text), tags, created_at, started_at,
    host, pid and pid_started; ``last_steps``, each metric key's last step
    (``metric_summary``); and ``rich_steps``, the last step of each text, histogram
    and image key."""
    found = conn.execute(RESUME_RUN_SQL, [run_id])
    row = found.fetchone()
    if row is None:
        return None
    state = dict(zip([column[0] for column in found.description], row))
    state["last_steps"] = {key: step for key, step, _value in conn.execute(LAST_VALUES_SQL, [run_id]).fetchall()}
    state["rich_steps"] = dict(conn.execute(RESUME_RICH_SQL, [run_id]).fetchall())
    return state


def demo_summary(conn, run_ids: list[str]):
    """The demo sweep's runs (pyarrow): name, status, lr, batch_size, points, final loss and acc."""
    return conn.sql(DEMO_SUMMARY_SQL, params=[list(run_ids)]).to_arrow_table()
