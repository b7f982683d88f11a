"""The params table of the Compare page: one row per param, one column per run.

By default only params whose values differ between the runs are listed
(a param missing from some runs differs); a checkbox shows them all.
"""

from __future__ import annotations

import json

import pandas as pd
import panel as pn

from .common import format_value, message, title

__all__ = ["ParamsDiff", "params_frame"]

MISSING = object()


def _canonical(value) -> str:
    if value is MISSING:
        return "\x00missing"
    return json.dumps(value, sort_keys=True, default=str)


def _shown(value) -> str:
    if value is MISSING:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, bool):
        return "true" if value else "false"
    return format_value(value)


def params_frame(run_ids: list[str], params: dict[str, dict], show_all: bool = False) -> pd.DataFrame:
    """Rows: params (only differing ones unless ``show_all``); columns: ``param`` then run ids."""
    names = sorted({name for run_id in run_ids for name in params.get(run_id, {})})
    rows = []
    for name in names:
        values = [params.get(run_id, {}).get(name, MISSING) for run_id in run_ids]
        if not show_all and len({_canonical(v) for v in values}) < 2:
            continue
        rows.append([name, *(_shown(v) for v in values)])
    return pd.DataFrame(rows, columns=["param", *run_ids])


class ParamsDiff:
    """A plain-text table of the selected runs' params, differing ones only by default."""

    def __init__(self, state) -> None:
        self.state = state
        self.run_ids: list[str] = []
        self.names: dict[str, str] = {}
        self.params: dict[str, dict] = {}
        self.show_all = pn.widgets.Checkbox(label="show all params", value=False)
        self.note = pn.pane.HTML("", css_classes=["nx-params-note"])
        self.table = pn.widgets.Tabulator(
            pd.DataFrame({"param": []}), show_index=False, disabled=True, selectable=False,
            sizing_mode="stretch_width", layout="fit_data_table", css_classes=["nx-params-diff"],
        )
        self.show_all.param.watch(lambda _e: self._render(), "value")

    def panel(self) -> pn.viewable.Viewable:
        return pn.Column(self.show_all, self.note, self.table, sizing_mode="stretch_width")

    def update(self, data: dict) -> None:
        """Show the params of ``state.compare_data(...)``'s runs."""
        runs = data["runs"]
        self.run_ids = list(runs["run_id"])
        self.names = dict(zip(runs["run_id"], runs["name"], strict=True))
        self.params = data["params"]
        self._render()

    def frame(self) -> pd.DataFrame:
        return params_frame(self.run_ids, self.params, self.show_all.value)

    def _render(self) -> None:
        frame = self.frame()
        if not self.run_ids:
            self.note.object = message("Select runs on the Runs page to compare them.")
        elif not len(frame):
            self.note.object = message("These runs have the same params.")
        else:
            self.note.object = ""
        self.table.titles = {"param": "param", **{r: title(self.names.get(r, r)) for r in self.run_ids}}
        self.table.formatters = {c: {"type": "plaintext"} for c in frame.columns}
        self.table.value = frame
