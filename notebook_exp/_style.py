"""Colours shared by the widgets, the inline table and chart, and the viewer."""

from .models import RunStatus

STATUS_COLORS = {
    RunStatus.QUEUED.value: "#7f7f7f",
    RunStatus.RUNNING.value: "#1f77b4",
    RunStatus.COMPLETED.value: "#2ca02c",
    RunStatus.FAILED.value: "#d62728",
    RunStatus.CANCELLED.value: "#ff7f0e",
}
PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
]
