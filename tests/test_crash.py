"""`relay serve` killed at random moments loses nothing it acknowledged; SIGTERM is graceful."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
import time

import aiohttp
import pytest

from relay.crypto import encrypt
from relay.testing.webhook import FakeReceiver, Reply
from tests.helpers import SECRET, eventually, write_config
from tests.helpers_process import RelayProcess, free_port

SIGNING = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def relay_config(tmp_path, receiver, port, extra="", shutdown_timeout=5):
    body = f"""
    [server]
    port = {port}
    shutdown_timeout = {shutdown_timeout}
    [delivery]
    initial_backoff = 0.2
    max_backoff = 1
    [sinks.crm]
    type = "webhook"
    url = "{receiver.url}"
    signing_secret = "{SIGNING}"
    concurrency = 8
    {extra}
    [[routes]]
    sinks = ["crm"]
    """
    return write_config(tmp_path, body)


def make_tokens(start, count):
    now = time.time()
    events = [
        {"type": "shared_connection", "datasource": "ga4", "n": n}
        for n in range(start, start + count)
    ]
    return [encrypt(SECRET, json.dumps(e).encode(), now=now) for e in events]


async def post_all(url, tokens, acknowledged):
    """Post concurrently; remember the ids the relay answered 200 for."""
    gate = asyncio.Semaphore(16)
    timeout = aiohttp.ClientTimeout(total=5)

    async def one(session, token):
        async with gate:
            try:
                async with session.post(url, json={"encrypted_data": token}) as response:
                    if response.status == 200:
                        acknowledged.add((await response.json())["id"])
            except (aiohttp.ClientError, TimeoutError):
                pass  # killed mid-request: not acknowledged, so not promised

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(one(session, t) for t in tokens))


def received_ids(receiver):
    return {r.headers["webhook-id"].split(".")[0] for r in receiver.requests}


async def test_sigkill_during_a_burst_loses_nothing_acknowledged(tmp_path):
    """Rounds of SIGKILL at random moments: every 200 reaches the receiver, repeats share an id."""
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    port = free_port()
    acknowledged: set[str] = set()
    async with FakeReceiver([SIGNING]) as receiver:
        relay = RelayProcess(relay_config(tmp_path, receiver, port), port)
        try:
            for round_ in range(3):
                await relay.start()
                posting = asyncio.create_task(
                    post_all(
                        f"{relay.url}/webhooks/dataslayer",
                        make_tokens(round_ * 1000, 200),
                        acknowledged,
                    )
                )
                await asyncio.sleep(rng.uniform(0.05, 0.6))
                relay.signal(signal.SIGKILL)
                await relay.wait()
                await posting
            await relay.start()
            await eventually(lambda: acknowledged <= received_ids(receiver), attempts=3000)
        finally:
            await relay.stop()
        assert acknowledged, f"seed {seed}: nothing was acknowledged before the kills"
        assert acknowledged <= received_ids(receiver), f"seed {seed}"
        by_body: dict[bytes, set[str]] = {}
        for request in receiver.requests:
            by_body.setdefault(json.loads(request.body)["data"]["n"], set()).add(
                request.headers["webhook-id"]
            )
        assert all(len(ids) == 1 for ids in by_body.values()), f"seed {seed}"
        assert all(r.verified for r in receiver.requests)


async def start_with_a_send_in_flight(tmp_path, receiver, shutdown_timeout):
    """A relay whose one delivery is being sent to ``receiver`` right now."""
    port = free_port()
    config = relay_config(tmp_path, receiver, port, "timeout = 120", shutdown_timeout)
    relay = RelayProcess(config, port)
    await relay.start()
    await post_all(f"{relay.url}/webhooks/dataslayer", make_tokens(0, 1), set())
    await receiver.wait_for(1)
    return relay


async def test_sigterm_lets_a_send_in_flight_finish(tmp_path):
    """SIGTERM while a send is under way: the relay waits for it, records it, says it stopped,
    and exits 0."""
    async with FakeReceiver([SIGNING], replies=[Reply(200, delay=1.0)]) as receiver:
        relay = await start_with_a_send_in_flight(tmp_path, receiver, shutdown_timeout=5)
        try:
            relay.signal(signal.SIGTERM)
            assert await relay.wait() == 0
        finally:
            await relay.stop()
    assert _statuses(tmp_path) == ["delivered"]
    assert (
        relay.log.read_text()
        .rstrip()
        .endswith("stopped; what was not delivered stays pending for the next start")
    )


async def test_sigterm_past_the_deadline_leaves_the_send_pending_then_delivers(tmp_path):
    """A send slower than shutdown_timeout is cut off, stays pending, and goes out after restart."""
    async with FakeReceiver([SIGNING], replies=[Reply(200, delay=60)]) as receiver:
        relay = await start_with_a_send_in_flight(tmp_path, receiver, shutdown_timeout=0.5)
        try:
            relay.signal(signal.SIGTERM)
            assert await relay.wait() == 0
            assert _statuses(tmp_path) == ["pending"]
            await relay.start()
            await receiver.wait_for(2, within=10)
            await eventually(lambda: _statuses(tmp_path) == ["delivered"])
        finally:
            await relay.stop()
    first, second = receiver.requests[:2]
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_a_second_signal_exits_at_once(tmp_path, sig):
    """During a graceful shutdown a second signal ends the process without waiting."""
    async with FakeReceiver([SIGNING], replies=[Reply(200, delay=60)]) as receiver:
        relay = await start_with_a_send_in_flight(tmp_path, receiver, shutdown_timeout=60)
        try:
            relay.signal(sig)
            await eventually(lambda: "shutting down" in relay.log.read_text())
            relay.signal(sig)
            assert await relay.wait(limit=10) == 1
        finally:
            await relay.stop()
    assert _statuses(tmp_path) == ["pending"]


def _statuses(tmp_path):
    with sqlite3.connect(tmp_path / "relay.db") as conn:
        return [row[0] for row in conn.execute("SELECT status FROM deliveries ORDER BY id")]


async def test_while_draining_new_posts_get_503_and_health_stays_up(tmp_path):
    """While stopping gracefully the relay still listens: posts 503, /readyz 503, /healthz 200."""
    async with FakeReceiver([SIGNING], replies=[Reply(200, delay=60)]) as receiver:
        relay = await start_with_a_send_in_flight(tmp_path, receiver, shutdown_timeout=60)
        try:
            relay.signal(signal.SIGTERM)
            await eventually(lambda: "shutting down" in relay.log.read_text())
            async with aiohttp.ClientSession() as session:
                token = make_tokens(5, 1)[0]
                url = f"{relay.url}/webhooks/dataslayer"
                async with session.post(url, json={"encrypted_data": token}) as response:
                    assert response.status == 503
                    assert response.headers["Retry-After"]
                async with session.get(f"{relay.url}/readyz") as response:
                    assert response.status == 503
                async with session.get(f"{relay.url}/healthz") as response:
                    assert response.status == 200
        finally:
            await relay.stop()
