"""The one thread that refreshes live widgets, at most ``RATE`` times a second each.

Widgets never push on every event: events only mark them dirty, and the ticker
redraws what changed. A run logging 100k points/s costs the frontend at most
``RATE`` messages per widget per second.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("notebook_exp.widgets")

RATE = 10  # refreshes per second per widget, at most


class Ticker:
    """Owner of the refresh thread; widgets ``add`` themselves and leave by returning False."""

    def __init__(self, rate: float = RATE) -> None:
        self.interval = 1.0 / rate
        self._widgets: list = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, widget) -> None:
        with self._lock:
            if widget not in self._widgets:
                self._widgets.append(widget)
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name="notebook_exp-widgets", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
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

    def stop(self) -> None:
        """Stop refreshing (idempotent)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._thread = None


ticker = Ticker()
