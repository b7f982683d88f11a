"""Compare runs inline in the notebook: a rich runs table and overlaid metric curves.

    table = nx.runs("mnist")        # a RunsTable: a pandas DataFrame that renders richly
    table[table["status"] == "completed"].plot("loss", smooth=0.6)

``RunsTable`` is a ``pandas.DataFrame`` (slices stay ``RunsTable`` and remember
their store). In a notebook it shows as an HTML table with coloured status
cells and its columns grouped under run / params / metrics, every value
escaped. ``RunsTable.plot(key)`` replaces pandas' plot accessor: it draws one
line per run of the metric ``key`` in an interactive bokeh figure (a
``MetricPlot``). A chart carries only its own data and a short script: BokehJS
comes once per page from the Jupyter server showing the notebook (bokeh's own
``bokeh.min.js``, which Panel's server extension serves), so a notebook with
many charts stays light and still renders in JupyterLab without internet or a
CDN. ``MetricPlot.to_html()`` makes a standalone fragment that carries BokehJS.
``pandas.DataFrame(table).plot`` gives pandas' plotting back.
"""

from __future__ import annotations

import html
import itertools
import os
import re
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from ._style import PALETTE, STATUS_COLORS
from .exceptions import ConfigError
from .store.queries import ema

__all__ = ["MetricPlot", "RunsTable", "runs_table"]

GROUPS = ("params.", "metrics.")  # column prefixes shown under a group heading
DEFAULT_MAX_CELL = 80  # characters of a cell shown; the whole value is in its tooltip
X_KINDS = ("step", "time")
DEFAULT_HEIGHT = 360


# -- the table -------------------------------------------------------------------
class RunsTable(pd.DataFrame):
    """The runs table ``nx.runs()`` returns: a DataFrame that renders richly and plots metrics.

    ``store`` is the store the runs came from (``None``: the current one);
    slicing, filtering and sorting keep it. ``plot(key)`` overlays the runs'
    curves of one metric; pandas' own plotting stays at
    ``pandas.DataFrame(table).plot``.
    """

    _metadata = ["store"]
    store: str | os.PathLike | None = None

    def __init__(self, *args: Any, store: str | os.PathLike | None = None, **kwargs: Any) -> None:
        data = args[0] if args else kwargs.get("data")
        super().__init__(*args, **kwargs)
        self.store = store if store is not None else getattr(data, "store", None)

    @property
    def _constructor(self):
        return RunsTable

    def _repr_html_(self) -> str:
        return table_html(self)

    def plot(self, key: str, x: str = "step", logy: bool = False, smooth: float = 0.0) -> MetricPlot:
        """Overlay metric ``key`` of every run in the table: one line per run, named in the legend.

        ``x`` is "step" or "time" (wall clock, a datetime axis); ``logy`` uses a
        log y axis; ``smooth`` in [0, 1) is the EMA weight (debiased, as in
        TensorBoard and the viewer; 0 draws the raw values). Hovering a line
        shows run, step, time and value. Raises ``ConfigError`` (a
        ``ValueError``) for a key none of the runs logged, naming the keys they
        did. This replaces pandas' ``DataFrame.plot`` accessor; use
        ``pandas.DataFrame(table).plot`` for that.
        """
        from .store.queries import metrics

        _check_plot_args(key, x, smooth)
        if "run_id" not in self.columns:
            raise ConfigError("a runs table needs its run_id column to plot metrics")
        if self.empty:
            raise ConfigError(f"no runs to plot {key!r} for: the table is empty")
        points = metrics(self, key, store=self.store)
        if points.empty:
            available = _available_keys(self)
            raise ConfigError(
                f"no metric {key!r} in these {len(self)} runs; "
                f"available: {', '.join(map(repr, available)) if available else 'none'}"
            )
        figure = _figure(points, _labels(self), key, x=x, logy=logy, smooth=smooth)
        return MetricPlot(figure, key, points["run_id"].nunique())


def runs_table(frame: pd.DataFrame, store: str | os.PathLike | None = None) -> RunsTable:
    """``frame`` as a ``RunsTable`` reading metrics from ``store`` (default: the store setting now)."""
    if store is None:
        from .config import get_settings

        store = get_settings().store_path
    return RunsTable(frame, store=store)


def _check_plot_args(key: Any, x: str, smooth: Any) -> None:
    if not isinstance(key, str) or not key:
        raise ConfigError(f"plot takes one metric key (a string), got {key!r}")
    if x not in X_KINDS:
        raise ConfigError(f"x must be one of {', '.join(X_KINDS)}, got {x!r}")
    if isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or not 0 <= smooth < 1:
        raise ConfigError(f"smooth is an EMA weight in [0, 1), got {smooth!r}")


def _available_keys(table: RunsTable) -> list[str]:
    """Metric keys the table's runs logged (from the store, else from its columns)."""
    from .exceptions import StoreError
    from .store import queries

    ids = [str(r) for r in table["run_id"]]
    if not ids:
        return []
    try:
        return queries.read(lambda conn: queries.metric_keys(conn, ids), store=table.store)
    except StoreError:
        return sorted(c.removeprefix("metrics.") for c in table.columns if str(c).startswith("metrics."))


def _labels(table: pd.DataFrame) -> dict[str, str]:
    """run id -> legend label: the run's name, with a short id where names repeat."""
    ids = [str(r) for r in table["run_id"]]
    names = [str(n) for n in table["name"]] if "name" in table.columns else ids
    counts = pd.Series(names).value_counts()
    return {i: (f"{n} ({i[:6]})" if counts[n] > 1 else n) for i, n in zip(ids, names)}


# -- HTML ------------------------------------------------------------------------
def _group(column: Any) -> str:
    text = str(column)
    return next((p[:-1] for p in GROUPS if text.startswith(p)), "run")


def _short(column: Any) -> str:
    text = str(column)
    return next((text[len(p):] for p in GROUPS if text.startswith(p)), text)


def format_cell(value: Any) -> str:
    """A short plain-text rendering of a table value (not yet escaped)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(format_cell(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={format_cell(v)}" for k, v in value.items())
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _cell(column: Any, value: Any) -> str:
    text = format_cell(value)
    shown = text if len(text) <= DEFAULT_MAX_CELL else text[: DEFAULT_MAX_CELL - 1] + "\u2026"
    title = f' title="{html.escape(text)}"' if shown != text else ""
    style = ""
    if str(column) == "status" and text in STATUS_COLORS:
        style = f' style="background:{STATUS_COLORS[text]};color:white"'
    return f"<td{title}{style}>{html.escape(shown)}</td>"


def _header(columns: list[Any]) -> str:
    """Two header rows: the group of each run of columns, then the short column names."""
    top = "".join(
        f'<th colspan="{len(list(run))}" style="text-align:center">{html.escape(group)}</th>'
        for group, run in itertools.groupby(columns, key=_group)
    )
    names = "".join(f"<th title=\"{html.escape(str(c))}\">{html.escape(_short(c))}</th>" for c in columns)
    return f"<thead><tr><th></th>{top}</tr><tr><th></th>{names}</tr></thead>"


def _rows(frame: pd.DataFrame) -> list[str]:
    columns = list(frame.columns)
    out = []
    for index, row in zip(frame.index, frame.itertuples(index=False, name=None)):
        cells = "".join(_cell(c, v) for c, v in zip(columns, row))
        out.append(f"<tr><th>{html.escape(format_cell(index))}</th>{cells}</tr>")
    return out


def table_html(frame: pd.DataFrame) -> str:
    """An HTML table of ``frame``: status cells coloured, params and metrics columns
    grouped, long values cut (whole in the tooltip), everything escaped. Tables
    longer than pandas' ``display.max_rows`` show their first and last rows."""
    max_rows = pd.get_option("display.max_rows")
    if max_rows is not None and len(frame) > max_rows:
        half = max((pd.get_option("display.min_rows") or 10) // 2, 1)
        gap = f'<tr><td colspan="{len(frame.columns) + 1}">\u2026</td></tr>'
        rows = _rows(frame.iloc[:half]) + [gap] + _rows(frame.iloc[-half:])
    else:
        rows = _rows(frame)
    noun = "run" if len(frame) == 1 else "runs"
    return (
        '<div class="nx-runs-table" style="overflow-x:auto">'
        f'<table class="dataframe">{_header(list(frame.columns))}<tbody>{"".join(rows)}</tbody></table>'
        f"<p>{len(frame)} {noun} \u00d7 {len(frame.columns)} columns</p></div>"
    )


# -- the plot --------------------------------------------------------------------
def _figure(points: pd.DataFrame, labels: dict[str, str], key: str, *, x: str, logy: bool, smooth: float):
    """A bokeh figure with one line per run of ``points`` (run_id, step, ts, value)."""
    from bokeh.models import ColumnDataSource, Legend, LegendItem
    from bokeh.plotting import figure

    fig = figure(
        title=key, height=DEFAULT_HEIGHT, sizing_mode="stretch_width",
        x_axis_type="datetime" if x == "time" else "linear", y_axis_type="log" if logy else "linear",
        x_axis_label="time (UTC)" if x == "time" else "step", y_axis_label=key,
        tools="pan,wheel_zoom,box_zoom,reset,save",
    )
    items, lines = [], []
    order = {run_id: i for i, run_id in enumerate(labels)}
    groups = sorted(points.groupby("run_id", sort=False), key=lambda g: order.get(g[0], len(order)))
    for i, (run_id, group) in enumerate(groups):
        raw = group["value"].to_numpy(dtype="float64")
        label = labels.get(run_id, run_id)
        source = ColumnDataSource({
            "x": group["ts" if x == "time" else "step"].to_numpy(), "step": group["step"].to_numpy(),
            "ts": group["ts"].to_numpy(), "value": ema(raw, smooth), "raw": raw, "run": [label] * len(group),
        })
        color = PALETTE[i % len(PALETTE)]
        line = fig.line("x", "value", source=source, color=color, line_width=2)
        renderers = [line]
        if len(group) == 1:  # a single point draws no line
            renderers.append(fig.scatter("x", "value", source=source, color=color, size=6))
        lines.append(line)
        items.append(LegendItem(label=label, renderers=renderers))
    fig.add_tools(_hover(lines, smooth))
    fig.add_layout(Legend(items=items, click_policy="hide"), "right")
    return fig


def _hover(lines: list, smooth: float):
    from bokeh.models import HoverTool

    tooltips = [("run", "@run"), ("step", "@step"), ("time", "@ts{%F %T}"), ("value", "@value{%.6g}")]
    if smooth > 0:
        tooltips.append(("raw", "@raw{%.6g}"))
    return HoverTool(renderers=lines, tooltips=tooltips,
                     formatters={"@ts": "datetime", "@value": "printf", "@raw": "printf"})


# -- BokehJS: one copy per page, from the Jupyter server ------------------------------
#: Where a Jupyter server serves bokeh's own static files (``bokeh/server/static``):
#: the route of Panel's server extension (``panel.io.jupyter_server_extension``),
#: which panel's wheel enables, relative to the server's base URL.
BOKEHJS_ROUTE = "panel-preview/static/js/bokeh.min.js"
BOKEHJS_ATTR = "data-nx-bokehjs"  # marks a fragment that carries BokehJS itself (its value: the version)
NOTE_CLASS = "nx-plot-note"  # the text a page without JavaScript (or an untrusted notebook) shows instead
NOTE = ("This chart is drawn by JavaScript: run its cell, or trust the notebook "
        "(jupyter trust NOTEBOOK.ipynb), to see it.")
_bundle: str | None = None


def _bokehjs_bundle() -> str:
    """BokehJS (bokeh.min.js of the installed bokeh), gzip-compressed and base64-encoded.

    Deterministic (mtime 0), so the same bokeh gives the same bytes in every kernel."""
    global _bundle
    if _bundle is None:
        import base64
        import gzip

        from bokeh.resources import Resources

        js = "\n".join(Resources(mode="inline", components=["bokeh"]).js_raw)
        _bundle = base64.b64encode(gzip.compress(js.encode("utf-8"), 9, mtime=0)).decode("ascii")
    return _bundle


def _bokehjs_inline() -> str:
    """A script that defines BokehJS on the page from the compressed bundle (about
    470 kB), at most once per page: for a standalone page (``to_html()``).

    ``window.__nxBokehJS`` is the promise charts wait on; a page that already has
    this version of BokehJS resolves at once."""
    import bokeh

    version = bokeh.__version__
    return (
        f'<script type="text/javascript" {BOKEHJS_ATTR}="{version}">\n'
        "(function(root) {\n"
        f'  if (root.Bokeh !== undefined && root.Bokeh.version === "{version}") {{\n'
        "    root.__nxBokehJS = Promise.resolve(root.Bokeh); return;\n"
        "  }\n"
        f'  const data = "{_bokehjs_bundle()}";\n'
        "  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));\n"
        "  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));\n"
        "  root.__nxBokehJS = new Response(stream).text().then((code) => {\n"
        "    const tag = document.createElement('script');\n"
        "    tag.textContent = code;\n"
        "    document.head.appendChild(tag);\n"
        "    return root.Bokeh;\n"
        "  });\n"
        "})(window);\n"
        "</script>"
    )


# The script of every chart: draw once BokehJS is on the page. The first chart of a
# page without it adds one <script> for BOKEHJS_ROUTE under the Jupyter server's base
# URL (JupyterLab and Notebook 7 keep it in #jupyter-config-data, classic Notebook in
# <body data-base-url>); the others wait on the same promise. Every name is a
# placeholder replaced by _chart_script.
_CHART_JS = """\
(function(root) {
  const el = document.getElementById(DIV_ID);
  function embed() {
    if (el) { el.querySelectorAll("." + NOTE_CLASS).forEach((note) => note.remove()); }
EMBED
  }
  function say(text) {
    if (el) { el.querySelectorAll("." + NOTE_CLASS).forEach((note) => { note.textContent = text; }); }
  }
  function base() {
    const config = document.getElementById("jupyter-config-data");
    if (config) { try { return JSON.parse(config.textContent).baseUrl || null; } catch (e) {} }
    return (document.body && document.body.getAttribute("data-base-url")) || null;
  }
  if (root.Bokeh !== undefined) { embed(); return; }
  if (root.__nxBokehJS === undefined) {
    root.__nxBokehJS = new Promise(function(resolve, reject) {
      const url = base();
      if (url === null) { reject(new Error(NOT_JUPYTER)); return; }
      const tag = document.createElement("script");
      tag.src = url.replace(/\\/?$/, "/") + ROUTE + "?v=" + VERSION;
      tag.onload = () => (root.Bokeh !== undefined ? resolve(root.Bokeh) : reject(new Error(NOT_LOADED + tag.src)));
      tag.onerror = () => reject(new Error(NOT_LOADED + tag.src + FIX));
      document.head.appendChild(tag);
    });
  }
  root.__nxBokehJS.then(embed, (error) => say(error.message));
})(window);
"""
_NOT_JUPYTER = ("BokehJS was not loaded: this page is not served by a Jupyter server, "
                "which charts take BokehJS from (MetricPlot.to_html() makes a standalone page).")
_NOT_LOADED = "BokehJS was not loaded from "
_FIX = (": is Panel's Jupyter server extension enabled? "
        "(jupyter server extension enable panel.io.jupyter_server_extension, then restart Jupyter)")


def _chart_script(embed: str, div_id: str) -> str:
    """Bokeh's embed script ``embed``, run once the page has BokehJS (loading it from the
    Jupyter server when no output did yet); the chart's note says why if it cannot be."""
    import json

    import bokeh

    values = {"DIV_ID": div_id, "NOTE_CLASS": NOTE_CLASS, "NOT_JUPYTER": _NOT_JUPYTER, "NOT_LOADED": _NOT_LOADED,
              "FIX": _FIX, "ROUTE": BOKEHJS_ROUTE, "VERSION": bokeh.__version__}
    code = re.sub(r"\b(" + "|".join(values) + r")\b", lambda m: json.dumps(values[m[1]]), _CHART_JS)
    return f'<script type="text/javascript">\n{code.replace("EMBED", embed, 1)}</script>'


class MetricPlot:
    """An interactive bokeh chart of one metric over runs (the bokeh figure is ``figure``).

    In a notebook it renders inline (no CDN, no iframe, no internet) and carries
    only its own data: BokehJS comes once per page from the Jupyter server that
    shows the notebook, which serves bokeh's own ``bokeh.min.js`` (Panel's server
    extension, enabled by panel's install). Saved notebooks stay light and draw
    when reopened, once trusted. Its plain text is ``<MetricPlot loss: 4 runs>``.
    ``to_html()`` gives a standalone fragment that carries BokehJS itself.
    """

    def __init__(self, figure: Any, key: str, runs: int) -> None:
        self.figure = figure
        self.key = key
        self.runs = runs

    def __repr__(self) -> str:
        return f"<MetricPlot {self.key}: {self.runs} run{'' if self.runs == 1 else 's'}>"

    def to_html(self, bokehjs: bool = True) -> str:
        """An HTML fragment: the figure's div and script. With ``bokehjs`` it carries
        BokehJS (compressed, about 470 kB) and draws on any page, offline; without it,
        it takes BokehJS from the page, loading it once from the Jupyter server."""
        from bokeh.embed import components

        script, div = components(self.figure, wrap_script=False)
        div_id = f"nx-plot-{self.figure.id}"
        loader = _bokehjs_inline() if bokehjs else ""
        note = f'<p class="{NOTE_CLASS}">{html.escape(NOTE)}</p>'
        return (f'<div class="nx-metric-plot">{loader}<div id="{div_id}">{note}{div}</div>'
                f"{_chart_script(script, div_id)}</div>")

    def _repr_html_(self) -> str:
        return self.to_html(bokehjs=False)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/html": self._repr_html_(), "text/plain": repr(self)}
