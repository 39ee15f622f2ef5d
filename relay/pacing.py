"""Per-sink pacing: how many sends may be in flight, how fast, and whether the sink is paused.

Each sink gets a :class:`SinkGate`: an in-flight limit (``concurrency``), a token bucket
(``rate`` messages per second, one second of burst) and a circuit breaker that pauses a sink
after consecutive retryable failures, with growing pauses, instead of hammering it. Everything
reads the injected clock, so "not yet allowed" is just "not yet due" to the worker.
"""

from __future__ import annotations

import logging
import math

from relay.clock import Clock

log = logging.getLogger("relay.pacing")

BREAKER_THRESHOLD = 5  # consecutive retryable failures that open the breaker
BREAKER_FIRST_PAUSE = 30.0  # seconds; doubles on each failed probe


class SinkGate:
    def __init__(
        self,
        name: str,
        clock: Clock,
        concurrency: int,
        rate: float | None,
        max_pause: float,
    ) -> None:
        self.name = name
        self._clock = clock
        self._concurrency = concurrency
        self._rate = rate if rate else None
        self._capacity = max(1.0, rate or 1.0)
        self._tokens = self._capacity
        self._refilled_at = clock.now()
        self._max_pause = max_pause
        self.in_flight = 0
        self._failures = 0
        self._pause = 0.0
        self.paused_until: float | None = None

    # -- how many may start now ----------------------------------------------------------------

    def room(self) -> int:
        """How many deliveries may start now."""
        now = self._clock.now()
        if self.paused_until is not None:
            if now < self.paused_until:
                return 0
            # Half-open: one probe at a time until an answer closes the breaker; the rate holds.
            room = 1 - self.in_flight
        else:
            room = self._concurrency - self.in_flight
        if self._rate is not None:
            self._refill(now)
            room = min(room, math.floor(self._tokens))
        return max(room, 0)

    def next_allowed_at(self) -> float | None:
        """When the gate opens again, if it is closed for time reasons (pause or rate)."""
        now = self._clock.now()
        if self.paused_until is not None and now < self.paused_until:
            return self.paused_until
        if self._rate is not None:
            self._refill(now)
            if self._tokens < 1:
                return now + (1 - self._tokens) / self._rate
        return None

    def started(self) -> None:
        self.in_flight += 1
        if self._rate is not None:
            self._tokens -= 1

    def _refill(self, now: float) -> None:
        assert self._rate is not None
        elapsed = max(now - self._refilled_at, 0.0)
        self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)
        self._refilled_at = now

    # -- outcomes ------------------------------------------------------------------------------

    def finished(self, *, ok: bool, retryable_failure: bool) -> None:
        """Record an attempt's outcome: retryable failures may open the breaker; anything else
        (a success, or a permanent failure such as a refused payload) means the sink answered,
        which closes it."""
        self.in_flight -= 1
        if retryable_failure:
            self._failed()
        else:
            self._succeeded()

    def abandoned(self) -> None:
        """A send cancelled before it had an outcome (shutdown): its slot is free, nothing else."""
        self.in_flight -= 1

    def _succeeded(self) -> None:
        if self.paused_until is not None:
            log.warning("sink %s recovered; resuming deliveries", self.name)
        self._failures, self._pause, self.paused_until = 0, 0.0, None

    def _failed(self) -> None:
        self._failures += 1
        probing = self.paused_until is not None
        if not probing and self._failures < BREAKER_THRESHOLD:
            return
        self._pause = min(self._max_pause, self._pause * 2 if probing else BREAKER_FIRST_PAUSE)
        self.paused_until = self._clock.now() + self._pause
        if not probing:
            log.warning(
                "sink %s failed %d times in a row; pausing it, first for %.0f s, then longer "
                "while it keeps failing",
                self.name,
                self._failures,
                self._pause,
            )
