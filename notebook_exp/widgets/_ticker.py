"""The one thread that refreshes live widgets, at most ``RATE`` times a second each.

Widgets never push on every event: events only mark them dirty, and the ticker
redraws what changed. A run logging 100k points/s costs the frontend at most
``RATE`` messages per widget per second.
"""

from __future__ import annotations

import logging
import threading

from .._threads import Ticking

log = logging.getLogger("notebook_exp.widgets")

RATE = 10  # refreshes per second per widget, at most


class Ticker(Ticking):
    """Owner of the refresh thread; widgets ``add`` themselves and leave when ``tick()`` returns False."""

    thread_name = "notebook_exp-widgets"
    shutdown_order = 30  # after runs ended: their cards show the final state first

    def __init__(self, rate: float = RATE) -> None:
        super().__init__(1.0 / rate)
        self._widgets: list = []
        self._lock = threading.Lock()
        self._stepping = threading.Lock()  # one step at a time: the thread's or flush()'s

    def __contains__(self, widget) -> bool:
        """Whether ``widget`` is still refreshed (it leaves once its ``tick()`` returned False)."""
        with self._lock:
            return widget in self._widgets

    def add(self, widget) -> None:
        with self._lock:
            if widget not in self._widgets:
                self._widgets.append(widget)
        self.ensure_started()

    def step(self) -> None:
        with self._stepping:
            self._step()

    def flush(self) -> None:
        """Redraw every live widget now, in the calling thread. A cell that waited for
        runs calls it before it returns, so the cards' final state goes out with that
        cell: Jupyter clients (nbclient, so a saved notebook) drop the messages a
        thread sends between cells."""
        self.step()

    def _step(self) -> None:
        with self._lock:
            widgets = list(self._widgets)
        for widget in widgets:
            try:
                keep = widget.tick()
            except Exception:  # noqa: BLE001 - one broken widget must not stop the others
                log.exception("refreshing %r failed", widget)
                keep = False
            if not keep:
                with self._lock:
                    if widget in self._widgets:
                        self._widgets.remove(widget)


ticker = Ticker()
