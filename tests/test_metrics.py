"""Prometheus metrics: after real traffic through the server, the exposition says what happened."""

from __future__ import annotations

import json

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay import __version__
from relay.clock import FakeClock
from relay.config import load_config
from relay.crypto import encrypt
from relay.server import OUTBOX, WORKER, create_app
from relay.testing.slack import FakeSlack
from relay.testing.webhook import FakeReceiver, Reply
from tests.helpers import BY_NAME, SECRET, VECTOR_NOW, write_config
from tests.helpers_process import free_port

PATH = "/webhooks/dataslayer"


@pytest.fixture
async def slack():
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
def clock():
    return FakeClock(VECTOR_NOW)


def token_for(event: dict, now: float) -> str:
    return encrypt(SECRET, json.dumps(event).encode(), now=now)


def event(n: int) -> dict:
    return {"type": "shared_connection", "datasource": "google_ads", "account": n}


async def relay_for(tmp_path, aiohttp_client, clock, sinks: str, extra: str = ""):
    body = f"""
    [delivery]
    max_attempts = 2
    initial_backoff = 10
    {extra}
    {sinks}
    """
    config = load_config(write_config(tmp_path, body), environ={})
    return await aiohttp_client(create_app(config, clock=clock, run_worker=False))


def slack_sink(slack: FakeSlack) -> str:
    return f"""
    [sinks.team-slack]
    type = "slack"
    webhook_url = "{slack.webhook_url}"
    [[routes]]
    sinks = ["team-slack"]
    """


class Scrape:
    """A parsed exposition: ``value(name, **labels)``, 0 for a series that is not there."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def has(self, name: str) -> bool:
        return any(sample_name == name for sample_name, _ in self.samples)


async def scrape(client) -> Scrape:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return Scrape(await response.text())


async def test_inbound_answers_are_counted_by_outcome(tmp_path, aiohttp_client, clock, slack):
    """Accepted, duplicate, bad_request, invalid_token and too_large each count once."""
    client = await relay_for(tmp_path, aiohttp_client, clock, slack_sink(slack))
    token = BY_NAME["basic"]["token"]
    wrong = encrypt("another-secret-of-32-characters!", b'{"type": "x"}', now=VECTOR_NOW)
    for body in ({"encrypted_data": token}, {"encrypted_data": token}, {"nope": 1}):
        await client.post(PATH, json=body)
    await client.post(PATH, json={"encrypted_data": wrong})
    await client.post(PATH, data=b"x" * 70_000, headers={"Content-Type": "application/json"})
    await client.get("/healthz")  # not a webhook post: not counted

    metrics = await scrape(client)
    counted = {
        outcome: metrics.value("relay_inbound_requests_total", outcome=outcome)
        for outcome in ("accepted", "duplicate", "bad_request", "invalid_token", "too_large")
    }
    assert counted == dict.fromkeys(counted, 1.0)
    assert metrics.value("relay_inbound_requests_total", outcome="unavailable") == 0
    assert metrics.has("relay_inbound_requests_total")


async def test_a_delivery_moves_the_delivery_metrics(tmp_path, aiohttp_client, clock, slack):
    """One delivered event: one attempt, one delivered outcome, its latency and an empty outbox."""
    client = await relay_for(tmp_path, aiohttp_client, clock, slack_sink(slack))
    await client.post(PATH, json={"encrypted_data": BY_NAME["basic"]["token"]})

    before = await scrape(client)
    assert before.value("relay_outbox_deliveries", status="pending") == 1
    clock.advance(42)
    assert (await scrape(client)).value("relay_outbox_oldest_pending_age_seconds") == 42

    await client.app[WORKER].drain()
    after = await scrape(client)
    sink = {"sink": "team-slack"}
    assert after.value("relay_delivery_attempts_total", **sink) == 1
    assert after.value("relay_deliveries_total", **sink, outcome="delivered", reason="") == 1
    assert after.value("relay_delivery_attempt_duration_seconds_count", **sink) == 1
    assert after.value("relay_delivery_latency_seconds_count", **sink) == 1
    assert after.value("relay_delivery_latency_seconds_sum", **sink) == 42
    assert after.value("relay_delivery_latency_seconds_bucket", **sink, le="15.0") == 0
    assert after.value("relay_delivery_latency_seconds_bucket", **sink, le="60.0") == 1
    assert after.value("relay_outbox_deliveries", status="delivered") == 1
    assert after.value("relay_outbox_deliveries", status="pending") == 0
    assert after.value("relay_outbox_oldest_pending_age_seconds") == 0
    assert after.value("relay_sink_in_flight", **sink) == 0


async def test_retries_and_dead_deliveries_are_counted_with_their_reason(
    tmp_path, aiohttp_client, clock, slack
):
    """A 429 counts as retry/rate_limited; then invalid_auth as dead/auth."""
    client = await relay_for(tmp_path, aiohttp_client, clock, slack_sink(slack))
    slack.script(FakeSlack.rate_limited(retry_after=3), FakeSlack.error("invalid_auth", 200))
    await client.post(PATH, json={"encrypted_data": BY_NAME["basic"]["token"]})
    await client.app[WORKER].drain()
    clock.advance(3)
    await client.app[WORKER].drain()

    metrics = await scrape(client)
    sink = {"sink": "team-slack"}
    assert metrics.value("relay_delivery_attempts_total", **sink) == 2
    assert metrics.value("relay_deliveries_total", **sink, outcome="retry", reason="rate_limited")
    assert metrics.value("relay_deliveries_total", **sink, outcome="dead", reason="auth") == 1
    assert metrics.value("relay_deliveries_total", **sink, outcome="delivered", reason="") == 0
    assert metrics.value("relay_outbox_deliveries", status="dead") == 1


async def test_the_breaker_gauge_shows_a_paused_sink(tmp_path, aiohttp_client, clock):
    """Five failures in a row pause the sink: relay_sink_breaker_open goes from 0 to 1."""
    async with FakeReceiver(replies=[Reply(500)] * 5) as receiver:
        sinks = f"""
        [sinks.crm]
        type = "webhook"
        url = "{receiver.url}"
        [[routes]]
        sinks = ["crm"]
        """
        client = await relay_for(tmp_path, aiohttp_client, clock, sinks)
        assert (await scrape(client)).value("relay_sink_breaker_open", sink="crm") == 0
        for n in range(5):
            await client.post(PATH, json={"encrypted_data": token_for(event(n), VECTOR_NOW)})
        await client.app[WORKER].drain()
        metrics = await scrape(client)
    assert metrics.value("relay_deliveries_total", sink="crm", outcome="retry", reason="server")
    assert metrics.value("relay_sink_breaker_open", sink="crm") == 1
    assert metrics.value("relay_outbox_deliveries", status="retrying") == 5


async def test_metrics_can_be_turned_off(tmp_path, aiohttp_client, clock, slack):
    """With [metrics] enabled = false there is no /metrics."""
    extra = "[metrics]\nenabled = false"
    client = await relay_for(tmp_path, aiohttp_client, clock, slack_sink(slack), extra)
    response = await client.get("/metrics")
    assert response.status == 404


async def test_metrics_on_a_port_of_their_own(tmp_path, aiohttp_client, clock, slack):
    """With [metrics] port set, /metrics is served there and not on the webhook server."""
    port = free_port()
    extra = f'[metrics]\nhost = "127.0.0.1"\nport = {port}'
    client = await relay_for(tmp_path, aiohttp_client, clock, slack_sink(slack), extra)
    await client.post(PATH, json={"encrypted_data": BY_NAME["basic"]["token"]})
    assert (await client.get("/metrics")).status == 404
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        metrics = Scrape(await response.text())
    assert metrics.value("relay_inbound_requests_total", outcome="accepted") == 1


async def test_an_unreadable_outbox_leaves_out_its_gauges_only(
    tmp_path, aiohttp_client, clock, slack
):
    """When the database cannot be read, the scrape still answers, without the outbox gauges."""
    client = await relay_for(tmp_path, aiohttp_client, clock, slack_sink(slack))
    outbox = client.app[OUTBOX]
    await outbox._run(outbox._conn.close)
    metrics = await scrape(client)
    assert not metrics.has("relay_outbox_deliveries")
    assert metrics.has("relay_inbound_requests_total")
    assert metrics.value("relay_build_info", version=__version__) == 1


async def test_every_documented_inbound_outcome_starts_at_zero(aiohttp_client, tmp_path):
    """Each outcome in the README's list has a series from the start, so rate() works at once."""
    from prometheus_client import generate_latest

    from relay.metrics import REQUEST_OUTCOMES, Metrics

    text = generate_latest(Metrics().registry).decode()
    for outcome in REQUEST_OUTCOMES:
        assert f'relay_inbound_requests_total{{outcome="{outcome}"}} 0.0' in text
    assert 'outcome="too_many_requests"' in text
