"""Probes: /healthz says the process is alive; /readyz says whether it can take traffic now."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from relay.clock import FakeClock
from relay.config import load_config
from relay.server import OUTBOX, STATE, WORKER_TASK, create_app
from tests.helpers import BY_NAME, VECTOR_NOW, write_config

BODY = """
[sinks.out]
type = "console"
[[routes]]
sinks = ["out"]
"""


@pytest.fixture
async def relay(tmp_path, aiohttp_client):
    """A relay with its worker running, as in production."""
    config = load_config(write_config(tmp_path, BODY), environ={})
    return await aiohttp_client(create_app(config, clock=FakeClock(VECTOR_NOW), run_worker=True))


async def probe(client, path: str = "/readyz") -> tuple[int, dict]:
    response = await client.get(path)
    return response.status, await response.json()


async def set_query_only(client, on: bool) -> None:
    """Make the outbox's own connection refuse writes, as a read-only disk would."""
    outbox = client.app[OUTBOX]
    await outbox._run(outbox._conn.execute, f"PRAGMA query_only = {'ON' if on else 'OFF'}")


async def test_healthz_answers_ok(relay):
    """/healthz is 200 {"status": "ok"} while the process runs."""
    assert await probe(relay, "/healthz") == (200, {"status": "ok"})


async def test_readyz_is_ready_when_storage_worker_and_config_are(relay):
    """A started relay is ready."""
    assert await probe(relay) == (200, {"status": "ready"})


async def test_readyz_fails_while_storage_refuses_writes(relay):
    """A database that refuses writes makes /readyz 503 naming storage, and ready again after."""
    await set_query_only(relay, True)
    status, body = await probe(relay)
    assert status == 503
    assert body["status"] == "not_ready"
    assert list(body["failed"]) == ["storage"]
    assert "readonly" in body["failed"]["storage"]
    await set_query_only(relay, False)
    assert await probe(relay) == (200, {"status": "ready"})


async def test_readyz_agrees_with_the_webhook_when_storage_refuses(relay):
    """When readiness fails for storage, a post gets 503 too: never 200 for something not stored."""
    await set_query_only(relay, True)
    response = await relay.post(
        "/webhooks/dataslayer", json={"encrypted_data": BY_NAME["basic"]["token"]}
    )
    assert response.status == 503
    assert (await probe(relay))[0] == 503


async def test_readyz_fails_when_the_storage_is_closed(relay):
    """A closed database connection is not ready."""
    outbox = relay.app[OUTBOX]
    await outbox._run(outbox._conn.close)  # on its own thread: the worker may be using it
    status, body = await probe(relay)
    assert status == 503
    assert "storage" in body["failed"]


async def test_readyz_fails_when_the_worker_is_not_running(relay):
    """If the delivery worker's task ended, /readyz is 503 naming the worker."""
    task = relay.app[WORKER_TASK]
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await probe(relay) == (503, {"status": "not_ready", "failed": {"worker": "not running"}})


async def test_readyz_fails_once_shutdown_began(relay):
    """While shutting down, /readyz is 503 so load balancers stop sending first."""
    relay.app[STATE].closing = True
    status, body = await probe(relay)
    assert status == 503
    assert body["failed"] == {"shutdown": "shutting down"}
