"""The delivery worker: sends due deliveries concurrently and records each outcome.

A slow or failing sink never holds up another: each sink has its own in-flight limit. Retryable
failures come back with exponential backoff and jitter (or after the receiver's Retry-After) up to
``max_attempts``; permanent failures and exhausted retries end as ``dead`` with the last error.
``drain()`` runs until nothing is due at the clock's "now", so tests are fast and exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Mapping

from relay.clock import Clock
from relay.config import DeliveryConfig
from relay.errors import DeliveryError, PermanentError, StorageError, TemplateError
from relay.failures import classify_exception
from relay.outbox import Due, Outbox, Outcome
from relay.render import Renderer
from relay.sinks import Message, Sink

log = logging.getLogger("relay.worker")

DEFAULT_SINK_CONCURRENCY = 4
IDLE_POLL = 1.0  # seconds between looks at the outbox when nothing is known to be due


class Worker:
    def __init__(
        self,
        outbox: Outbox,
        sinks: Mapping[str, Sink],
        renderer: Renderer,
        delivery: DeliveryConfig,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self._outbox = outbox
        self._sinks = sinks
        self._renderer = renderer
        self._delivery = delivery
        self._clock = clock
        self._rng = rng or random.Random()
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._in_flight_per_sink: dict[str, int] = dict.fromkeys(sinks, 0)
        self._wakeup = asyncio.Event()

    def notify(self) -> None:
        """New deliveries were stored: look now rather than at the next poll."""
        self._wakeup.set()

    async def run(self) -> None:
        """Deliver forever (until cancelled)."""
        await self._report_orphans()
        try:
            while True:
                try:
                    await self._start_due()
                except StorageError as exc:
                    log.error("cannot read the outbox, trying again shortly: %s", exc)
                await self._sleep()
        finally:
            await self._cancel_in_flight()

    async def _report_orphans(self) -> None:
        orphans = await self._outbox.pending_outside(list(self._sinks))
        if orphans:
            total = sum(orphans.values())
            listed = ", ".join(f"{name} ({n})" for name, n in sorted(orphans.items()))
            log.warning(
                "%d pending deliver%s for sinks no longer configured: %s; they wait until the "
                "sink is configured again",
                total,
                "y" if total == 1 else "ies",
                listed,
            )

    async def drain(self) -> None:
        """Send everything due now, and what becomes due meanwhile, until nothing is left."""
        while True:
            await self._start_due()
            if not self._in_flight:
                return
            await asyncio.wait(list(self._in_flight.values()))

    async def _start_due(self) -> None:
        capacity = {
            name: DEFAULT_SINK_CONCURRENCY - self._in_flight_per_sink[name] for name in self._sinks
        }
        for due in await self._outbox.due(self._clock.now(), capacity, set(self._in_flight)):
            self._in_flight_per_sink[due.sink] += 1
            task = asyncio.create_task(self._deliver(due), name=f"deliver-{due.id}")
            self._in_flight[due.id] = task
            task.add_done_callback(functools.partial(self._done, due))

    def _done(self, due: Due, _task: asyncio.Task[None]) -> None:
        self._in_flight.pop(due.id, None)
        self._in_flight_per_sink[due.sink] -= 1
        self._wakeup.set()

    async def _sleep(self) -> None:
        delay = IDLE_POLL
        next_at = await self._outbox.next_due_at(list(self._sinks))
        if next_at is not None:
            delay = min(delay, max(next_at - self._clock.now(), 0.0))
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=max(delay, 0.005))

    async def _cancel_in_flight(self) -> None:
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _deliver(self, due: Due) -> None:
        try:
            await self._attempt(due)
        except StorageError as exc:
            # The delivery stays pending in the outbox and is sent again: at least once.
            log.error("could not record the outcome of delivery %s: %s", due.id, exc)

    async def _attempt(self, due: Due) -> None:
        started = time.perf_counter()
        try:
            await self._send(due)
        except DeliveryError as error:
            await self._failed(due, error, time.perf_counter() - started)
            return
        except Exception as exc:  # a sink bug must not kill the worker: record it and go on
            log.exception("sink %s raised unexpectedly on delivery %s", due.sink, due.id)
            await self._failed(due, classify_exception(exc), time.perf_counter() - started)
            return
        duration = time.perf_counter() - started
        await self._outbox.record(due.id, Outcome("delivered", duration), self._clock.now())
        log.info(
            "delivered event %s to %s (attempt %d, %.0f ms)",
            due.event.id,
            due.sink,
            due.attempts + 1,
            duration * 1000,
        )

    async def _send(self, due: Due) -> None:
        sink = self._sinks[due.sink]  # due() only looks at configured sinks
        try:
            parts = self._renderer.render(
                sink_name=sink.name,
                sink_type=sink.type,
                parts=sink.parts,
                template=sink.config.template,
                event=due.event,
            )
        except TemplateError as exc:
            raise PermanentError(str(exc), reason="template") from exc
        message = Message(due.event, sink.name, parts, due.id, due.attempts + 1)
        await asyncio.wait_for(sink.send(message), timeout=sink.timeout + 5)

    async def _failed(self, due: Due, error: DeliveryError, duration: float) -> None:
        attempt = due.attempts + 1
        now = self._clock.now()
        if error.retryable and attempt < self._delivery.max_attempts:
            delay = self.retry_delay(attempt, error.retry_after)
            outcome = Outcome(
                "retry", duration, error.reason, error.status, str(error), now + delay
            )
            log.warning(
                "event %s to %s failed (attempt %d/%d, %s): %s; next try in %.1f s",
                due.event.id,
                due.sink,
                attempt,
                self._delivery.max_attempts,
                error.reason,
                error,
                delay,
            )
        else:
            why = "gave up" if error.retryable else "permanent failure"
            text = f"{error} ({why} after {attempt} attempt{'s' if attempt > 1 else ''})"
            outcome = Outcome("dead", duration, error.reason, error.status, text)
            log.error("event %s to %s is dead: %s: %s", due.event.id, due.sink, error.reason, text)
        await self._outbox.record(due.id, outcome, now)

    def retry_delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds until the next attempt: what the receiver asked for, else backoff + jitter."""
        if retry_after is not None:
            return retry_after
        d = self._delivery
        base = min(d.max_backoff, d.initial_backoff * 2 ** (attempt - 1))
        return float(base * self._rng.uniform(0.5, 1.0))
