"""``Inbox``: the Ray actor that carries what Ray workers record to the driver.

One per Ray session of a driver process (``executors.ray`` makes it, with no CPU
reserved, on the driver's node when it can; it dies with the driver). A worker
puts lists of messages for its attempt (``key``: the run id and the attempt
number, so a retry never mixes with what its killed predecessor still sends)
into its executor's *box*; the executor's pump takes everything in the box at
once, waiting up to ``wait`` seconds while it is empty. It is an async actor:
every method runs on one event loop, without locks. Ray may start two calls of
one caller out of order on such an actor (measured), so a worker has one put on
its way at a time: a worker's lists land in the order it sent them.

Measured here (2 shared cores, ``benchmarks/bench_ray.py``): one message per
point, each waiting for the one before, moves about 200 points/s through it;
lists of 5,000 points about 390k points/s (two workers with two calls in flight
each: 50,000-point lists 2.4M points/s). So workers send what their run
buffered, never a point at a time.

``put`` answers with the highest ``sync`` token the driver acknowledged for the
attempt and the bytes waiting in the box, so a worker holds back while the
driver falls behind; ``wait_ack`` is what ``run.flush()`` on the worker waits on.
The other way, ``stop`` is how the driver cancels or times out a running attempt:
the worker's stop watcher waits on ``wait_stop``. This module imports nothing: the actor's process stays light.
"""

from __future__ import annotations

import asyncio

__all__ = ["Inbox"]

FORGOTTEN_MAX = 100_000  # ended attempts remembered (their late messages are dropped)


class Inbox:
    """Boxes of ``(run_id, messages)`` (see the module docstring)."""

    def __init__(self) -> None:
        self._boxes: dict[str, list] = {}
        self._bytes: dict[str, int] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._acks: dict[str, int] = {}
        self._ack_events: dict[str, asyncio.Event] = {}
        self._stops: dict[str, str] = {}
        self._stop_events: dict[str, asyncio.Event] = {}
        self._forgotten: dict[str, None] = {}  # ordered: the oldest go first past FORGOTTEN_MAX

    def _event(self, box: str) -> asyncio.Event:
        event = self._events.get(box)
        if event is None:
            event = self._events[box] = asyncio.Event()
        return event

    async def put(self, box: str, key: str, messages: list, nbytes: int = 0) -> tuple[int, int]:
        """Queue ``messages`` of attempt ``key``; returns ``(acknowledged sync token, bytes waiting)``."""
        if messages and key not in self._forgotten:
            self._boxes.setdefault(box, []).append((key, messages))
            self._bytes[box] = self._bytes.get(box, 0) + nbytes
            self._event(box).set()
        return self._acks.get(key, 0), self._bytes.get(box, 0)

    async def take(self, box: str, wait: float) -> list:
        """Everything in ``box``, in arrival order; waits up to ``wait`` s while it is empty."""
        event = self._event(box)
        if not self._boxes.get(box):
            try:
                await asyncio.wait_for(event.wait(), wait)
            except asyncio.TimeoutError:
                pass
        event.clear()
        self._bytes[box] = 0
        return self._boxes.pop(box, [])

    async def ack(self, key: str, token: int) -> None:
        """The driver has stored everything attempt ``key`` sent up to its ``sync`` ``token``."""
        self._acks[key] = max(token, self._acks.get(key, 0))
        event = self._ack_events.pop(key, None)
        if event is not None:
            event.set()

    async def wait_ack(self, key: str, token: int, wait: float) -> bool:
        """Whether the driver acknowledged ``token`` of attempt ``key`` within ``wait`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self._acks.get(key, 0) < token:
            left = deadline - loop.time()
            if left <= 0 or key in self._forgotten:
                return False
            event = self._ack_events.setdefault(key, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), left)
            except asyncio.TimeoutError:
                break
        return self._acks.get(key, 0) >= token

    async def stop(self, key: str, reason: str) -> None:
        """The driver asks attempt ``key`` to stop (``"cancel"`` or ``"timeout"``)."""
        self._stops.setdefault(key, reason)
        self._stop_event(key).set()

    async def wait_stop(self, key: str, wait: float) -> str | None:
        """The reason attempt ``key`` was asked to stop, as soon as it is; None after ``wait`` s."""
        if key not in self._stops:
            try:
                await asyncio.wait_for(self._stop_event(key).wait(), wait)
            except asyncio.TimeoutError:
                pass
        return self._stops.get(key)

    async def release(self, key: str) -> None:
        """Wake attempt ``key``'s stop watcher without a stop: its run ended."""
        self._stop_event(key).set()

    def _stop_event(self, key: str) -> asyncio.Event:
        event = self._stop_events.get(key)
        if event is None:
            event = self._stop_events[key] = asyncio.Event()
        return event

    async def forget(self, box: str, key: str) -> None:
        """Attempt ``key`` is over: drop what it still sends (a killed worker's last words)."""
        self._acks.pop(key, None)
        self._stops.pop(key, None)
        for events in (self._ack_events, self._stop_events):
            event = events.pop(key, None)
            if event is not None:
                event.set()
        self._forgotten[key] = None
        while len(self._forgotten) > FORGOTTEN_MAX:
            del self._forgotten[next(iter(self._forgotten))]
        if box in self._boxes:
            self._boxes[box] = [item for item in self._boxes[box] if item[0] != key]

    async def close(self, box: str) -> None:
        """The executor of ``box`` is closed."""
        self._boxes.pop(box, None)
        self._bytes.pop(box, None)
        self._events.pop(box, None)

    async def ping(self) -> bool:
        return True
