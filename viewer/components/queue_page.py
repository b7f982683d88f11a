"""The Queue page: every queued and running run of the machine, and its GPUs.

It shows what every scheduler using this store has queued or running (not only
this process's), read with ``notebook_exp.scheduler.machine.queue``: the store's
queue rows and the machine-wide GPU lease files. Per run: status, name, owner
(notebook or script, pid and host), priority, position in its owner's queue,
``after=`` dependencies, attempts, GPUs asked for, pinned and held, and how long
it has waited or run. Per GPU: utilisation and memory (NVML, or virtual GPUs),
its holders, and whether it is reserved.

The page refreshes itself while it is shown (the app's periodic callback),
replacing the table's rows and the GPU cards in place, without a reload.

**Control.** With the viewer started with ``--allow-control`` (``serve(...,
allow_control=True)``) a run's row can be cancelled, and a queued run's
priority raised or lowered. The request goes to the run's owner through the
store (``scheduler.control``) as from any other process, and the event it leaves
names who asked: the viewer's logged-in user (or ``viewer``) and its host and
pid. Without ``--allow-control`` the page has no control at all: no buttons,
and no callback that could act.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import panel as pn

from .common import STATUS_COLORS, format_value, message, status_formatter, title

__all__ = ["QueuePage", "gpu_cards", "queue_frame"]

READ_KEY = "queue"
COLUMNS = {
    "status": "status", "name": "name", "run_id": "run id", "owner": "owner", "priority": "priority",
    "position": "position", "after": "after", "attempts": "attempts", "gpus": "GPUs", "held": "held",
    "time": "for", "pending": "requests",
}
CONTROL_COLUMNS = {"cancel": "", "raise": "", "lower": ""}
CONTROL_LABELS = {"cancel": "cancel", "raise": "priority +1", "lower": "priority -1"}
CONTROL_CSS = """
.tabulator-cell[tabulator-field="cancel"]:not(:empty) { color: white; background: #d62728; cursor: pointer;
  border-radius: 3px; text-align: center; }
.tabulator-cell[tabulator-field="raise"]:not(:empty), .tabulator-cell[tabulator-field="lower"]:not(:empty) {
  color: #1f77b4; cursor: pointer; text-decoration: underline; }
"""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def queue_frame(entries, control: bool = False) -> pd.DataFrame:
    """The table shown: one row per queued or running run, every cell plain text."""
    rows = []
    for e in entries:
        pinned = f" on {','.join(map(str, e.gpu_ids))}" if e.gpu_ids is not None else ""
        clock = e.running if e.status.value == "running" else e.waiting
        rows.append({
            "status": e.status.value, "name": format_value(e.name), "run_id": e.run_id,
            "owner": format_value(str(e.owner)), "priority": e.priority,
            "position": "" if e.position is None else str(e.position),
            "after": ", ".join(e.after), "attempts": f"{e.attempts}/{e.retries + 1}" if e.retries else str(e.attempts),
            "gpus": (f"{e.gpus:g}" if e.gpus else "") + pinned,
            "held": ", ".join(map(str, e.gpus_held)),
            "time": ("running " if e.status.value == "running" else "waiting ") + _duration(clock)
            if clock is not None else "",
            "pending": ", ".join(e.pending),
        })
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    if control:
        for column, label in CONTROL_LABELS.items():
            frame[column] = label
        queued = frame["status"] == "queued"
        frame.loc[~queued, ["raise", "lower"]] = ""
    return frame


def gpu_cards(gpus) -> str:
    """The GPU panel: one card per GPU (HTML, every value escaped)."""
    if not gpus:
        return message("No GPUs on this machine (NOTEBOOK_EXP_FAKE_GPUS=N declares virtual ones).")
    cards = []
    for gpu in gpus:
        used = "" if gpu.memory_used is None else f"{gpu.memory_used / 2**30:.1f} / "
        util = "" if gpu.utilization is None else f"{gpu.utilization:.0f}% busy · "
        holders = "".join(
            f'<div class="nx-gpu-holder">{html.escape(h.name or h.run_id or "(changing hands)")} '
            f'<span style="color:#666">{h.fraction:g} · pid {h.pid}</span></div>'
            for h in gpu.holders) or '<div style="color:#666">free</div>'
        border = "#999" if gpu.reserved else STATUS_COLORS["running"] if gpu.holders else "#ccc"
        reserved = ' <span class="nx-gpu-reserved" style="color:#b00">reserved</span>' if gpu.reserved else ""
        cards.append(
            f'<div class="nx-gpu" data-index="{gpu.index}" style="border:2px solid {border};border-radius:6px;'
            f'padding:6px 10px;margin:4px;min-width:190px;display:inline-block;vertical-align:top">'
            f'<b>GPU {gpu.index}</b>{reserved}<div style="color:#444">{html.escape(gpu.name)}</div>'
            f'<div>{util}{used}{gpu.memory_total / 2**30:.1f} GiB</div>{holders}</div>')
    return "".join(cards)


class QueuePage:
    """The machine's queue and GPUs, live while shown; ``control`` (a callable
    ``(run_id, action, value)`` returning a message) adds the control buttons."""

    def __init__(self, state, control: Callable[[str, str, int | None], str] | None = None) -> None:
        self.state = state
        self.control = control
        self.entries: list = []
        self.note = pn.pane.HTML(message("Nothing queued or running on this machine."), css_classes=["nx-queue-note"])
        self.answer = pn.pane.HTML("", css_classes=["nx-control-answer"])
        columns = {**COLUMNS, **(CONTROL_COLUMNS if control else {})}
        formatters = {c: {"type": "plaintext"} for c in COLUMNS} | {"status": status_formatter()}
        self.table = pn.widgets.Tabulator(
            queue_frame([], control=control is not None), show_index=False, disabled=True, selectable=False,
            sizing_mode="stretch_width", layout="fit_data_table", titles={c: title(t) for c, t in columns.items()},
            css_classes=["nx-queue"], formatters=formatters, stylesheets=[CONTROL_CSS] if control else [],
        )
        if control is not None:
            self.table.on_click(self._on_click)
        self.gpus = pn.pane.HTML("", css_classes=["nx-gpus"], sizing_mode="stretch_width")

    def panel(self) -> pn.viewable.Viewable:
        parts = [self.note, self.table]
        if self.control is not None:
            parts.append(self.answer)
        return pn.Column(*parts, pn.pane.HTML("<h3>GPUs</h3>"), self.gpus, sizing_mode="stretch_width")

    def update(self, periodic: bool = False) -> None:
        """Read the machine's queue again (shown when the read arrives)."""
        path = self.state.store_path
        self.state.reads.submit(READ_KEY, lambda: read_queue(path), self._on_data, periodic=periodic)

    def _on_data(self, machine) -> None:
        self.entries = list(machine.runs)
        running, queued = len(machine.running), len(machine.queued)
        self.note.object = message(f"{running} running, {queued} queued, on this machine (every process)."
                                   if self.entries else "Nothing queued or running on this machine.")
        self.table.value = queue_frame(self.entries, control=self.control is not None)
        self.gpus.object = gpu_cards(machine.gpus)

    def refresh(self) -> None:
        self.update(periodic=True)

    def _on_click(self, event) -> None:
        if event.row is None or event.row >= len(self.entries) or event.column not in CONTROL_COLUMNS:
            return
        entry = self.entries[event.row]
        if event.column != "cancel" and entry.status.value != "queued":
            return
        action, value = ("cancel", None) if event.column == "cancel" else (
            "priority", entry.priority + (1 if event.column == "raise" else -1))
        control = self.control

        def ask():
            return control(entry.run_id, action, value)

        def show(text: str) -> None:
            self.answer.object = message(text)
            self.update()

        self.state.reads.submit(f"control-{entry.run_id}", ask, show,
                                fail=lambda exc: setattr(self.answer, "object", message(str(exc), "error")))


def read_queue(store_path: Path):
    """The machine's queue for the store at ``store_path`` (``scheduler.machine.queue``)."""
    from notebook_exp.config import get_settings
    from notebook_exp.scheduler.machine import queue

    settings = get_settings().model_copy(update={"store": Path(store_path)})
    return queue(settings)
