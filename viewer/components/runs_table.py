"""The runs page: filter widgets over a Tabulator of runs that stays live.

The table pages on the server (``pagination="remote"``): the browser only ever
holds one page, so 10,000 runs stay fast. ``refresh()`` (called periodically
by the app) patches the rows of queued/running runs and streams in new runs;
it never replaces the table's data, which would drop the user's selection.
Runs of a sweep carry its id (the ``sweep`` column, shown once the store has a
sweep); the Sweep filter keeps those of chosen sweeps, and "group by sweep"
groups the rows by it.
Every read goes through ``state.reads`` under one key, so the newest of a
load, a filter change and a refresh is the one applied.

The page fits the window: the filters wrap onto more rows, and the table is as
wide as the page and scrolls sideways inside itself, with the name and run id
columns frozen at its left (``FROZEN``) and every column at most
``DEFAULT_MAX_COLUMN_WIDTH`` wide, so the run id column is never cut. Column widths
are computed here from the rows' text (``column_widths``), not measured in the
browser, and set only when they change.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import pandas as pd
import panel as pn
from bokeh.models.widgets.tables import (
    DateFormatter,
    NumberFormatter,
    ScientificFormatter,
)

from notebook_exp.models import RunStatus
from notebook_exp.store.queries import EMPTY_FACETS, LIST_LAYOUT, FilterError, best_goal

from .common import STATUS_COLORS, choice_options, message, status_formatter, title

__all__ = ["RunsList"]

DEFAULT_PAGE_SIZE = 25  # rows the browser holds (50 doubled the first paint's table work: bench_viewer)
PLAIN = {"type": "plaintext"}
BASE_TITLES = {
    "run_id": "run id", "name": "name", "experiment": "experiment", "status": "status",
    "created": "created", "started": "started (UTC)", "duration": "duration (s)",
    "gpus": "GPUs", "tags": "tags", "sweep": "sweep",
}
DEFAULT_FACET_EVERY = 5  # refreshes between re-reading the filter options
DEFAULT_NEW_RUN_LOOKBACK = pd.Timedelta(minutes=10)  # how far before the newest listed run new runs are looked for
NAME_LINK_CSS = """
.tabulator-cell[tabulator-field="name"] { color: #1a5fb4; cursor: pointer; text-decoration: underline; }
"""
READ_KEY = "runs"
#: Columns that stay at the left while the table scrolls sideways (params and metrics can be many).
FROZEN = ("name", "run_id")
DEFAULT_MAX_COLUMN_WIDTH = 320  # px at most per column: a long name ends in "..." and the run id stays in view


#: Estimated px per character of a cell's text and of a header's bold title (14 px sans-serif,
#: rounded up), and the padding of a cell and of a header (with its sort arrow): ``column_widths``.
CHAR_PX, TITLE_CHAR_PX, CELL_PAD_PX, HEADER_PAD_PX = 8, 9, 18, 44
DATE_CHARS = len("2026-01-01 00:00:00")


def column_widths(frame: pd.DataFrame, titles: dict[str, str]) -> dict[str, int]:
    """Each column's width in px, from its title and its longest shown text, at most
    ``DEFAULT_MAX_COLUMN_WIDTH``. Given in px, the widths spare Tabulator's fitData layout
    measuring every cell of the page in the browser: on 2,000 runs (a page of 50 rows x 21
    columns) that measuring took about 430 ms of the first paint."""
    widths = {}
    for column in frame.columns:
        values = frame[column]
        if column in ("created", "started"):
            chars = DATE_CHARS
        elif pd.api.types.is_float_dtype(values.dtype):
            chars = _float_chars(values.to_numpy(dtype="float64", na_value=np.nan), column == "duration")
        else:
            texts = values.dropna()
            chars = int(texts.astype(str).str.len().max()) if len(texts) else 0
        header = len(titles.get(column, column)) * TITLE_CHAR_PX + HEADER_PAD_PX
        widths[column] = int(min(DEFAULT_MAX_COLUMN_WIDTH, max(header, chars * CHAR_PX + CELL_PAD_PX)))
    return widths


def _float_chars(values: np.ndarray, thousands: bool) -> int:
    """The longest text of these floats as the table shows them: ``0,0.0`` for durations,
    else four decimals, or scientific (``-1.2345e-05``) outside [1e-4, 1e5)."""
    values = values[np.isfinite(values)]
    if not len(values):
        return 3  # "NaN", "inf" or nothing
    size = np.abs(values)
    digits = np.floor(np.log10(np.maximum(size, 1.0))).astype(int) + 1
    sign = (values < 0).astype(int)
    if thousands:
        return int((digits + (digits - 1) // 3 + 2 + sign).max())
    scientific = (size != 0) & ((size < 1e-4) | (size >= 1e5))
    return int(np.where(scientific, 11, digits + 5 + sign).max())


def column_title(column: str) -> str:
    """The escaped header of a runs-table column."""
    if column in BASE_TITLES:
        return BASE_TITLES[column]
    kind, _, name = column.partition(":")
    if kind == "param":
        return title(name)
    if kind == "last":
        return f"{title(name)} (last)"
    arrow = "\u2193" if best_goal(name) == "min" else "\u2191"
    return f"{title(name)} (best {arrow})"


def column_formatter(column: str, dtype) -> object:
    if column == "status":
        return status_formatter()
    if column in ("created", "started"):
        return DateFormatter(format="%Y-%m-%d %H:%M:%S")
    if column == "duration":
        return NumberFormatter(format="0,0.0", nan_format="", null_format="")
    if pd.api.types.is_float_dtype(dtype):
        return ScientificFormatter(precision=4, power_limit_low=-4, nan_format="", null_format="")
    return dict(PLAIN)


class RunsList:
    """Filters, the runs Tabulator, selection for Compare and clicks to open a run."""

    def __init__(self, state, on_open_run: Callable[[str], None] | None = None,
                 on_compare: Callable[[], None] | None = None) -> None:
        self.state = state
        self.on_open_run = on_open_run
        self.on_compare = on_compare
        self._loading = False
        self._refreshes = 0
        self._pending: dict = {}  # filter changes read but not applied yet
        self._build_widgets(EMPTY_FACETS)
        self.table = pn.widgets.Tabulator(
            pd.DataFrame(columns=list(LIST_LAYOUT.columns)), pagination="remote", page_size=DEFAULT_PAGE_SIZE,
            selectable="checkbox", show_index=False, disabled=True, hidden_columns=["created"],
            sizing_mode="stretch_width", layout="fit_data_fill", header_align="left", frozen_columns=list(FROZEN),
            sorters=[{"field": "created", "dir": "desc"}], css_classes=["nx-runs-table"],
            stylesheets=[NAME_LINK_CSS], configuration={"columnDefaults": {"maxWidth": DEFAULT_MAX_COLUMN_WIDTH}},
        )
        self._formatters: dict[tuple[str, str], object] = {}  # one model per column and kind, kept
        self.table.param.watch(self._on_selection, "selection")
        self.table.on_click(self._on_click, column="name")
        self.reload()

    # -- widgets ---------------------------------------------------------------
    def _build_widgets(self, facets: dict) -> None:
        state = self.state
        multi = dict(width=200, solid=False)
        self.experiments = pn.widgets.MultiChoice(
            label="Experiment", options=choice_options(facets["experiments"]), value=list(state.experiments), **multi)
        self.statuses = pn.widgets.MultiChoice(
            label="Status", options=choice_options(facets["statuses"] or list(STATUS_COLORS)),
            value=list(state.statuses), **multi)
        self.tags = pn.widgets.MultiChoice(
            label="Tags", options=choice_options(facets["tags"]), value=list(state.tags), **multi)
        self.sweeps = pn.widgets.MultiChoice(
            label="Sweep", options=choice_options(facets.get("sweeps", [])), value=list(state.sweeps), **multi)
        self.group = pn.widgets.Checkbox(label="group by sweep", value=False, css_classes=["nx-group-sweep"])
        self.group.param.watch(lambda event: self._group(event.new), "value")
        self.metrics = pn.widgets.MultiChoice(
            label="Metric columns", options=choice_options(facets["metrics"]),
            value=list(state.metric_columns), **multi)
        self.text = pn.widgets.TextInput(label="Search", value=state.text, placeholder="name, id, tag, param", width=200)
        self.expression = pn.widgets.TextInput(
            label="Filter (Enter to apply)", value=state.expression, width=320,
            placeholder="lr < 0.01 and loss < 0.2", css_classes=["nx-filter"])
        self.error = pn.pane.HTML("", css_classes=["nx-filter-error"], sizing_mode="stretch_width")
        self.count = pn.pane.HTML("", css_classes=["nx-count"])
        self.compare_button = pn.widgets.Button(label="Compare selected (0)", color="primary", disabled=True)
        self.compare_button.on_click(lambda _event: self.on_compare and self.on_compare())
        watched = {
            self.experiments: "experiments", self.statuses: "statuses", self.tags: "tags", self.sweeps: "sweeps",
            self.metrics: "metric_columns", self.text: "text", self.expression: "expression",
        }
        for widget, name in watched.items():
            widget.param.watch(lambda event, name=name: self._on_filter(name, event.new), "value")

    def panel(self) -> pn.viewable.Viewable:
        filters = pn.FlexBox(self.experiments, self.statuses, self.tags, self.sweeps, self.text, self.expression,
                             self.metrics, flex_wrap="wrap", sizing_mode="stretch_width", css_classes=["nx-filters"])
        header = pn.FlexBox(self.count, self.compare_button, self.group, flex_wrap="wrap", align_items="center",
                            sizing_mode="stretch_width")
        return pn.Column(filters, self.error, header, self.table, sizing_mode="stretch_width")

    # -- loading ---------------------------------------------------------------
    def reload(self) -> None:
        """Read the filter options and the whole table again (a new page, or after an error)."""
        state = self.state

        def read():
            facets = state.facets(refresh=True)
            keys = list(state.metric_columns) or state.default_metric_columns()
            try:
                return facets, keys, state.list_runs(metric_columns=keys), None
            except FilterError as exc:
                return facets, keys, state.list_runs(metric_columns=keys, expression=""), exc

        state.reads.submit(READ_KEY, read, self._on_reloaded)

    def _on_reloaded(self, result) -> None:
        facets, keys, frame, error = result
        if not self.state.metric_columns:
            self.state.metric_columns = keys
        self._loading = True
        try:
            self._set_options(facets)
            self.metrics.value = list(self.state.metric_columns)
        finally:
            self._loading = False
        self.error.object = message(str(error), "error") if error else ""
        self._load(frame)

    def _on_filter(self, name: str, value) -> None:
        if self._loading:
            return
        self._pending[name] = list(value) if isinstance(value, list) else value
        self._submit_filters()

    def _submit_filters(self) -> None:
        """Read the table for every filter change not applied yet (a newer read supersedes older ones)."""
        changes = dict(self._pending)

        def read():
            try:
                return self.state.list_runs(**changes), None
            except FilterError as exc:
                return None, exc

        self.state.reads.submit(READ_KEY, read, partial(self._on_filtered, changes))

    def _on_filtered(self, changes: dict, result) -> None:
        frame, error = result
        if error is not None:  # only an expression can be wrong: the other changes still apply
            self.error.object = message(f"Filter not applied: {error}", "error")
            if self._pending.pop("expression", None) is not None and self._pending:
                self._submit_filters()
            return
        self._pending.clear()
        self.state.param.update(**changes)
        self.error.object = ""
        self._load(frame)

    def _load(self, frame: pd.DataFrame) -> None:
        """Replace the table's data and keep the selected runs that are still listed."""
        keep = list(self.state.selected)
        self._loading = True
        try:
            self.table.param.update(value=frame, **self._column_changes(frame))
            positions = {run_id: i for i, run_id in enumerate(frame["run_id"])}
            self.table.selection = [positions[r] for r in keep if r in positions]
        finally:
            self._loading = False
        self._set_selected([r for r in keep if r in positions])
        self._update_count()

    def _column_changes(self, frame: pd.DataFrame) -> dict:
        """The titles, formatters and widths of ``frame``'s columns that differ from the table's.

        Each change makes the browser's Tabulator rebuild its columns, so only real changes are
        made: a formatter is a bokeh model, new on every call unless kept, and a new one would
        count as a change on every load."""
        titles = {c: column_title(c) for c in frame.columns}
        formatters = {}
        for column in frame.columns:
            formatter = column_formatter(column, frame[column].dtype)
            kind = type(formatter).__name__ if not isinstance(formatter, dict) else "plain"
            formatters[column] = self._formatters.setdefault((column, kind), formatter)
        widths = column_widths(frame, titles)
        changes = {}
        if titles != self.table.titles:
            changes["titles"] = titles
        if formatters.keys() != self.table.formatters.keys() or any(
                formatters[c] is not self.table.formatters[c] for c in formatters):
            changes["formatters"] = formatters
        if widths != self.table.widths:
            changes["widths"] = widths
        return changes

    def _update_count(self) -> None:
        n = len(self.table.value)
        self.count.object = message(f"{n} run{'s' if n != 1 else ''}")

    # -- selection and clicks --------------------------------------------------
    def _on_selection(self, event) -> None:
        if self._loading:
            return
        ids = self.table.value["run_id"]
        self._set_selected([ids.iloc[i] for i in event.new if i < len(ids)])

    def _set_selected(self, run_ids: list[str]) -> None:
        self.state.selected = list(run_ids)
        self.compare_button.label = f"Compare selected ({len(run_ids)})"
        self.compare_button.disabled = len(run_ids) < 1

    def select(self, run_ids: list[str]) -> None:
        """Select these runs in the table (those that are listed)."""
        positions = {run_id: i for i, run_id in enumerate(self.table.value["run_id"])}
        self.table.selection = [positions[r] for r in run_ids if r in positions]

    def _on_click(self, event) -> None:
        run_id = self.table.value["run_id"].iloc[event.row]
        if self.on_open_run is not None:
            self.on_open_run(run_id)

    # -- live refresh -----------------------------------------------------------
    def refresh(self) -> None:
        """Patch queued/running rows in place and stream in runs that appeared."""
        self._refreshes += 1
        options = self._refreshes % DEFAULT_FACET_EVERY == 0
        value = self.table.value
        active = RunStatus.values(active=True)
        live = [r for r, st in zip(value["run_id"].tolist(), value["status"].tolist(), strict=True) if st in active]
        newest = value["created"].max() if len(value) else None
        # look back a while: a run created earlier may commit later (another process's flush)
        since = None if newest is None or pd.isna(newest) else newest - DEFAULT_NEW_RUN_LOOKBACK
        known, columns, state = set(value["run_id"]), set(value.columns), self.state

        def read():
            facets = state.facets(refresh=True) if options else None
            fresh = state.rows(live) if live else None
            try:
                new = state.new_runs(known, since)
            except FilterError:
                new = None
            full = state.list_runs() if new is not None and set(new.columns) - columns else None
            return facets, fresh, new, full

        state.reads.submit(READ_KEY, read, partial(self._on_refreshed, value), periodic=True)

    def _on_refreshed(self, value: pd.DataFrame, result) -> None:
        facets, fresh, new, full = result
        if facets is not None:
            self._refresh_options(facets)
        if self.table.value is not value:
            return  # reloaded meanwhile: these rows belong to the table it replaced
        if full is not None:
            self._load(full)  # new params/metrics: columns change
            return
        if fresh is not None:
            self._patch_rows(fresh)
        if new is not None and len(new):
            self.table.stream(_conform(new, self.table.value), follow=False)
            self._update_count()

    def _patch_rows(self, fresh: pd.DataFrame) -> None:
        """Patch only the cells that changed (vectorised: thousands of live runs stay cheap)."""
        value = self.table.value
        positions = pd.Index(value["run_id"]).get_indexer(fresh["run_id"])
        found = positions >= 0
        fresh, positions = fresh[found], positions[found]
        labels = value.index.to_numpy()[positions]
        patch: dict[str, list] = {}
        for column in fresh.columns:
            if column == "run_id" or column not in value.columns:
                continue
            old = value[column].to_numpy(dtype=object)[positions]
            new = fresh[column].to_numpy(dtype=object)
            changed = np.array([not _same(a, b) for a, b in zip(old, new, strict=True)], dtype=bool)
            if changed.any():
                patch[column] = list(zip(labels[changed].tolist(), new[changed].tolist(), strict=True))
        if patch:
            self.table.patch(patch)

    def _refresh_options(self, facets: dict) -> None:
        self._loading = True
        try:
            self._set_options(facets)
        finally:
            self._loading = False

    def _group(self, on: bool) -> None:
        self.table.groupby = ["sweep"] if on else []

    def _set_options(self, facets: dict) -> None:
        self.experiments.options = choice_options(facets["experiments"])
        self.tags.options = choice_options(facets["tags"])
        sweeps = facets.get("sweeps", [])
        self.sweeps.options = choice_options(sweeps)
        self.table.hidden_columns = ["created"] + ([] if sweeps else ["sweep"])
        self.metrics.options = choice_options(facets["metrics"])
        self.statuses.options = choice_options(facets["statuses"] or list(STATUS_COLORS))


def _conform(new: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    """``new`` with exactly the columns and dtypes of ``like`` (missing text stays empty)."""
    new = new.reindex(columns=like.columns)
    for column, dtype in like.dtypes.items():
        try:
            new[column] = new[column].astype(dtype)
        except (TypeError, ValueError):
            new[column] = new[column].astype(object).where(new[column].notna(), None)
    return new


def _same(old, new) -> bool:
    old_missing, new_missing = _missing(old), _missing(new)
    if old_missing or new_missing:
        return old_missing and new_missing
    try:
        return bool(old == new)
    except (TypeError, ValueError):
        return False


def _missing(value) -> bool:
    return value is None or value is pd.NaT or value is pd.NA or (isinstance(value, float) and value != value)
