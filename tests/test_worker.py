"""The worker: sinks never wait for each other, backoff grows with jitter, outcomes are recorded."""

from __future__ import annotations

import asyncio
import io
import random

import aiohttp

from relay.clock import FakeClock
from relay.config import DeliveryConfig
from relay.events import event_from_dict
from relay.outbox import Outbox
from relay.render import Renderer
from relay.secret import Secret
from relay.sinks import SinkContext
from relay.sinks.console import ConsoleConfig, ConsoleSink
from relay.sinks.slack import SlackConfig, SlackSink
from relay.sinks.webhook import WebhookConfig, WebhookSink
from relay.testing.slack import FakeSlack
from relay.worker import Worker
from tests.helpers import eventually
from tests.helpers_process import free_port

NOW = 1_800_000_000.0


async def _delivered(outbox):
    return (await outbox.counts())["delivered"] >= 1


def _worker(outbox, sinks, clock, **delivery):
    config = DeliveryConfig(**delivery)
    return Worker(outbox, sinks, Renderer(None), config, clock, rng=random.Random(7))


def test_backoff_doubles_with_jitter_and_is_capped():
    """Delays grow from initial_backoff by doubling, times 0.5-1.0, never over max_backoff."""
    worker = _worker(None, {}, FakeClock(), initial_backoff=5, max_backoff=60)
    for attempt, base in [(1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (9, 60)]:
        delays = [worker.retry_delay(attempt, None) for _ in range(200)]
        assert all(base * 0.5 <= delay <= base for delay in delays), (attempt, delays)
        # Jitter really spreads the delays over the range, rather than one fixed factor.
        assert min(delays) < base * 0.6
        assert max(delays) > base * 0.9


def test_backoff_jitter_differs_between_random_generators():
    """Workers with differently seeded generators wait different times for the same attempt."""
    delays = set()
    for seed in range(5):
        worker = Worker(
            None, {}, Renderer(None), DeliveryConfig(initial_backoff=10), FakeClock(),
            rng=random.Random(seed),
        )  # fmt: skip
        delay = worker.retry_delay(1, None)
        assert 5 <= delay <= 10
        delays.add(delay)
    assert len(delays) == 5


async def test_deliveries_failing_together_are_rescheduled_apart(tmp_path):
    """Deliveries refused in the same instant get jittered, different next attempts in range."""
    clock = FakeClock(NOW)
    outbox = await Outbox.open(tmp_path / "relay.db")
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens: connection refused
        config = WebhookConfig(type="webhook", url=url)
        sink = WebhookSink("crm", config, SinkContext(http=http, timeout=5))
        worker = _worker(outbox, {"crm": sink}, clock, initial_backoff=10)
        for n in range(4):
            event = event_from_dict({"type": "shared_connection", "n": n}, received_at=NOW)
            await outbox.accept(event, ["crm"], dedup_window=60)
        await worker.drain()
    rows = outbox._conn.execute("SELECT status, next_attempt_at FROM deliveries").fetchall()
    await outbox.close()
    assert [status for status, _ in rows] == ["retrying"] * 4
    waits = [next_at - NOW for _, next_at in rows]
    assert all(5 <= wait <= 10 for wait in waits), waits
    assert len(set(waits)) == 4


def test_retry_after_is_honoured_as_asked():
    """A receiver's Retry-After replaces the backoff, even when longer than max_backoff."""
    worker = _worker(None, {}, FakeClock(), initial_backoff=5, max_backoff=60)
    assert worker.retry_delay(1, 3.0) == 3.0
    assert worker.retry_delay(1, 120.0) == 120.0


async def test_a_slow_sink_never_holds_up_another(tmp_path):
    """While Slack takes its time, the console sink's message is already out."""
    clock = FakeClock(NOW)
    out = io.StringIO()
    outbox = await Outbox.open(tmp_path / "relay.db")
    async with FakeSlack() as slack, aiohttp.ClientSession() as http:
        slack.script(FakeSlack.slow(30))
        context = SinkContext(http=http, timeout=60, stdout=out)
        sinks = {
            "slow": SlackSink(
                "slow", SlackConfig(type="slack", webhook_url=Secret(slack.webhook_url)), context
            ),
            "fast": ConsoleSink("fast", ConsoleConfig(), context),
        }
        worker = _worker(outbox, sinks, clock)
        event = event_from_dict({"type": "shared_connection", "email": "a@b.c"}, received_at=NOW)
        await outbox.accept(event, ["slow", "fast"], dedup_window=60)
        task = asyncio.create_task(worker.run())
        try:
            await eventually(lambda: _delivered(outbox))
            assert "a@b.c" in out.getvalue()
            assert slack.messages == []
            assert (await outbox.counts())["pending"] == 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    await outbox.close()


async def test_a_template_error_kills_only_that_delivery(tmp_path):
    """A broken template for one sink makes that delivery dead; the other sink delivers."""
    clock = FakeClock(NOW)
    out = io.StringIO()
    user = tmp_path / "templates" / "broken"
    user.mkdir(parents=True)
    (user / "console.text.j2").write_text("line one\n{{ missing_name }}\n")
    outbox = await Outbox.open(tmp_path / "relay.db")
    context = SinkContext(timeout=5, stdout=out)
    sinks = {
        "bad": ConsoleSink("bad", ConsoleConfig(template="broken"), context),
        "good": ConsoleSink("good", ConsoleConfig(), context),
    }
    worker = Worker(outbox, sinks, Renderer(tmp_path / "templates"), DeliveryConfig(), clock)
    event = event_from_dict({"type": "shared_connection"}, received_at=NOW)
    await outbox.accept(event, ["bad", "good"], dedup_window=60)
    await worker.drain()
    assert await outbox.counts() == {"pending": 0, "retrying": 0, "delivered": 1, "dead": 1}
    error = outbox._conn.execute("SELECT last_error FROM deliveries WHERE sink = 'bad'").fetchone()
    assert "broken/console.text.j2, line 2" in error[0]
    await outbox.close()


async def test_deliveries_to_a_removed_sink_wait_and_are_reported(tmp_path, caplog):
    """Pending deliveries for a sink no longer configured are kept, and the start-up log says so."""
    outbox = await Outbox.open(tmp_path / "relay.db")
    event = event_from_dict({"type": "shared_connection"}, received_at=NOW)
    await outbox.accept(event, ["gone"], dedup_window=60)
    worker = Worker(outbox, {}, Renderer(None), DeliveryConfig(), FakeClock(NOW))
    task = asyncio.create_task(worker.run())
    await eventually(lambda: "gone" in caplog.text)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert "1 pending delivery for sinks no longer configured: gone (1)" in caplog.text
    assert (await outbox.counts())["pending"] == 1
    await outbox.close()


def test_retention_sweeps_run_often_enough_for_short_retentions():
    """A 5-minute retention is swept every 30 s; a week-long one every 10 minutes at most."""
    short = Worker(None, {}, Renderer(None), DeliveryConfig(), FakeClock(), retention=300)
    long = Worker(None, {}, Renderer(None), DeliveryConfig(), FakeClock(), retention=7 * 86400)
    tiny = Worker(None, {}, Renderer(None), DeliveryConfig(), FakeClock(), retention=5)
    assert short._cleanup_every() == 30
    assert long._cleanup_every() == 600
    assert tiny._cleanup_every() == 10


async def test_a_cancelled_worker_stops_even_when_woken_at_that_moment(tmp_path):
    """A cancel that arrives together with a wake-up (new deliveries stored) still stops the
    worker: its sleep must not swallow the cancellation (as Python 3.11's wait_for does)."""
    outbox = await Outbox.open(tmp_path / "relay.db")
    worker = _worker(outbox, {}, FakeClock(NOW))
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(5):  # into its idle sleep
            await asyncio.sleep(0.01)
        worker.notify()
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
        assert task in done
        assert task.cancelled()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await outbox.close()


async def test_an_outcome_that_cannot_be_recorded_is_not_resent_in_a_loop(tmp_path, caplog):
    """When the outbox cannot record an outcome the delivery stays pending (at least once), but
    waits out a hold before it is sent again, instead of being resent as fast as possible."""
    clock = FakeClock(NOW)
    out = io.StringIO()
    outbox = await Outbox.open(tmp_path / "relay.db")
    try:
        sinks = {"fast": ConsoleSink("fast", ConsoleConfig(), SinkContext(stdout=out))}
        worker = _worker(outbox, sinks, clock)
        event = event_from_dict({"type": "shared_connection", "email": "a@b.c"}, received_at=NOW)
        await outbox.accept(event, ["fast"], dedup_window=60)
        # A lasting storage fault: every outcome record fails from now on.
        outbox._conn.execute("ALTER TABLE deliveries DROP COLUMN last_reason")
        async with asyncio.timeout(10):
            await worker.drain()
        assert out.getvalue().count(f"--- fast | event {event.id}") == 1
        assert "not sending it again for 30 s" in caplog.text
        clock.advance(31)
        async with asyncio.timeout(10):
            await worker.drain()
        assert out.getvalue().count(f"--- fast | event {event.id}") == 2
    finally:
        await outbox.close()
