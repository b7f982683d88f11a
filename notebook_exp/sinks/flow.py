"""Flow control for remote-style sinks: a rate limiter and a circuit breaker.

Both belong to one sink worker (one sink of one run) and are only touched by its
thread; they decide, the worker waits (``sinks.dispatch``).

**Rate limit** (``rate`` calls per second, ``burst`` at once): GCRA, the generic
cell rate algorithm. Each call is due one emission interval ``1/rate`` after the
previous one's theoretical arrival time; up to ``burst - 1`` intervals of
earliness are tolerated. While a call waits, later batches pile up in the queue
and the worker merges them into the next call, so a slow rate means bigger
calls, not lost points.

**Circuit breaker** (``breaker_failures`` consecutive failures, ``breaker_cooldown``
seconds): closed, calls go through, and a failed call is retried with a short
backoff; after that many consecutive failures the breaker opens and the sink is
left alone for the cool-down, while its batches are held (up to its bound) in
the queue; then one call probes it (half-open): success closes the breaker, and
the held batches follow; failure opens it again, for twice the cool-down (at
most ``MAX_COOLDOWN``).
"""

from __future__ import annotations

import enum
import time

__all__ = ["MAX_COOLDOWN", "Breaker", "BreakerState", "RateLimiter"]

#: Longest cool-down of a breaker whose probes keep failing, seconds.
MAX_COOLDOWN = 300.0


class RateLimiter:
    """GCRA: ``delay()`` is how long the next call must wait; ``take()`` books it."""

    def __init__(self, rate: float, burst: int = 1, clock=time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.interval = 1.0 / rate
        self.tolerance = self.interval * (burst - 1)
        self._tat = 0.0  # theoretical arrival time of the next call
        self._clock = clock

    def delay(self) -> float:
        """Seconds until a call conforms (0: now)."""
        now = self._clock()
        return max(0.0, max(self._tat, now) - self.tolerance - now)

    def take(self) -> None:
        """Book one call made now."""
        self._tat = max(self._tat, self._clock()) + self.interval


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"

    def __str__(self) -> str:
        return self.value


class Breaker:
    """A circuit breaker's state; the worker calls :meth:`success` / :meth:`failure`
    after each call, and :meth:`probe` when the cool-down is over.

    ``on_change(state, detail)`` is called on every change of state."""

    def __init__(self, failures: int, cooldown: float, on_change=None, clock=time.monotonic) -> None:
        if failures < 1 or cooldown <= 0:
            raise ValueError("failures must be >= 1 and cooldown > 0")
        self.failures = failures
        self.base_cooldown = cooldown
        self.cooldown = cooldown
        self.state = BreakerState.CLOSED
        self.consecutive = 0
        self.opened_at: float | None = None
        self.opens = 0
        self._on_change = on_change
        self._clock = clock

    @property
    def reopen_at(self) -> float | None:
        """When an open breaker may probe (monotonic seconds)."""
        return None if self.opened_at is None else self.opened_at + self.cooldown

    def _set(self, state: BreakerState, detail: str) -> None:
        self.state = state
        if self._on_change is not None:
            self._on_change(state, detail)

    def success(self) -> None:
        self.consecutive = 0
        if self.state is not BreakerState.CLOSED:
            self.cooldown = self.base_cooldown
            self.opened_at = None
            self._set(BreakerState.CLOSED, "the probe succeeded")

    def failure(self, exc: BaseException) -> None:
        self.consecutive += 1
        if self.state is BreakerState.HALF_OPEN:
            self.cooldown = min(MAX_COOLDOWN, self.cooldown * 2)
            self.opened_at = self._clock()
            self._set(BreakerState.OPEN, f"the probe failed ({exc!r}); next probe in {self.cooldown:g} s")
        elif self.state is BreakerState.CLOSED and self.consecutive >= self.failures:
            self.opened_at = self._clock()
            self.opens += 1
            self._set(BreakerState.OPEN, f"{self.consecutive} consecutive failures, last {exc!r}; "
                                         f"probing in {self.cooldown:g} s")

    def probe(self) -> None:
        """The cool-down is over: the next call is a probe."""
        if self.state is BreakerState.OPEN:
            self._set(BreakerState.HALF_OPEN, "probing with one call")
