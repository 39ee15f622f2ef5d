"""No secret ever shows: not in logs, answers, errors, `relay check` output, reprs or the outbox."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from relay.cli import main
from relay.clock import FakeClock
from relay.config import load_config
from relay.crypto import encrypt
from relay.server import OUTBOX, WORKER, create_app
from relay.testing.slack import FakeSlack
from relay.testing.smtp import FakeSMTP
from relay.testing.webhook import FakeReceiver, Reply
from tests.helpers import SECRET, VECTOR_NOW, write_config

PREVIOUS = "prev-secret-0123456789abcdefghij"
BOT_TOKEN = "xoxb-bot-token-7731"
SMTP_PASSWORD = "smtp-pass-9876"
CRM_TOKEN = "crm-token-5555"
SIGNING = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BASIC_PASSWORD = "basic-pass-4242"


def secrets(slack):
    webhook_secret_part = slack.webhook_url.rsplit("/", 1)[1]
    return {
        "dataslayer secret": SECRET,
        "previous secret": PREVIOUS,
        "fernet key": base64.urlsafe_b64encode(SECRET.encode()).decode(),
        "slack webhook path": webhook_secret_part,
        "slack bot token": BOT_TOKEN,
        "smtp password": SMTP_PASSWORD,
        "crm token": CRM_TOKEN,
        "signing secret": SIGNING,
        "signing key": SIGNING.removeprefix("whsec_"),
        "basic password": BASIC_PASSWORD,
    }


@pytest.fixture
async def receivers():
    async with (
        FakeSlack(token=BOT_TOKEN) as slack,
        FakeSMTP(users={"relay": SMTP_PASSWORD}) as smtp,
        FakeReceiver([SIGNING]) as hook,
    ):
        yield slack, smtp, hook


def config_text(slack, smtp, hook):
    return f"""
    previous_secrets = ["{PREVIOUS}"]
    [server.auth]
    type = "basic"
    username = "dataslayer"
    password = "{BASIC_PASSWORD}"
    [sinks.hook-slack]
    type = "slack"
    webhook_url = "{slack.webhook_url}"
    rate = 0
    [sinks.bot-slack]
    type = "slack"
    token = "{BOT_TOKEN}"
    channel = "#access"
    api_url = "{slack.api_url}"
    rate = 0
    [sinks.mail]
    type = "email"
    host = "{smtp.host}"
    port = {smtp.port}
    security = "none"
    username = "relay"
    password = "{SMTP_PASSWORD}"
    from = "relay@example.com"
    to = "ops@example.com"
    [sinks.bad-mail]
    type = "email"
    host = "{smtp.host}"
    port = {smtp.port}
    security = "none"
    username = "relay"
    password = "{SMTP_PASSWORD}x"
    from = "relay@example.com"
    to = "ops@example.com"
    [sinks.crm]
    type = "webhook"
    url = "{hook.url}?token={CRM_TOKEN}"
    headers = {{ Authorization = "Bearer {CRM_TOKEN}" }}
    signing_secret = "{SIGNING}"
    [[routes]]
    sinks = ["hook-slack", "bot-slack", "mail", "bad-mail", "crm"]
    """


async def test_no_secret_appears_anywhere_through_success_and_failure(
    tmp_path, receivers, aiohttp_client, caplog, capsys
):
    """Successes, retries, permanent failures and refusals leak no secret into any output."""
    caplog.set_level(logging.DEBUG)
    slack, smtp, hook = receivers
    path = write_config(tmp_path, config_text(slack, smtp, hook))
    config = load_config(path, environ={})
    clock = FakeClock(VECTOR_NOW)
    client = await aiohttp_client(create_app(config, clock=clock, run_worker=False))
    auth = {
        "Authorization": "Basic "
        + base64.b64encode(f"dataslayer:{BASIC_PASSWORD}".encode()).decode()
    }
    answers = []

    async def post(token, headers=auth):
        response = await client.post(
            "/webhooks/dataslayer", json={"encrypted_data": token}, headers=headers
        )
        answers.append(await response.text())

    # 403 to an incoming webhook, 200 {"ok": false} to the bot: a refusal whichever gets it.
    slack.script(FakeSlack.server_error(500), FakeSlack.error("invalid_auth", status=403))
    hook.reply(
        Reply(500, f"upstream said {CRM_TOKEN}"), Reply(401, f"bad token Bearer {CRM_TOKEN}")
    )
    for n, secret in enumerate((SECRET, PREVIOUS)):
        event = {"type": "shared_connection", "datasource": "ga4", "email": f"c{n}@example.com"}
        await post(encrypt(secret, json.dumps(event).encode(), now=VECTOR_NOW))
    await post(encrypt("wrong-secret-0123456789abcdefghi", b'{"type": "x"}', now=VECTOR_NOW))
    await post("garbage")
    await post(
        "x", headers={"Authorization": "Basic " + base64.b64encode(b"dataslayer:nope").decode()}
    )
    for _ in range(3):
        await client.app[WORKER].drain()
        clock.advance(3600)

    assert len(slack.messages) >= 2
    assert len(smtp.messages) == 2
    main(["check", "-c", str(path)])
    main(["outbox", "list", "--json", "-c", str(path)])
    main(["outbox", "show", "--json", (await _first_event(client)), "-c", str(path)])
    # aiosmtpd's own log is the fake server's side of the conversation, not the relay's.
    relay_side = [r for r in caplog.records if not r.name.startswith("mail.log")]
    outputs = {
        "logs": "\n".join(f"{r.name} {r.getMessage()}" for r in relay_side),
        "answers": "\n".join(answers),
        "cli": capsys.readouterr().out,
        "repr": repr(config),
        "outbox": _dump_outbox(client.app[OUTBOX]),
    }
    logged = outputs["logs"]
    for expected in (
        "relay.worker delivered event",
        "relay.worker event",  # a retry warning or a dead error
        "relay.server refused a request from 127.0.0.1: token was not made with",
        "relay.server refused a request from 127.0.0.1: missing or wrong credentials",
    ):
        assert expected in logged  # the log lines searched below were really captured
    assert " is dead: auth: SMTP 535" in logged
    assert "invalid_auth" in logged
    failures = outputs["outbox"]
    for expected in ("SMTP 535", "invalid_auth", "HTTP 500", "HTTP 401"):
        assert expected in failures  # the failure paths really ran
    assert "invalid_token" in outputs["answers"]
    assert "unauthorized" in outputs["answers"]
    for where, text in outputs.items():
        for name, value in secrets(slack).items():
            assert value not in text, f"the {name} appears in {where}"


async def _first_event(client):
    row = client.app[OUTBOX]._conn.execute("SELECT id FROM events LIMIT 1").fetchone()
    return row[0]


def _dump_outbox(outbox):
    rows = outbox._conn.execute(
        "SELECT last_error FROM deliveries UNION ALL SELECT error FROM attempts"
    )
    return "\n".join(str(r[0]) for r in rows)
