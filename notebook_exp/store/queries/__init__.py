"""The read path: every query that reads the store, with fixed SQL and ``?`` parameters.

``nx.runs``, ``nx.metrics`` and ``nx.sql`` (``runs``, ``metrics``, ``sql``), the
viewer (``notebook_exp_viewer.state.ViewerState``), the widgets, the CLI and the
inline table all read through here; nothing else in the package writes read
SQL (docs/architecture.md §4). Every read attaches the store read-only for one
short session; values always travel as parameters.

- ``access``: sessions (``read``, ``reader``) and ``sql``.
- ``fragments``: SQL pieces several queries share (duration, params, summaries, sweep id).
- ``paths``: nested params as dotted names (``flatten``, ``param_paths``).
- ``filters``: which runs to read (``RunFilter``) and the filter language
  (``compile_filter``).
- ``table``: the one runs-table builder (``runs_table``, its layouts) and ``runs``.
- ``series``: metric points (``metrics``, ``metric_points``), the charts'
  extents and downsampling, ``ema``.
- ``detail``: facets, compare, sweeps, one run's records, the widgets' and CLI's reads.
- ``queue``: the machine's queue (``queue_entries``: every queued and running run of
  every scheduler, ``QueueEntry``), its GPUs (``gpu_states``, ``GpuState``), and the
  runs a control request names (``find_runs``).
"""

from .access import (
    _store,  # noqa: F401 - nx.runs and scheduler.api resolve a store through it
    read,
    reader,
    sql,
)
from .detail import (
    EARLY_STOPPED,
    EMPTY_FACETS,
    compare_rows,
    count_runs,
    demo_summary,
    facets,
    last_values,
    metric_keys,
    recent_runs,
    run_media,
    run_overview,
    run_params,
    status_counts,
    sweep_runs,
    sweeps,
)
from .filters import ALL_RUNS, FilterError, FilterNames, RunFilter, compile_filter
from .fragments import SUMMARY_COLUMNS, json_pointer
from .paths import flatten, param_paths
from .queue import (
    GpuHolder,
    GpuState,
    MachineQueue,
    Owner,
    QueueEntry,
    RunTarget,
    find_runs,
    gpu_states,
    queue_entries,
)
from .series import (
    BUCKET_COLUMNS,
    X_KINDS,
    bucket_points,
    downsample,
    downsample_buckets,
    ema,
    empty_buckets,
    merge_buckets,
    metric_points,
    metrics,
    running_mean,
    series_extents,
)
from .table import (
    API_LAYOUT,
    LIST_LAYOUT,
    RunsLayout,
    best_goal,
    empty_runs_table,
    runs,
    runs_table,
)

__all__ = [
    "ALL_RUNS", "API_LAYOUT", "BUCKET_COLUMNS", "EARLY_STOPPED", "EMPTY_FACETS", "LIST_LAYOUT", "SUMMARY_COLUMNS", "X_KINDS",
    "FilterError", "FilterNames", "GpuHolder", "GpuState", "MachineQueue", "Owner", "QueueEntry", "RunFilter",
    "RunTarget", "RunsLayout", "best_goal", "bucket_points", "compare_rows", "compile_filter", "count_runs", "demo_summary",
    "downsample", "downsample_buckets", "ema", "empty_buckets", "empty_runs_table", "facets", "find_runs", "flatten", "gpu_states", "json_pointer",
    "last_values", "merge_buckets", "metric_keys", "metric_points", "metrics", "param_paths", "queue_entries", "read", "reader",
    "recent_runs", "run_media", "running_mean", "run_overview", "run_params", "runs", "runs_table", "series_extents", "sql", "status_counts", "sweep_runs",
    "sweeps",
]
