"""``QueueMonitor``: this kernel's queue (running, queued, finished), GPU bars with
their holders, and the store's most recent runs.

A monitor polls only while there is something to follow. Once this kernel's
queue has no queued or running job it draws the final state (GPUs at once,
recent runs as soon as the store shows this kernel's runs ended, at most
``DEFAULT_SETTLE_LIMIT`` later) and leaves the ticker. Displaying the same monitor
again (or ``resume()``) makes it poll again; a new ``%experiment_status``
makes a new one. Runs of other processes listed under "Recent runs" keep the
status they had at the last refresh.
"""

from __future__ import annotations

import time

import ipywidgets as w

from ..models import RunStatus
from ..store import queries
from ._html import badge, esc, table
from ._ticker import ticker

DEFAULT_GPU_POLL = 1.0  # seconds between GPU readings
DEFAULT_RECENT_POLL = 2.0  # seconds between reads of the recent runs while the queue is busy
DEFAULT_RECENT_SETTLE = 0.5  # once the queue is idle: how often to look for the runs' final rows
DEFAULT_SETTLE_LIMIT = 30.0  # ... and for how long at most
DEFAULT_RECENT_TIMEOUT = 0.2  # seconds a refresh waits for the store; if it is busy, the turn is skipped
DEFAULT_RECENT = 10  # recent runs listed (and finished jobs of this kernel)
DEFAULT_MAX_ROWS = 50  # active runs listed; the summary counts them all


class QueueMonitor(w.VBox):
    """Live view of a scheduler, refreshed by the ticker while its queue is busy
    (see the module docstring); ``close()`` stops it for good."""

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
        self._idle_since: float | None = None  # when the queue was last seen with nothing active
        self._recent_final = False  # the last recent-runs read showed this kernel's runs ended
        self.polling = False  # whether the ticker refreshes it
        self.resume()

    def __repr__(self) -> str:
        return "<QueueMonitor>"

    def _repr_mimebundle_(self, **kwargs):
        self.resume()  # shown again: follow the queue again
        return super()._repr_mimebundle_(**kwargs)

    def resume(self) -> None:
        """Poll again (e.g. after new jobs were submitted); a no-op once closed."""
        if self._closed or self.polling:
            return  # closed, or the ticker follows it already
        self._idle_since = None
        self.polling = self.tick()
        if self.polling:
            ticker.add(self)

    def close(self) -> None:
        self._closed = True
        self.polling = False
        super().close()

    def tick(self) -> bool:
        """Redraw what changed; returns False (leave the ticker) once nothing shown is active."""
        if self._closed:
            return False
        changed, active = self._refresh_jobs()
        now = time.monotonic()
        if active:
            self._idle_since = None
        elif self._idle_since is None:  # just went idle: draw the final state now
            self._idle_since, self._gpu_at, self._recent_at = now, 0.0, 0.0
        if now - self._gpu_at >= DEFAULT_GPU_POLL:
            self._gpu_at = now
            changed |= self._refresh_gpus()
        if now - self._recent_at >= (DEFAULT_RECENT_POLL if active else DEFAULT_RECENT_SETTLE):
            self._recent_at = now
            changed |= self._refresh_recent()
        if changed:
            self.updates += 1
        keep = active or not (self._recent_final or now - self._idle_since > DEFAULT_SETTLE_LIMIT)
        self.polling = keep
        return keep

    def _refresh_jobs(self) -> tuple[bool, bool]:
        """Redraw the queue; returns (changed, whether any job is queued or running)."""
        jobs = sorted(self.scheduler.jobs(), key=lambda j: j.submitted_at)
        positions = self.scheduler.positions()
        active = sorted((j for j in jobs if not j.done), key=lambda j: positions.get(j.run_id, -1))[:DEFAULT_MAX_ROWS]
        finished = [j for j in jobs if j.done][-DEFAULT_RECENT:]
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
        return changed, bool(active)

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
        """Redraw the store's most recent runs, waiting at most ``DEFAULT_RECENT_TIMEOUT``
        for the file: when another process holds it, this turn is skipped."""
        store = self.scheduler.store
        if not store.path.exists():
            self._recent_final = True
            return False
        try:
            recent = queries.read(lambda conn: queries.recent_runs(conn, DEFAULT_RECENT), store=store,
                                  timeout=DEFAULT_RECENT_TIMEOUT)
        except Exception:  # noqa: BLE001 - busy (StoreLocked) or unreadable: next turn
            self._recent_final = False
            return False
        own = {job.run_id for job in self.scheduler.jobs()}
        active = RunStatus.values(active=True)
        self._recent_final = not any(r in own and s in active for r, _n, _e, s, _t in recent)
        rows = [
            (esc(n), esc(e), badge(s), esc(t.strftime("%H:%M:%S") if t else ""))
            for _r, n, e, s, t in recent
        ]
        return _set(self.recent, "value", table(rows, ("name", "experiment", "status", "started (UTC)")))


def _set(widget, name: str, value) -> bool:
    if getattr(widget, name) != value:
        setattr(widget, name, value)
        return True
    return False
