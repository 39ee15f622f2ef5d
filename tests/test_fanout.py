"""One event routed to Slack, email and a webhook: each receives it once, failures stay apart."""

from __future__ import annotations

import json

import pytest

from relay.clock import FakeClock
from relay.config import load_config
from relay.server import OUTBOX, WORKER, create_app
from relay.testing.slack import FakeSlack
from relay.testing.smtp import FakeSMTP
from relay.testing.webhook import FakeReceiver, Reply
from tests.helpers import BY_NAME, VECTOR_NOW, write_config

SIGNING = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
async def receivers():
    async with FakeSlack() as slack, FakeSMTP() as smtp, FakeReceiver([SIGNING]) as hook:
        yield slack, smtp, hook


@pytest.fixture
async def relay(tmp_path, receivers, aiohttp_client):
    slack, smtp, hook = receivers
    body = f"""
    [delivery]
    initial_backoff = 10
    [sinks.team-slack]
    type = "slack"
    webhook_url = "{slack.webhook_url}"
    [sinks.ops-mail]
    type = "email"
    host = "{smtp.host}"
    port = {smtp.port}
    security = "none"
    from = "Relay <relay@example.com>"
    to = ["ops@example.com"]
    [sinks.crm]
    type = "webhook"
    url = "{hook.url}"
    signing_secret = "{SIGNING}"
    [[routes]]
    datasource = "google_*"
    sinks = ["team-slack", "ops-mail", "crm"]
    """
    config = load_config(write_config(tmp_path, body), environ={})
    clock = FakeClock(VECTOR_NOW)
    client = await aiohttp_client(create_app(config, clock=clock, run_worker=False))
    client.clock = clock
    return client


async def post_basic(relay):
    response = await relay.post(
        "/webhooks/dataslayer", json={"encrypted_data": BY_NAME["basic"]["token"]}
    )
    assert response.status == 200
    return (await response.json())["id"]


async def test_one_event_reaches_slack_email_and_webhook_once(relay, receivers):
    """Each of the three sinks receives the event exactly once, with its data."""
    slack, smtp, hook = receivers
    event_id = await post_basic(relay)
    await relay.app[WORKER].drain()
    assert len(slack.messages) == 1
    assert len(smtp.messages) == 1
    assert len(hook.requests) == 1
    assert "ana.lopez@example.com" in slack.messages[0]["text"]
    assert "ana.lopez@example.com" in smtp.messages[0].message.get_body(("plain",)).get_content()
    request = hook.requests[0]
    assert request.verified is True
    body = json.loads(request.body)
    assert body["type"] == "shared_connection"
    assert body["data"] == json.loads(BY_NAME["basic"]["plaintext"])
    assert request.headers["webhook-id"].startswith(event_id)


async def test_one_failing_sink_neither_blocks_nor_duplicates_the_others(relay, receivers):
    """The webhook fails twice; Slack and email deliver once, the webhook on its third try."""
    slack, smtp, hook = receivers
    hook.reply(Reply(503), Reply(500))
    await post_basic(relay)
    for _ in range(4):
        await relay.app[WORKER].drain()
        relay.clock.advance(60)
    assert len(slack.messages) == 1
    assert len(smtp.messages) == 1
    assert [r.body for r in hook.requests].count(hook.requests[-1].body) == 3
    assert len({r.headers["webhook-id"] for r in hook.requests}) == 1
    counts = await relay.app[OUTBOX].counts()
    assert counts == {"pending": 0, "retrying": 0, "delivered": 3, "dead": 0}
