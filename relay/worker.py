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
from collections import deque
from collections.abc import Mapping
from typing import Any

from relay.clock import Clock
from relay.config import DeliveryConfig
from relay.errors import DeliveryError, PermanentError, StorageError, TemplateError
from relay.failures import classify_exception
from relay.metrics import Metrics
from relay.outbox import Due, Outbox, Outcome
from relay.pacing import SinkGate
from relay.render import Renderer
from relay.sinks import Message, Sink

log = logging.getLogger("relay.worker")

IDLE_POLL = 1.0  # seconds between looks at the outbox (picks up `relay outbox retry`)
# Seconds between retention sweeps: often enough that a short retention is kept to within a
# minute or so, never more than every ten minutes for a long one.
MIN_CLEANUP_EVERY, MAX_CLEANUP_EVERY = 10.0, 600.0
# Due deliveries are claimed from the outbox in batches of up to this many per sink (fewer for a
# sink with a rate), kept in memory and started as the sink has room: one query per batch
# rather than one per send. A batch older than CLAIM_TTL is read again, so what `relay outbox`
# changed meanwhile is seen within a second.
MAX_CLAIM, CLAIM_PER_SLOT, CLAIM_TTL = 128, 8, 1.0
# A delivery whose outcome could not be recorded is not sent again for this long: the outbox
# still says pending, and without a hold the worker would resend it in a tight loop.
UNRECORDED_HOLD = 30.0


class Worker:
    def __init__(
        self,
        outbox: Outbox,
        sinks: Mapping[str, Sink],
        renderer: Renderer,
        delivery: DeliveryConfig,
        clock: Clock,
        rng: random.Random | None = None,
        retention: float | None = None,
        metrics: Metrics | None = None,
        dedup_window: float = 0.0,
    ) -> None:
        self._outbox = outbox
        self._sinks = sinks
        self._renderer = renderer
        self._delivery = delivery
        self._clock = clock
        self._rng = rng or random.Random()
        self._retention = retention
        self._metrics = metrics or Metrics()
        self.dedup_window = dedup_window  # purged events stay as tombstones this long, for dedup
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._held: dict[int, float] = {}  # delivery id -> not claimed before (outcome unrecorded)
        self._claimed: dict[str, deque[Due]] = {}  # due now, not started yet, per sink
        self._claimed_at: dict[str, float] = {}
        # Per sink with nothing due now: when its next delivery is due (or the next idle poll).
        # Forgotten when new deliveries are stored or a retry is scheduled sooner.
        self._quiet_until: dict[str, float] = {}
        self._gates = {name: self._gate(sink, delivery) for name, sink in sinks.items()}
        self._metrics.sinks_configured(sinks)
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._next_cleanup = 0.0

    def _gate(self, sink: Sink, delivery: DeliveryConfig) -> SinkGate:
        c = sink.config
        return SinkGate(sink.name, self._clock, c.concurrency, c.rate, delivery.max_backoff)

    @property
    def sinks(self) -> Mapping[str, Sink]:
        return self._sinks

    @property
    def gates(self) -> Mapping[str, SinkGate]:
        return self._gates

    def reconfigure(
        self,
        sinks: Mapping[str, Sink],
        renderer: Renderer,
        delivery: DeliveryConfig,
        retention: float | None,
    ) -> Mapping[str, Sink]:
        """Deliver with these from now on; returns the sinks replaced (the caller closes them).

        Sends in flight finish on the sink and gate they started with. A sink whose config is
        unchanged keeps its gate, so its breaker and rate carry over.
        """
        old_sinks, old_gates = self._sinks, self._gates
        same_backoff = delivery.max_backoff == self._delivery.max_backoff
        self._gates = {
            name: old_gates[name]
            if same_backoff and _same_config(old_sinks.get(name), sink)
            else self._gate(sink, delivery)
            for name, sink in sinks.items()
        }
        self._sinks, self._renderer, self._delivery = sinks, renderer, delivery
        self._retention = retention
        self._claimed.clear()  # claimed for the old sinks: read again for the new ones
        self._quiet_until.clear()
        self._next_cleanup = 0.0  # a new retention applies at once
        self._metrics.sinks_configured(sinks)
        self._wakeup.set()
        return old_sinks

    async def settle(self) -> None:
        """Wait for the sends in flight now to finish (not for those started meanwhile)."""
        tasks = list(self._in_flight.values())
        if tasks:
            await asyncio.wait(tasks)

    def notify(self) -> None:
        """New deliveries were stored: look now rather than at the next poll."""
        self._quiet_until.clear()
        self._wakeup.set()

    async def run(self) -> None:
        """Deliver until stopped or cancelled."""
        await self.report_orphans()
        try:
            while not self._stopping:
                try:
                    await self._cleanup_when_due()
                    await self._start_due()
                    await self._sleep()
                except StorageError as exc:
                    log.error("cannot read the outbox, trying again shortly: %s", exc)
                    await asyncio.sleep(IDLE_POLL)
        except asyncio.CancelledError:
            await self._cancel_in_flight()
            raise
        # Stopped: stop() decides how long sends in flight may take.

    async def stop(self, deadline: float) -> None:
        """Start nothing new; give in-flight sends ``deadline`` seconds, then cancel them.

        A cancelled send stays pending in the outbox and is sent again after a restart.
        """
        self._stopping = True
        self._wakeup.set()
        tasks = list(self._in_flight.values())
        if tasks:
            log.info("waiting up to %.0f s for %d send(s) in flight", deadline, len(tasks))
            _, late = await asyncio.wait(tasks, timeout=deadline)
            if late:
                log.warning("%d send(s) did not finish in time; they stay pending", len(late))
        await self._cancel_in_flight()

    def _cleanup_every(self) -> float:
        return min(MAX_CLEANUP_EVERY, max(MIN_CLEANUP_EVERY, (self._retention or 0) / 10))

    async def cleanup(self) -> int:
        """Purge events delivered everywhere longer ago than the retention; dead ones stay.

        Inside the dedup window a purged event leaves a tombstone, so a replay is still refused.
        """
        if not self._retention:
            return 0
        now = self._clock.now()
        removed = await self._outbox.purge(
            now - self._retention, only_delivered=True, remember_since=now - self.dedup_window
        )
        if removed:
            log.info("retention: purged %d delivered event(s)", removed)
        return removed

    async def _cleanup_when_due(self) -> None:
        if self._clock.now() >= self._next_cleanup:
            await self.cleanup()
            self._next_cleanup = self._clock.now() + self._cleanup_every()

    async def report_orphans(self) -> None:
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
        if self._stopping:
            return
        await self._claim()
        for name, claimed in self._claimed.items():
            sink, gate = self._sinks.get(name), self._gates.get(name)
            if sink is None or gate is None:
                claimed.clear()  # removed by a reload while we were reading the outbox
                continue
            while claimed and gate.room() > 0:
                due = claimed.popleft()
                gate.started()
                task = asyncio.create_task(self._deliver(due, sink, gate), name=f"deliver-{due.id}")
                self._in_flight[due.id] = task
                task.add_done_callback(functools.partial(self._done, due))

    async def _claim(self) -> None:
        """Read a batch of due deliveries for each sink with room and nothing claimed left."""
        now = self._clock.now()
        wanted = {}
        for name, gate in self._gates.items():
            claimed = self._claimed.get(name)
            if claimed and now - self._claimed_at[name] > CLAIM_TTL:
                claimed.clear()
            if not claimed and gate.room() > 0 and now >= self._quiet_until.get(name, now):
                wanted[name] = _claim_size(self._sinks[name])
        if not wanted:
            return
        self._held = {i: until for i, until in self._held.items() if until > now}
        for due in await self._outbox.due(now, wanted, set(self._in_flight) | set(self._held)):
            self._claimed.setdefault(due.sink, deque()).append(due)
        for name in wanted:
            self._claimed_at[name] = now

    def _done(self, due: Due, _task: asyncio.Task[None]) -> None:
        self._in_flight.pop(due.id, None)
        self._wakeup.set()

    async def _sleep(self) -> None:
        delay = IDLE_POLL
        now = self._clock.now()
        unknown = []
        for name, gate in self._gates.items():
            if self._claimed.get(name):
                if (allowed_at := gate.next_allowed_at()) is not None:
                    delay = min(delay, allowed_at - now)
                # else: claimed work waits for room, and a finishing send wakes us
            elif (quiet_until := self._quiet_until.get(name)) is not None and quiet_until > now:
                delay = min(delay, quiet_until - now)
            else:
                unknown.append(name)
        if unknown:
            next_due = await self._outbox.next_due_by_sink(unknown)
            for sink in unknown:
                gate = self._gates.get(sink)  # None: removed by a reload meanwhile
                if gate is None:
                    continue
                due_at = next_due.get(sink)
                self._quiet_until[sink] = now + IDLE_POLL if due_at is None else due_at
                allowed_at = gate.next_allowed_at()
                if due_at is None or (allowed_at is None and gate.room() == 0):
                    continue  # nothing to send, or no room: a finishing send wakes us
                delay = min(delay, max(due_at, allowed_at or now) - now)
        self._wakeup.clear()
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
        # arrives as the wake-up is set, and the worker would never stop (seen under load).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(delay, 0.005)):
                await self._wakeup.wait()

    async def _cancel_in_flight(self) -> None:
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _deliver(self, due: Due, sink: Sink, gate: SinkGate) -> None:
        started = time.perf_counter()
        try:
            error = await self._attempt(due, sink)
        except BaseException:
            gate.abandoned()  # cancelled: stays pending, and says nothing about the sink
            raise
        duration = time.perf_counter() - started
        # The sink is done with it: its slot goes to the next send while the outcome is written
        # (the delivery stays in flight, so it is not claimed again before that commit).
        gate.finished(ok=error is None, retryable_failure=error is not None and error.retryable)
        self._wakeup.set()
        try:
            if error is None:
                await self._succeeded(due, duration)
            else:
                await self._failed(due, error, duration)
        except StorageError as exc:
            # The delivery stays pending in the outbox and is sent again (at least once), but
            # not before the hold: a lasting storage fault must not become a resend loop.
            self._held[due.id] = self._clock.now() + UNRECORDED_HOLD
            log.error(
                "could not record the outcome of delivery %s: %s; not sending it again for %.0f s",
                due.id,
                exc,
                UNRECORDED_HOLD,
                extra=_about(due),
            )

    async def _attempt(self, due: Due, sink: Sink) -> DeliveryError | None:
        """Send once; the error, if the send failed."""
        try:
            await self._send(due, sink)
        except DeliveryError as error:
            return error
        except Exception as exc:  # a sink bug must not kill the worker: record it and go on
            log.exception(
                "sink %s raised unexpectedly on delivery %s", due.sink, due.id, extra=_about(due)
            )
            return classify_exception(exc)
        return None

    async def _succeeded(self, due: Due, duration: float) -> None:
        now = self._clock.now()
        await self._outbox.record(due.id, Outcome("delivered", duration), now)
        self._metrics.attempt(due.sink, "delivered", None, duration)
        self._metrics.delivered(due.sink, now - due.event.received_at)
        log.info(
            "delivered event %s to %s (attempt %d, %.0f ms)",
            due.event.id,
            due.sink,
            due.attempts + 1,
            duration * 1000,
            extra=_about(due),
        )

    async def _send(self, due: Due, sink: Sink) -> None:
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
        async with asyncio.timeout(sink.timeout + 5):  # no extra task per send, as wait_for makes
            await sink.send(message)

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
                extra=_about(due),
            )
        else:
            why = "gave up" if error.retryable else "permanent failure"
            text = f"{error} ({why} after {attempt} attempt{'s' if attempt > 1 else ''})"
            outcome = Outcome("dead", duration, error.reason, error.status, text)
            log.error(
                "event %s to %s is dead: %s: %s",
                due.event.id,
                due.sink,
                error.reason,
                text,
                extra=_about(due),
            )
        await self._outbox.record(due.id, outcome, now)
        quiet_until = self._quiet_until.get(due.sink)
        if outcome.next_attempt_at is not None and quiet_until is not None:
            self._quiet_until[due.sink] = min(quiet_until, outcome.next_attempt_at)  # due then
        self._metrics.attempt(due.sink, outcome.outcome, error.reason, duration)

    def retry_delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds until the next attempt: what the receiver asked for, else backoff + jitter."""
        if retry_after is not None:
            return retry_after
        d = self._delivery
        base = min(d.max_backoff, d.initial_backoff * 2 ** (attempt - 1))
        return float(base * self._rng.uniform(0.5, 1.0))


def _claim_size(sink: Sink) -> int:
    """How many due deliveries to claim at once: a few rounds of the sink's in-flight limit, and
    no more than a second's worth for a sink with a rate."""
    size = min(MAX_CLAIM, sink.config.concurrency * CLAIM_PER_SLOT)
    if sink.config.rate:
        size = min(size, max(1, int(sink.config.rate)))
    return size


def _same_config(old: Sink | None, new: Sink) -> bool:
    return old is not None and old.config == new.config


def _about(due: Due) -> dict[str, Any]:
    """Log ``extra`` for a line about a delivery: structured logs carry the event id."""
    return {"event_id": due.event.id, "sink": due.sink}
