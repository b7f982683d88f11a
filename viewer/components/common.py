"""Helpers every view uses to show store data as text, never as HTML.

Run names, params, errors and outputs come from the store and may hold
anything, including markup. Panel's ``Str`` and ``Markdown`` panes hand their
text to the browser as HTML, Tabulator sets column titles with ``innerHTML``
and bokeh's MultiChoice renders option labels as HTML, so every such string
goes through ``html.escape`` here first.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from datetime import datetime

import numpy as np
import pandas as pd
import panel as pn

from notebook_exp._style import PALETTE, STATUS_COLORS

__all__ = [
    "PALETTE", "STATUS_COLORS", "choice_options", "color_for", "format_value", "heading", "kv_table",
    "message", "preferred_key", "status_formatter", "text_block", "title",
]


def preferred_key(keys: list[str]) -> str | None:
    """The metric to show first: a loss if there is one, else the first key."""
    for key in keys:
        if "loss" in key.lower():
            return key
    return keys[0] if keys else None


def status_formatter():
    """A Tabulator cell formatter for a ``status`` column: the status in bold, in its colour
    (``STATUS_COLORS``, the one scheme of the runs table, the Queue page and the header)."""
    from bokeh.models.widgets.tables import StringFormatter
    from bokeh.transform import factor_cmap

    statuses = list(STATUS_COLORS)
    colors = factor_cmap("status", [STATUS_COLORS[s] for s in statuses], statuses, nan_color="#333333")
    return StringFormatter(text_color=colors, font_style="bold")


def color_for(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def title(text: object) -> str:
    """A Tabulator column title (set as HTML by Tabulator): escaped text."""
    return html.escape(str(text))


def choice_options(values: Iterable[str]) -> dict[str, str]:
    """MultiChoice options ``{escaped label: value}`` (its labels render as HTML)."""
    return {html.escape(str(v)): v for v in values}


def format_value(value: object) -> str:
    """A short plain-text rendering of a stored value."""
    if value is None or value is pd.NaT or value is pd.NA:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(format_value(v) for v in value)
    if isinstance(value, np.generic):
        return format_value(value.item())
    return str(value)


def text_block(text: object, css_class: str = "nx-text", max_height: int = 400, **kw) -> pn.pane.HTML:
    """Preformatted, escaped text (tracebacks, captured output, source)."""
    body = html.escape(format_value(text)) if text is not None else ""
    return pn.pane.HTML(
        f'<pre class="{css_class}" style="white-space: pre-wrap; margin: 0; '
        f'max-height: {max_height}px; overflow: auto">{body}</pre>',
        sizing_mode="stretch_width",
        **kw,
    )


def kv_table(rows: Iterable[tuple[str, object]], css_class: str = "nx-kv") -> str:
    """An HTML table of escaped key/value pairs (for a pn.pane.HTML)."""
    cells = "".join(
        f"<tr><th style='text-align:left; padding-right:1em'>{html.escape(str(k))}</th>"
        f"<td>{html.escape(format_value(v))}</td></tr>"
        for k, v in rows
    )
    return f'<table class="{css_class}">{cells}</table>'


def heading(text: str) -> pn.pane.HTML:
    """A section heading (escaped)."""
    return pn.pane.HTML(f'<h3 style="margin: 12px 0 4px 0">{html.escape(text)}</h3>', sizing_mode="stretch_width")


def message(text: str, kind: str = "info") -> str:
    """An escaped one-line message as HTML (errors, hints)."""
    color = {"error": "#b00020", "info": "#555"}.get(kind, "#555")
    return f'<div class="nx-{kind}" style="color:{color}">{html.escape(text)}</div>'
