"""``Ticking``: a daemon thread that calls ``step()`` every ``interval`` seconds
(or sooner when ``wake()`` is called), started on first use and stopped by
``stop()`` (idempotent). Its owner is the object itself, which registers its
``stop`` as a shutdown step (``_exit``) when it first starts, so the thread stops
at exit and whenever a test fixture runs the shutdown steps."""

from __future__ import annotations

import threading


class Ticking:
    """Base for the package's periodic background threads."""

    thread_name = "notebook_exp-ticking"
    #: When ``stop`` runs among the shutdown steps (see ``_exit``).
    shutdown_order = 40

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def ensure_started(self) -> None:
        from . import _exit

        _exit.on_shutdown(self.stop, self.shutdown_order, name=f"{self.thread_name}@{id(self):x}")
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.step()

    def step(self) -> None:
        raise NotImplementedError

    def wake(self) -> None:
        """Step now rather than at the end of the current interval."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread and wait for it, at most ``timeout`` seconds (idempotent;
        safe from the thread itself)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if thread is None or not thread.is_alive():
            self._thread = None  # else still stuck: ensure_started revives it rather than start a second
