"""Per-sink gates: in-flight limit, rate, and a circuit breaker that pauses a failing sink."""

from __future__ import annotations

import logging

from relay.clock import FakeClock
from relay.pacing import BREAKER_FIRST_PAUSE, BREAKER_THRESHOLD, SinkGate


def _gate(clock, concurrency=4, rate=None, max_pause=3600):
    return SinkGate("s", clock, concurrency, rate, max_pause)


def test_concurrency_limits_sends_in_flight():
    """No more than `concurrency` sends start before one finishes."""
    gate = _gate(FakeClock(), concurrency=2)
    assert gate.room() == 2
    gate.started()
    gate.started()
    assert gate.room() == 0
    gate.finished(ok=True, retryable_failure=False)
    assert gate.room() == 1


def test_rate_allows_one_second_of_burst_then_paces():
    """At 1 message/s the second send waits a second; the gate says when it opens."""
    clock = FakeClock(100.0)
    gate = _gate(clock, rate=1.0)
    assert gate.room() == 1
    gate.started()
    gate.finished(ok=True, retryable_failure=False)
    assert gate.room() == 0
    assert gate.next_allowed_at() == 101.0
    clock.advance(1.0)
    assert gate.room() == 1


def test_rate_zero_or_unset_means_no_limit():
    """rate = 0 and no rate both leave only the concurrency limit."""
    for rate in (None, 0):
        gate = _gate(FakeClock(), concurrency=3, rate=rate)
        for _ in range(10):
            assert gate.room() == 3
            gate.started()
            gate.finished(ok=True, retryable_failure=False)


def _fail(gate, times):
    for _ in range(times):
        gate.started()
        gate.finished(ok=False, retryable_failure=True)


def test_breaker_opens_after_consecutive_failures_and_logs_once(caplog):
    """Five retryable failures in a row pause the sink, with one log line."""
    caplog.set_level(logging.WARNING)
    clock = FakeClock(0.0)
    gate = _gate(clock)
    _fail(gate, BREAKER_THRESHOLD - 1)
    assert gate.room() == 4
    _fail(gate, 1)
    assert gate.room() == 0
    assert gate.next_allowed_at() == BREAKER_FIRST_PAUSE
    assert caplog.text.count("pausing it") == 1


def test_permanent_failures_do_not_open_the_breaker():
    """A run of permanent failures (bad payloads) says nothing about the sink's health."""
    gate = _gate(FakeClock())
    for _ in range(20):
        gate.started()
        gate.finished(ok=False, retryable_failure=False)
    assert gate.room() == 4


def test_paused_sink_probes_one_at_a_time_and_pauses_grow(caplog):
    """After the pause one probe goes out; its failure doubles the pause, up to max_pause."""
    caplog.set_level(logging.WARNING)
    clock = FakeClock(0.0)
    gate = _gate(clock, max_pause=100)
    _fail(gate, BREAKER_THRESHOLD)
    clock.advance(BREAKER_FIRST_PAUSE)
    assert gate.room() == 1
    gate.started()
    assert gate.room() == 0
    gate.finished(ok=False, retryable_failure=True)
    assert gate.next_allowed_at() == clock.now() + 2 * BREAKER_FIRST_PAUSE
    clock.advance(2 * BREAKER_FIRST_PAUSE)
    _fail(gate, 1)
    assert gate.next_allowed_at() == clock.now() + 100
    assert caplog.text.count("pausing it") == 1


def test_a_successful_probe_closes_the_breaker_and_logs_recovery(caplog):
    """The first success after a pause resumes full speed, with one recovery line."""
    caplog.set_level(logging.WARNING)
    clock = FakeClock(0.0)
    gate = _gate(clock)
    _fail(gate, BREAKER_THRESHOLD)
    clock.advance(BREAKER_FIRST_PAUSE)
    gate.started()
    gate.finished(ok=True, retryable_failure=False)
    assert gate.room() == 4
    assert gate.next_allowed_at() is None
    assert caplog.text.count("recovered") == 1


def _open(gate, clock):
    """Trip the breaker and let its first pause pass: the gate is half-open."""
    for _ in range(BREAKER_THRESHOLD):
        gate.started()
        gate.finished(ok=False, retryable_failure=True)
    clock.advance(BREAKER_FIRST_PAUSE)


def test_a_probe_answered_with_a_permanent_failure_closes_the_breaker():
    """A permanent failure means the sink answered: the breaker closes, as on a success, rather
    than staying half-open and probing one send after another with no pause."""
    clock = FakeClock(1000.0)
    gate = _gate(clock, concurrency=4)
    _open(gate, clock)
    assert gate.room() == 1
    gate.started()
    gate.finished(ok=False, retryable_failure=False)
    assert gate.paused_until is None
    assert gate.room() == 4


def test_a_half_open_sink_keeps_its_rate():
    """Probing does not skip the rate: a sink at 1/s that just probed waits its second."""
    clock = FakeClock(1000.0)
    gate = _gate(clock, concurrency=4, rate=1)
    _open(gate, clock)
    gate.started()  # the probe uses the second's token
    gate.finished(ok=False, retryable_failure=True)
    clock.advance(BREAKER_FIRST_PAUSE * 2)  # the next pause is over: half-open again
    assert gate.room() == 1
    gate.started()
    gate.finished(ok=False, retryable_failure=False)
    assert gate.room() == 0  # closed again, but this second's token is spent
    clock.advance(1)
    assert gate.room() == 1
