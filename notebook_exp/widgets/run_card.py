"""``RunCard``: one run, live: status, params, progress, last metrics, a sparkline,
its GPUs, a cancel button and its own output area."""

from __future__ import annotations

import collections
import time

import ipywidgets as w

from ..collectors import is_telemetry
from ..models import RunStatus
from ..store import queries
from ._html import badge, duration, esc, number, sparkline, table
from ._ticker import ticker

DEFAULT_STORE_POLL = 1.0  # seconds between store reads for runs in another process
DEFAULT_STORE_TIMEOUT = 0.2  # a busy store skips this turn rather than hold up the ticker
DEFAULT_FINAL_READ_FOR = 30.0  # seconds a card whose run ended keeps trying to read its final metrics


class RunCard(w.VBox):
    """A live card for a ``Job``. Refreshed by the ticker (at most 10 times a second)."""

    def __init__(self, job, metric: str | None = None, **kwargs) -> None:
        self.job = job
        self.metric = metric  # the sparkline's metric (default: "loss" if logged, else the first key)
        self.updates = 0  # refreshes that changed something (the throttle test reads it)
        self._pending: list[str] = []
        self._history: collections.deque = collections.deque(maxlen=120)
        self._last_step: int | None = None
        self._values: dict[str, tuple[int, float]] = {}
        self._polled = 0.0
        self._stale = False  # the last store read failed: the metrics shown may be old
        self.header = w.HTML()
        self.params = w.HTML(self._params_html())
        self.bar = w.IntProgress(min=0, max=1, layout=w.Layout(width="260px", visibility="hidden"))
        self.bar_label = w.Label()
        self.metrics = w.HTML()
        self.spark = w.HTML()
        self.cancel_button = w.Button(description="Cancel", button_style="warning", icon="stop",
                                      layout=w.Layout(width="110px"))
        self.cancel_button.on_click(lambda _b: self.job.cancel())
        self.output = w.Output(layout=w.Layout(max_height="220px", overflow="auto", border="1px solid #ddd"))
        super().__init__(
            [
                self.header, self.params, w.HBox([self.bar, self.bar_label]),
                w.HBox([self.metrics, self.spark]), self.cancel_button, self.output,
            ],
            layout=w.Layout(border="1px solid #ccc", padding="6px", margin="4px 0"),
            **kwargs,
        )
        job.subscribe(self._on_event)
        self.tick()
        ticker.add(self)

    def __repr__(self) -> str:  # stable text for nbval: no ids, times or statuses
        return f"<RunCard {self.job.name!r}>"

    def _params_html(self) -> str:
        params = self.job.params
        return "<small>" + " ".join(f"<b>{esc(k)}</b>={esc(v)}" for k, v in params.items()) + "</small>"

    def _on_event(self, job, event: str, data) -> None:
        if event == "output":
            self._pending.append(data)

    # -- refreshing -------------------------------------------------------------
    def tick(self) -> bool:
        """Redraw what changed; returns False once the run has ended and its final
        metrics were read (a busy store is retried for ``DEFAULT_FINAL_READ_FOR`` seconds)."""
        job = self.job
        done = job.done
        changed = self._set(self.header, "value", self._header_html())
        changed |= self._refresh_progress()
        changed |= self._refresh_metrics()
        if self._pending:
            text, self._pending = "".join(self._pending), []
            self.output.append_stdout(text)
            changed = True
        if done and not self.cancel_button.disabled:
            self.cancel_button.disabled = True
            self.cancel_button.layout.display = "none"
            changed = True
        if changed:
            self.updates += 1
        if done and self._stale and job.ended_at and time.time() - job.ended_at < DEFAULT_FINAL_READ_FOR:
            return True
        return not done

    @staticmethod
    def _set(widget, name: str, value) -> bool:
        if getattr(widget, name) != value:
            setattr(widget, name, value)
            return True
        return False

    def _header_html(self) -> str:
        job = self.job
        gpus = f" · GPU {', '.join(map(str, job.gpus))}" if job.gpus else ""
        if job.node:
            gpus += f" · on {esc(job.node)}"
        attempt = f" · attempt {job.attempts}" if job.attempts > 1 else ""
        took = ""
        if job.started_at:
            took = " · " + duration((job.ended_at or time.time()) - job.started_at)
        error = ""
        if job.waiting and job.status == RunStatus.QUEUED:
            error = f"<br><small style='color:#b8860b'>waiting: {esc(job.waiting)}</small>"
        if job.status in (RunStatus.FAILED, RunStatus.CANCELLED) and job.error:
            error = f"<br><small style='color:#dc3545'>{esc(job.error.strip().splitlines()[-1])}</small>"
        return (f"<b>{esc(job.name)}</b> {badge(job.status.value)} <small>{esc(job.experiment)}{gpus}"
                f"{attempt}{took}</small>{self._store_note()}{error}")

    def _store_note(self) -> str:
        """Why the run's records are not in the store yet, while that lasts."""
        if self.job.done:
            return ""
        store = self.job._scheduler.store
        outage = store.outage
        if outage is not None:
            return f"<br><small style='color:#dc3545'>store cannot be written: {esc(outage.reason)}</small>"
        holder = store.waiting_for
        if holder is not None:
            who = f"process {holder}" if holder else "another process"
            return f"<br><small style='color:#b8860b'>waiting for the store (held by {who})</small>"
        return ""

    def _refresh_progress(self) -> bool:
        state = self.job.progress
        if not state.active:
            return False
        changed = self._set(self.bar.layout, "visibility", "visible")
        if state.total:
            changed |= self._set(self.bar, "max", max(1, state.total))
            changed |= self._set(self.bar, "value", min(state.n, state.total))
        rate, eta = state.rate(), state.eta()
        label = f"{state.n}/{state.total}" if state.total else str(state.n)
        if rate:
            label += f" · {rate:.1f} it/s"
        if eta is not None and not self.job.done:
            label += f" · ETA {duration(eta)}"
        return changed | self._set(self.bar_label, "value", label)

    def _refresh_metrics(self) -> bool:
        values = {k: v for k, v in self._current_values().items() if not is_telemetry(k)}
        if not values:
            return False
        self._values = values
        key = self.metric or ("loss" if "loss" in values else sorted(values)[0])
        step, value = values.get(key, (None, None))
        if step is not None and step != self._last_step:
            self._last_step = step
            self._history.append(value)
        rows = [(esc(k), s, number(v)) for k, (s, v) in sorted(values.items())[:12]]
        changed = self._set(self.metrics, "value", table(rows, ("metric", "step", "last")))
        return changed | self._set(self.spark, "value", f"<small>{esc(key)}</small><br>{sparkline(list(self._history))}")

    def _current_values(self) -> dict[str, tuple[int, float]]:
        job = self.job
        if job.run is not None:
            return job.run.last_values()
        now = time.monotonic()
        if job.status == RunStatus.QUEUED or (now - self._polled < DEFAULT_STORE_POLL and (not job.done or self._stale)):
            return self._values
        self._polled = now
        try:
            values = queries.read(lambda conn: queries.last_values(conn, job.run_id), store=job._scheduler.store,
                                  timeout=DEFAULT_STORE_TIMEOUT)
        except Exception:  # noqa: BLE001 - the store may be busy; try again next time
            self._stale = True
            return self._values
        self._stale = False
        return values


class SweepView(w.VBox):
    """The cards of several runs submitted together."""

    def __init__(self, jobs: list, title: str = "") -> None:
        self.jobs = list(jobs)
        self.cards = [RunCard(job) for job in self.jobs]
        self.title = title or (self.jobs[0].experiment if self.jobs else "")
        heading = w.HTML(f"<b>{esc(self.title)}</b>: {len(self.jobs)} runs")
        super().__init__([heading, *self.cards])

    def __repr__(self) -> str:
        return f"<SweepView {self.title!r}: {len(self.jobs)} runs>"
