"""relay outbox list/show/retry/purge over a database with pending, dead and delivered entries."""

from __future__ import annotations

import json
import time

import pytest

from relay.admin import parse_duration
from relay.cli import main
from relay.clock import FakeClock
from relay.config import load_config
from relay.crypto import encrypt
from relay.server import OUTBOX, STATE, WORKER, create_app
from relay.testing.webhook import FakeReceiver, Reply
from tests.helpers import SECRET, write_config

DAY = 86400


@pytest.fixture
async def receiver():
    async with FakeReceiver() as fake:
        yield fake


@pytest.fixture
async def relay(tmp_path, receiver, aiohttp_client):
    """A relay whose events were received three days ago: one dead, one delivered, one retrying."""
    body = f"""
    [storage]
    retention = {2 * DAY}
    [sinks.crm]
    type = "webhook"
    url = "{receiver.url}"
    [[routes]]
    sinks = ["crm"]
    """
    path = write_config(tmp_path, body)
    clock = FakeClock(time.time() - 3 * DAY)
    client = await aiohttp_client(
        create_app(load_config(path, environ={}), clock=clock, run_worker=False)
    )
    client.config_path, client.clock = str(path), clock
    receiver.reply(Reply(400, "no such customer"), Reply(200), Reply(503))
    client.ids = []
    for email in ("dead@example.com", "ok@example.com", "later@example.com"):
        client.ids.append(await post(client, email))
        await client.app[WORKER].drain()
    return client


async def post(client, email):
    event = {"type": "shared_connection", "datasource": "ga4", "email": email}
    token = encrypt(SECRET, json.dumps(event).encode(), now=client.clock.now())
    response = await client.post("/webhooks/dataslayer", json={"encrypted_data": token})
    assert response.status == 200
    return (await response.json())["id"]


def run(capsys, relay, *args):
    code = main(["outbox", *args, "-c", relay.config_path])
    out = capsys.readouterr()
    return code, out.out, out.err


async def test_list_shows_every_delivery_and_filters(relay, capsys):
    """list shows each delivery's status; --status, --sink and --since narrow it."""
    code, out, _ = run(capsys, relay, "list")
    assert code == 0
    for status in ("dead", "delivered", "retrying"):
        assert status in out
    _, out, _ = run(capsys, relay, "list", "--status", "dead")
    assert relay.ids[0][:12] in out
    assert relay.ids[1][:12] not in out
    _, out, _ = run(capsys, relay, "list", "--since", "1d")
    assert out.strip() == "no deliveries match"
    _, out, _ = run(capsys, relay, "list", "--sink", "crm", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["status"] for r in rows) == ["dead", "delivered", "retrying"]
    assert "later@example.com" not in out


async def test_show_masks_personal_data_unless_asked(relay, capsys):
    """show prints the event masked, and each attempt with its outcome and status code."""
    code, out, _ = run(capsys, relay, "show", relay.ids[0][:10])
    assert code == 0
    assert '"d***@example.com"' in out
    assert "dead@example.com" not in out
    assert "dead" in out
    assert "client 400" in out
    assert "no such customer" in out
    _, out, _ = run(capsys, relay, "show", relay.ids[0], "--show-personal-data", "--json")
    detail = json.loads(out)
    assert detail["event"]["email"] == "dead@example.com"
    assert detail["deliveries"][0]["history"][0]["status_code"] == 400


async def test_unknown_ids_are_clear_errors(relay, capsys):
    """A missing or malformed id is one line on stderr and exit 1, no traceback."""
    code, _, err = run(capsys, relay, "show", "ffffffffff")
    assert (code, err.strip()) == (1, "no event ffffffffff")
    code, _, err = run(capsys, relay, "retry", "xyz")
    assert code == 1
    assert "not an event id" in err


async def test_retrying_dead_deliveries_delivers_them(relay, receiver, capsys):
    """retry --dead requeues the dead delivery, and the worker then delivers it."""
    code, out, _ = run(capsys, relay, "retry", "--dead")
    assert (code, out.strip()) == (0, "requeued 1 delivery")
    await relay.app[WORKER].drain()
    assert json.loads(receiver.requests[-1].body)["data"]["email"] == "dead@example.com"
    counts = await relay.app[OUTBOX].counts()
    assert (counts["dead"], counts["delivered"]) == (0, 2)


async def test_retry_by_event_id_makes_a_retrying_delivery_due_now(relay, receiver, capsys):
    """retry EVENT_ID sends a delivery that was waiting for its backoff right away."""
    run(capsys, relay, "retry", relay.ids[2])
    await relay.app[WORKER].drain()
    assert json.loads(receiver.requests[-1].body)["data"]["email"] == "later@example.com"


async def test_purge_deletes_old_events_but_never_pending_ones(relay, capsys):
    """purge --older-than removes delivered and dead events, keeps the one still retrying."""
    code, out, _ = run(capsys, relay, "purge", "--older-than", "2d")
    assert (code, out.strip()) == (0, "purged 2 events")
    assert await relay.app[OUTBOX].counts() == {
        "pending": 0, "retrying": 1, "delivered": 0, "dead": 0,
    }  # fmt: skip


async def test_retention_deletes_delivered_events_and_keeps_dead_ones(relay):
    """After [storage].retention a delivered event is deleted; dead and pending ones stay."""
    relay.clock.advance(2 * DAY + 1)
    assert await relay.app[WORKER].cleanup() == 1
    counts = await relay.app[OUTBOX].counts()
    assert (counts["delivered"], counts["dead"], counts["retrying"]) == (0, 1, 1)


async def test_posts_during_shutdown_get_503(relay):
    """Once shutdown began, new posts are refused with 503 and Retry-After."""
    relay.app[STATE].closing = True
    response = await relay.post("/webhooks/dataslayer", json={"encrypted_data": "x"})
    assert response.status == 503
    assert response.headers["Retry-After"] == "5"


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("30s", 30), ("15m", 900), ("7d", 604800)]
)
def test_durations_read_like_people_write_them(text, seconds):
    """--since and --older-than take 30s, 15m, 1h, 7d, 2w."""
    assert parse_duration(text) == seconds
