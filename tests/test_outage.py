"""A receiver down, then failing, then too slow, then back: everything arrives, on schedule."""

from __future__ import annotations

import json
import random

from relay.clock import FakeClock
from relay.config import load_config
from relay.server import OUTBOX, WORKER, create_app
from relay.testing.webhook import FakeReceiver, Reply
from tests.helpers import BY_NAME, VECTOR_NOW, write_config
from tests.helpers_process import free_port


def _next_attempt(outbox):
    row = outbox._conn.execute(
        "SELECT status, next_attempt_at, attempts FROM deliveries"
    ).fetchone()
    return row


async def test_outage_then_recovery_follows_the_backoff(tmp_path, aiohttp_client):
    """Refused, 500, timeout, then 200: four attempts, none before its backoff, one delivery."""
    port = free_port()
    body = f"""
    [delivery]
    initial_backoff = 10
    max_backoff = 3600
    [sinks.crm]
    type = "webhook"
    url = "http://127.0.0.1:{port}/hook"
    timeout = 0.3
    [[routes]]
    sinks = ["crm"]
    """
    clock = FakeClock(VECTOR_NOW)
    app = create_app(
        load_config(write_config(tmp_path, body), environ={}), clock=clock, run_worker=False
    )
    client = await aiohttp_client(app)
    worker, outbox = app[WORKER], app[OUTBOX]
    worker._rng = random.Random(1)
    response = await client.post(
        "/webhooks/dataslayer", json={"encrypted_data": BY_NAME["basic"]["token"]}
    )
    assert response.status == 200

    await worker.drain()  # nobody listens on the port yet: connection refused
    async with FakeReceiver(port=port, replies=[Reply(500), Reply(200, delay=5)]) as receiver:
        for expected_base in (10, 20, 40):  # 500, then a timeout, then success
            status, next_at, attempts = _next_attempt(outbox)
            assert status == "retrying"
            waited = next_at - clock.now()
            assert expected_base * 0.5 <= waited <= expected_base
            clock.set(next_at - 0.01)
            await worker.drain()
            assert len(receiver.requests) == attempts - 1  # nothing before the backoff ends
            clock.set(next_at)
            await worker.drain()
            assert len(receiver.requests) == attempts
        assert _next_attempt(outbox)[0] == "delivered"
        assert json.loads(receiver.requests[-1].body)["data"]["email"] == "ana.lopez@example.com"
    reasons = [r[0] for r in outbox._conn.execute("SELECT reason FROM attempts ORDER BY id")]
    assert reasons == ["connection", "server", "timeout", None]
