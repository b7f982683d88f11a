"""Small HTML pieces for the widgets; everything from users is escaped."""

from __future__ import annotations

import html
import math

from .._style import STATUS_COLORS


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def badge(status: str) -> str:
    colour = STATUS_COLORS.get(status, "#7f7f7f")
    return (f'<span style="background:{colour};color:white;border-radius:4px;padding:1px 6px;'
            f'font-size:90%">{esc(status)}</span>')


def number(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def sparkline(values: list[float], width: int = 160, height: int = 36) -> str:
    """An inline SVG polyline of ``values`` (finite ones)."""
    points = [v for v in values if v is not None and math.isfinite(v)]
    if len(points) < 2:
        return f'<svg width="{width}" height="{height}"></svg>'
    lo, hi = min(points), max(points)
    span = (hi - lo) or 1.0
    step = width / (len(points) - 1)
    coords = " ".join(f"{i * step:.1f},{height - 2 - (v - lo) / span * (height - 4):.1f}" for i, v in enumerate(points))
    return (f'<svg width="{width}" height="{height}"><polyline fill="none" stroke="#0d6efd" '
            f'stroke-width="1.5" points="{coords}"/></svg>')


def table(rows: list[tuple], header: tuple | None = None) -> str:
    head = "".join(f"<th style='text-align:left;padding:0 8px'>{esc(h)}</th>" for h in header) if header else ""
    body = "".join(
        "<tr>" + "".join(f"<td style='padding:0 8px'>{cell}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table style='font-size:90%'>{'<tr>' + head + '</tr>' if head else ''}{body}</table>"
