"""Colours shared by the widgets, the inline table and chart, and the viewer."""

STATUS_COLORS = {
    "queued": "#7f7f7f",
    "running": "#1f77b4",
    "completed": "#2ca02c",
    "failed": "#d62728",
    "cancelled": "#ff7f0e",
}
PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
]
