"""Reads of single things: the values the filters offer, runs to compare, one run's
records, and the small reads of the widgets and the CLI. Each takes the
connection of an open read session (``access.read``, the viewer's ``_read``).
"""

from __future__ import annotations

from ...models import RunStatus
from .fragments import IN_LIST

__all__ = [
    "EMPTY_FACETS", "compare_rows", "count_runs", "demo_summary", "facets", "last_values", "metric_keys",
    "recent_runs", "run_media", "run_overview",
]

EMPTY_FACETS = {"experiments": [], "statuses": [], "tags": [], "params": [], "metrics": []}
FACETS_SQL = {
    "experiments": "SELECT DISTINCT experiment FROM runs ORDER BY 1",
    "statuses": "SELECT DISTINCT status FROM runs",
    "tags": "SELECT DISTINCT t FROM (SELECT unnest(tags) AS t FROM runs) ORDER BY 1",
    "params": "SELECT DISTINCT k FROM (SELECT unnest(json_keys(params)) AS k FROM runs) ORDER BY 1",
    "metrics": "SELECT DISTINCT key FROM metric_summary ORDER BY 1",
}
COUNT_SQL = "SELECT count(*) FROM runs"
METRIC_KEYS_SQL = f"SELECT DISTINCT key FROM metric_summary WHERE run_id IN {IN_LIST} ORDER BY 1"
COMPARE_RUNS_SQL = f"SELECT run_id, name, status, CAST(params AS VARCHAR) AS params FROM runs WHERE run_id IN {IN_LIST}"
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
def facets(conn) -> dict[str, list[str]]:
    """The values the filter widgets offer: experiments, statuses (in life order, then any
    others), tags, param names and metric keys present in the store."""
    def column(sql: str) -> list[str]:
        return [row[0] for row in conn.execute(sql).fetchall() if row[0] is not None]

    found = {name: column(sql) for name, sql in FACETS_SQL.items()}
    known = RunStatus.values()
    present = found["statuses"]
    found["statuses"] = [s for s in known if s in present] + sorted(set(present) - set(known))
    return found


def count_runs(conn) -> int:
    return conn.execute(COUNT_SQL).fetchall()[0][0]


def metric_keys(conn, run_ids: list[str]) -> list[str]:
    """Metric keys logged by any of these runs, sorted."""
    return [row[0] for row in conn.execute(METRIC_KEYS_SQL, [list(run_ids)]).fetchall()]


def compare_rows(conn, run_ids: list[str]):
    """(runs, summaries) of the runs to compare, as pandas: run_id, name, status, params
    (JSON text); and run_id, key, last_value, min_value, max_value."""
    ids = [list(run_ids)]
    return conn.execute(COMPARE_RUNS_SQL, ids).df(), conn.execute(COMPARE_SUMMARY_SQL, ids).df()


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


def demo_summary(conn, run_ids: list[str]):
    """The demo sweep's runs (pyarrow): name, status, lr, batch_size, points, final loss and acc."""
    return conn.sql(DEMO_SUMMARY_SQL, params=[list(run_ids)]).to_arrow_table()
