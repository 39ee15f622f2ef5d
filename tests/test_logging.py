"""Logs: readable text by default, JSON lines on request; every line about an event has its id."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import time

import aiohttp
import pytest

from relay.clock import FakeClock
from relay.config import load_config
from relay.crypto import encrypt
from relay.logs import JsonFormatter, MaskPersonalData
from relay.server import WORKER, create_app
from relay.testing.slack import FakeSlack
from relay.testing.webhook import FakeReceiver
from tests.helpers import BY_NAME, SECRET, VECTOR_NOW, eventually, write_config
from tests.helpers_process import RelayProcess, free_port

PATH = "/webhooks/dataslayer"


@pytest.fixture
def json_log():
    """The relay's log lines as the JSON formatter writes them (parsed), while the test runs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(MaskPersonalData())
    logger = logging.getLogger("relay")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
async def slack():
    async with FakeSlack() as fake:
        yield fake


async def relay_with_slack(tmp_path, aiohttp_client, slack, clock):
    body = f"""
    [delivery]
    max_attempts = 2
    [sinks.team-slack]
    type = "slack"
    webhook_url = "{slack.webhook_url}"
    [[routes]]
    sinks = ["team-slack"]
    """
    config = load_config(write_config(tmp_path, body), environ={})
    return await aiohttp_client(create_app(config, clock=clock, run_worker=False))


async def test_json_lines_about_an_event_carry_its_id(tmp_path, aiohttp_client, slack, json_log):
    """Accepted and delivered lines parse as JSON with time, level, logger, message and event_id."""
    client = await relay_with_slack(tmp_path, aiohttp_client, slack, FakeClock(VECTOR_NOW))
    response = await client.post(PATH, json={"encrypted_data": BY_NAME["basic"]["token"]})
    event_id = (await response.json())["id"]
    await client.app[WORKER].drain()

    lines = json_log()
    about = [line for line in lines if line.get("event_id") == event_id]
    messages = [line["message"] for line in about]
    assert any(m.startswith("accepted event") for m in messages), messages
    assert any(m.startswith("delivered event") for m in messages), messages
    for line in about:
        assert set(line) >= {"time", "level", "logger", "message", "event_id"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["time"])
        assert line["level"] == "INFO"
        assert line["logger"].startswith("relay.")
    assert "ana.lopez@example.com" not in json.dumps(lines)
    delivered = next(line for line in about if line["message"].startswith("delivered"))
    assert delivered["sink"] == "team-slack"


async def test_failed_and_dead_deliveries_log_the_event_id(
    tmp_path, aiohttp_client, slack, json_log
):
    """A retry warning and a dead error both carry the event id and the sink."""
    clock = FakeClock(VECTOR_NOW)
    client = await relay_with_slack(tmp_path, aiohttp_client, slack, clock)
    slack.script(FakeSlack.server_error(500), FakeSlack.server_error(500))
    response = await client.post(PATH, json={"encrypted_data": BY_NAME["basic"]["token"]})
    event_id = (await response.json())["id"]
    await client.app[WORKER].drain()
    clock.advance(3600)
    await client.app[WORKER].drain()

    by_level = {line["level"]: line for line in json_log() if line.get("event_id") == event_id}
    assert "failed" in by_level["WARNING"]["message"]
    assert "is dead" in by_level["ERROR"]["message"]
    assert by_level["ERROR"]["sink"] == "team-slack"


async def test_lines_not_about_an_event_have_no_event_id(tmp_path, aiohttp_client, slack, json_log):
    """A refused token is logged without an event id (there is no event)."""
    client = await relay_with_slack(tmp_path, aiohttp_client, slack, FakeClock(VECTOR_NOW))
    wrong = encrypt("another-secret-of-32-characters!", b'{"type": "x"}', now=VECTOR_NOW)
    await client.post(PATH, json={"encrypted_data": wrong})
    refused = [line for line in json_log() if "refused" in line["message"]]
    assert refused
    assert all("event_id" not in line for line in refused)


@pytest.mark.parametrize(
    ("token", "days_later", "reason"),
    [
        (BY_NAME["basic"]["token"], 2, "token is 2 days old; max_token_age is 1 day"),
        (
            encrypt("another-secret-of-32-characters!", b'{"type": "x"}', now=VECTOR_NOW),
            0,
            "token was not made with any configured secret (or was altered)",
        ),
        ("not-a-token", 0, "not a Fernet token"),
    ],
    ids=["expired", "wrong-secret", "not-fernet"],
)
async def test_a_refused_token_is_logged_with_the_reason(
    tmp_path, aiohttp_client, slack, json_log, token, days_later, reason
):
    """The warning for a refused token names the client and says why it was refused."""
    clock = FakeClock(VECTOR_NOW + days_later * 86400)
    client = await relay_with_slack(tmp_path, aiohttp_client, slack, clock)
    response = await client.post(PATH, json={"encrypted_data": token})
    assert response.status == 401
    refused = [line for line in json_log() if line["message"].startswith("refused")]
    assert [(line["level"], line["message"]) for line in refused] == [
        ("WARNING", f"refused a request from 127.0.0.1: {reason}")
    ]


def test_an_exception_stays_on_one_json_line():
    """A logged traceback goes into the line's "exception" field, not onto lines of its own."""
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("relay.test").makeRecord(
            "relay.test", logging.ERROR, __file__, 1, "it failed", (), sys.exc_info()
        )
    text = JsonFormatter().format(record)
    assert "\n" not in text
    line = json.loads(text)
    assert line["message"] == "it failed"
    assert "ValueError: boom" in line["exception"]


async def serve_and_deliver(folder, logging_section: str, *, logged: bool = True) -> str:
    """Run `relay serve` with ``logging_section``, deliver one event, stop; its whole output."""
    folder.mkdir(exist_ok=True)
    port = free_port()
    async with FakeReceiver() as receiver:
        body = f"""
        [server]
        port = {port}
        {logging_section}
        [sinks.crm]
        type = "webhook"
        url = "{receiver.url}"
        [[routes]]
        sinks = ["crm"]
        """
        relay = RelayProcess(write_config(folder, body), port)
        await relay.start()
        try:
            event = {"type": "shared_connection", "email": "ana@example.com", "n": 1}
            token = encrypt(SECRET, json.dumps(event).encode(), now=time.time())
            async with aiohttp.ClientSession() as session:
                response = await session.post(relay.url + PATH, json={"encrypted_data": token})
                assert response.status == 200
            await receiver.wait_for(1)
            if logged:
                await eventually(lambda: "delivered event" in relay.log.read_text())
        finally:
            await relay.stop()
    return relay.log.read_text()


async def test_relay_serve_writes_json_lines_when_configured(tmp_path):
    """With [logging] format = "json", every line `relay serve` writes is a JSON object."""
    output = await serve_and_deliver(tmp_path, '[logging]\nformat = "json"')
    lines = [json.loads(line) for line in output.splitlines()]
    assert any("listening on" in line["message"] for line in lines)
    accepted = next(line for line in lines if line["message"].startswith("accepted event"))
    delivered = next(line for line in lines if line["message"].startswith("delivered event"))
    assert accepted["event_id"] == delivered["event_id"]
    assert accepted["event_id"] in accepted["message"]
    assert "ana@example.com" not in output


async def test_relay_serve_logs_text_by_default(tmp_path):
    """Without a [logging] section, lines are readable text: time, level, logger, message."""
    output = await serve_and_deliver(tmp_path, "")
    line = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO +relay: relay \S+ listening on"
    assert re.search(line, output, re.MULTILINE), output


async def test_relay_serve_honours_the_log_level(tmp_path):
    """With level = "warning", info lines (listening, accepted, delivered) are left out."""
    output = await serve_and_deliver(tmp_path, '[logging]\nlevel = "warning"', logged=False)
    assert "listening on" not in output
    assert "accepted event" not in output


def _filtered(message: str, **kwargs) -> str:
    record = logging.LogRecord("relay.test", logging.INFO, __file__, 1, message, None, None)
    MaskPersonalData(**kwargs).filter(record)
    return record.getMessage()


def test_the_log_filter_masks_emails_unless_personal_data_is_shown():
    """Emails are masked by default and kept with show_personal_data; control chars always go."""
    assert _filtered("from ana@example.com") == "from a***@example.com"
    assert _filtered("from ana@example.com", mask_emails=False) == "from ana@example.com"
    assert _filtered("HTTP 400: a\nFAKE LINE\x1b[2J") == "HTTP 400: a\\nFAKE LINE\\x1b[2J"


def test_malformed_http_requests_log_one_warning_without_traceback():
    """aiohttp's parser errors become one warning line naming the error, not an ERROR traceback."""
    from aiohttp.http_exceptions import LineTooLong

    from relay.logs import QuietMalformedRequests

    try:
        raise LineTooLong(b"X-Token: aaaa", 8190, 9000)
    except LineTooLong:
        record = logging.LogRecord(
            "aiohttp.server",
            logging.ERROR,
            __file__,
            1,
            "Error handling request",
            None,
            sys.exc_info(),
        )
    QuietMalformedRequests().filter(record)
    assert record.levelname == "WARNING"
    assert record.getMessage() == "refused a malformed HTTP request (LineTooLong)"
    assert record.exc_info is None


async def test_a_real_malformed_request_leaves_no_traceback_in_the_log(tmp_path):
    """An oversized header on a running relay gets a 400 and one warning line, no traceback."""
    import asyncio as aio

    from tests.helpers import write_config
    from tests.helpers_process import RelayProcess, free_port

    port = free_port()
    relay = RelayProcess(write_config(tmp_path, f"[server]\nport = {port}\n"), port)
    await relay.start()
    try:
        reader, writer = await aio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /webhooks/dataslayer HTTP/1.1\r\nHost: x\r\nX-Token: "
            + b"a" * 9000
            + b"\r\n\r\n"
        )
        await writer.drain()
        status_line = await reader.readline()
        writer.close()
        assert b" 400 " in status_line
    finally:
        await relay.stop()
    log = relay.log.read_text()
    assert "refused a malformed HTTP request (LineTooLong)" in log
    assert "Traceback" not in log
