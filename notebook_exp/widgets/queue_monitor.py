"""``QueueMonitor``: this kernel's queue (running, queued, finished), GPU bars with
their holders, and the store's most recent runs."""

from __future__ import annotations

import time

import ipywidgets as w

from ._html import badge, esc, table
from ._ticker import ticker

GPU_POLL = 1.0
RECENT_POLL = 2.0
RECENT = 10
MAX_ROWS = 50  # active runs listed; the summary counts them all


class QueueMonitor(w.VBox):
    """Live view of a scheduler. Refreshed by the ticker; ``close()`` stops it."""

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler
        self.updates = 0
        self._rows: dict[str, w.HBox] = {}
        self._gpu_at = self._recent_at = 0.0
        self.summary = w.HTML()
        self.jobs_box = w.VBox()
        self.gpus_box = w.VBox()
        self.recent = w.HTML()
        super().__init__(
            [self.summary, self.jobs_box, w.HTML("<b>GPUs</b>"), self.gpus_box, w.HTML("<b>Recent runs</b>"),
             self.recent],
            layout=w.Layout(border="1px solid #ccc", padding="6px"),
        )
        self._closed = False
        self.tick()
        ticker.add(self)

    def __repr__(self) -> str:
        return "<QueueMonitor>"

    def close(self) -> None:
        self._closed = True
        super().close()

    def tick(self) -> bool:
        if self._closed:
            return False
        changed = self._refresh_jobs()
        now = time.monotonic()
        if now - self._gpu_at >= GPU_POLL:
            self._gpu_at = now
            changed |= self._refresh_gpus()
        if now - self._recent_at >= RECENT_POLL:
            self._recent_at = now
            changed |= self._refresh_recent()
        if changed:
            self.updates += 1
        return True

    def _refresh_jobs(self) -> bool:
        jobs = sorted(self.scheduler.jobs(), key=lambda j: j.submitted_at)
        positions = self.scheduler.positions()
        active = sorted((j for j in jobs if not j.done), key=lambda j: positions.get(j.run_id, -1))[:MAX_ROWS]
        finished = [j for j in jobs if j.done][-RECENT:]
        counts = {}
        for job in jobs:
            counts[job.status.value] = counts.get(job.status.value, 0) + 1
        summary = "<b>Queue</b>: " + (" · ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "empty")
        changed = _set(self.summary, "value", summary)
        wanted = [j.run_id for j in active + finished]
        for job in active + finished:
            row = self._rows.get(job.run_id)
            if row is None:
                row = self._rows[job.run_id] = self._row(job)
            changed |= _set(row.children[0], "value", self._row_html(job, positions.get(job.run_id)))
            if job.done and not row.children[1].disabled:
                row.children[1].disabled = True
                changed = True
        if list(self.jobs_box.children) != [self._rows[i] for i in wanted]:
            self.jobs_box.children = [self._rows[i] for i in wanted]
            for run_id in set(self._rows) - set(wanted):  # forget rows of runs no longer shown
                self._rows.pop(run_id).close()
            changed = True
        return changed

    def _row(self, job) -> w.HBox:
        button = w.Button(description="Cancel", layout=w.Layout(width="80px"), button_style="warning")
        button.on_click(lambda _b: job.cancel())
        return w.HBox([w.HTML(), button])

    def _row_html(self, job, position: int | None) -> str:
        where = f"#{position + 1} in queue" if position is not None else ""
        gpus = f"GPU {', '.join(map(str, job.gpus))}" if job.gpus else ""
        parts = [f"<b>{esc(job.name)}</b>", badge(job.status.value), f"priority {job.spec.priority}", where, gpus]
        return " ".join(p for p in parts if p)

    def _refresh_gpus(self) -> bool:
        try:
            infos = self.scheduler.leases.snapshot()
        except Exception as exc:  # noqa: BLE001 - NVML can fail at any time; say so
            self.gpus_box.children = [w.HTML(f"<small>GPUs unavailable: {esc(exc)}</small>")]
            return True
        if not infos:
            return _set(self.gpus_box, "children", (w.HTML("<small>no GPUs</small>"),)) if not self.gpus_box.children else False
        if len(self.gpus_box.children) != len(infos) or not isinstance(self.gpus_box.children[0], w.HBox):
            self.gpus_box.children = [
                w.HBox([w.HTML(layout=w.Layout(width="260px")),
                        w.FloatProgress(min=0, max=1, description="memory"),
                        w.FloatProgress(min=0, max=100, description="util")])
                for _ in infos
            ]
        changed = False
        for box, info in zip(self.gpus_box.children, infos):
            label, memory, util = box.children
            held = f" · held by {esc(info.holder)}" if info.holder else " · free"
            temp = f" · {info.temperature:.0f}°C" if info.temperature is not None else ""
            changed |= _set(label, "value", f"<small>{info.index}: {esc(info.name)}{temp}{held}</small>")
            changed |= _set(memory, "value", info.memory_used / info.memory_total if info.memory_total else 0.0)
            changed |= _set(util, "value", float(info.utilization or 0))
        return changed

    def _refresh_recent(self) -> bool:
        store = self.scheduler.store
        if not store.path.exists():
            return False
        try:
            frame = store.query_arrow(
                f"SELECT name, experiment, status, started_at FROM runs ORDER BY created_at DESC LIMIT {RECENT}"
            )
        except Exception:  # noqa: BLE001 - busy store: next time
            return False
        rows = [
            (esc(n), esc(e), badge(s), esc(t.strftime("%H:%M:%S") if t else ""))
            for n, e, s, t in zip(*(frame.column(i).to_pylist() for i in range(4)))
        ]
        return _set(self.recent, "value", table(rows, ("name", "experiment", "status", "started (UTC)")))


def _set(widget, name: str, value) -> bool:
    if getattr(widget, name) != value:
        setattr(widget, name, value)
        return True
    return False
