"""Fixed pieces of SQL that several read queries share, each defined once.

Nothing here (or anywhere in the read path) puts a value into SQL text: values
and names from the store or the user travel as ``?`` parameters. The only
identifiers spliced into SQL are the fixed ones below and positional aliases
(``p0``, ``s1``) that the builders number themselves.
"""

from __future__ import annotations

from .paths import json_pointer

__all__ = [
    "DURATION", "IN_LIST", "PARAM_NUMBER", "PARAM_TEXT", "SUMMARY_COLUMNS", "SWEEP_ID", "json_pointer",
    "summary_value",
]

#: A run's duration in seconds; a run that has not ended counts until now (its one ``?``: now, UTC).
DURATION = "epoch(coalesce(runs.ended_at, ?::TIMESTAMP) - runs.started_at)"

#: The sweep a run belongs to (``nx.sweep`` records it in the run's spec), NULL for other runs.
SWEEP_ID = "json_extract_string(runs.spec, '$.sweep.id')"

#: A param's value as text (its one ``?``: the param's JSON pointer, :func:`json_pointer`) ...
PARAM_TEXT = "json_extract_string(runs.params, ?)"
#: ... and as a number (NULL when it is not one).
PARAM_NUMBER = f"TRY_CAST({PARAM_TEXT} AS DOUBLE)"

#: ``x IN`` a list parameter: ``f"runs.run_id IN {IN_LIST}"`` with the list as its ``?``.
IN_LIST = "(SELECT unnest(?::VARCHAR[]))"

#: The aggregates kept per run and key in ``metric_summary``, by name.
SUMMARY_COLUMNS = {"last": "last_value", "min": "min_value", "max": "max_value"}


def summary_value(aggregate: str) -> str:
    """A scalar subquery: the run's ``aggregate`` (``SUMMARY_COLUMNS``) of one key (its ``?``)."""
    return (f"(SELECT ms.{SUMMARY_COLUMNS[aggregate]} FROM metric_summary ms "
            "WHERE ms.run_id = runs.run_id AND ms.key = ?)")

