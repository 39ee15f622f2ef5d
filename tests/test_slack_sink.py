"""The Slack sink against FakeSlack (a real local server), its limit fitting, and its config."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from relay.errors import DeliveryError, PermanentError, RetryableError
from relay.events import SAMPLE_EVENT, event_from_dict
from relay.secret import Secret
from relay.sinks.base import Message, SinkContext
from relay.sinks.slack import (
    MAX_TEXT,
    SlackConfig,
    SlackSink,
    classify_answer,
    fit_block,
    fit_blocks,
    truncate,
)
from relay.testing.slack import FakeSlack

TOKEN = "xoxb-test-0123456789"
CHANNEL = "#client-access"
BLOCKS = [{"type": "section", "text": {"type": "mrkdwn", "text": "*google_ads* shared"}}]


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(token=TOKEN, unknown_channels={"#nowhere"}) as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def webhook_sink(url: str, http: aiohttp.ClientSession, timeout: float = 2) -> SlackSink:
    config = SlackConfig(type="slack", webhook_url=Secret(url))
    return SlackSink("team-slack", config, SinkContext(http=http, timeout=timeout))


def bot_sink(
    api_url: str,
    http: aiohttp.ClientSession,
    *,
    token: str = TOKEN,
    channel: str = CHANNEL,
    timeout: float = 2,
) -> SlackSink:
    config = SlackConfig(type="slack", token=Secret(token), channel=channel, api_url=api_url)
    return SlackSink("team-slack", config, SinkContext(http=http, timeout=timeout))


def sink_for(mode: str, slack: FakeSlack, http: aiohttp.ClientSession, **kw: Any) -> SlackSink:
    if mode == "webhook":
        return webhook_sink(slack.webhook_url, http, **kw)
    return bot_sink(slack.api_url, http, **kw)


def message(text: str = "Ana shared *google_ads*", blocks: Any = None) -> Message:
    parts = {"text": text}
    if blocks is not None:
        parts["blocks"] = blocks if isinstance(blocks, str) else json.dumps(blocks)
    event = event_from_dict(SAMPLE_EVENT, received_at=0.0)
    return Message(event=event, sink="team-slack", parts=parts)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


MODES = pytest.mark.parametrize("mode", ["webhook", "bot"])


# --- delivery ----------------------------------------------------------------------------------


async def test_webhook_delivers_text_and_blocks(slack: FakeSlack, http: aiohttp.ClientSession):
    """An incoming webhook receives the text and the parsed blocks, and the send succeeds."""
    await webhook_sink(slack.webhook_url, http).send(message(blocks=BLOCKS))

    [received] = await slack.wait_for_messages(1)
    assert received == {"text": "Ana shared *google_ads*", "blocks": BLOCKS}
    assert slack.requests[0].path.startswith("/services/")


async def test_bot_token_posts_to_channel_with_authorization(
    slack: FakeSlack, http: aiohttp.ClientSession
):
    """With a bot token, chat.postMessage gets the channel, text, blocks and a Bearer token."""
    await bot_sink(slack.api_url, http).send(message(blocks=BLOCKS))

    [received] = await slack.wait_for_messages(1)
    assert received["channel"] == CHANNEL
    assert received["text"] == "Ana shared *google_ads*"
    assert received["blocks"] == BLOCKS
    request = slack.requests[0]
    assert request.path == "/api/chat.postMessage"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_text_only_message_sends_no_blocks(slack: FakeSlack, http: aiohttp.ClientSession):
    """A message without a blocks part (or with an empty list) is sent as text alone."""
    sink = webhook_sink(slack.webhook_url, http)
    await sink.send(message())
    await sink.send(message(blocks="[]"))

    received = await slack.wait_for_messages(2)
    assert received == [{"text": "Ana shared *google_ads*"}] * 2


async def test_oversized_message_is_fitted_and_accepted(
    slack: FakeSlack, http: aiohttp.ClientSession
):
    """Text and blocks beyond Slack's limits are truncated so that Slack accepts the message."""
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 5000}}] * 60
    await bot_sink(slack.api_url, http).send(message(text="y" * 50_000, blocks=blocks))

    [received] = await slack.wait_for_messages(1)
    assert len(received["text"]) == MAX_TEXT
    assert len(received["blocks"]) == 50


# --- failures ----------------------------------------------------------------------------------


@MODES
async def test_rate_limit_is_retryable_with_retry_after(
    mode: str, slack: FakeSlack, http: aiohttp.ClientSession
):
    """A 429 with Retry-After: 3 is a retryable rate_limited error asking for 3 seconds."""
    slack.script(FakeSlack.rate_limited(retry_after=3))

    with pytest.raises(RetryableError) as caught:
        await sink_for(mode, slack, http).send(message())

    assert caught.value.reason == "rate_limited"
    assert caught.value.retry_after == 3
    assert caught.value.status == 429
    assert slack.messages == []


async def test_webhook_invalid_blocks_is_permanent(slack: FakeSlack, http: aiohttp.ClientSession):
    """A webhook's 400 invalid_blocks is permanent and names Slack's error."""
    slack.script(FakeSlack.error("invalid_blocks", status=400))

    with pytest.raises(PermanentError) as caught:
        await webhook_sink(slack.webhook_url, http).send(message(blocks=BLOCKS))

    assert str(caught.value) == "Slack answered 400 invalid_blocks"
    assert caught.value.reason == "client"


async def test_invalid_auth_is_permanent_auth(slack: FakeSlack, http: aiohttp.ClientSession):
    """A 200 ok:false invalid_auth answer (wrong token) is a permanent auth error."""
    with pytest.raises(PermanentError) as caught:
        await bot_sink(slack.api_url, http, token="xoxb-wrong").send(message())

    assert caught.value.reason == "auth"
    assert "invalid_auth" in str(caught.value)
    assert slack.messages == []
    assert len(slack.requests) == 1


async def test_channel_not_found_is_permanent(slack: FakeSlack, http: aiohttp.ClientSession):
    """Posting to a channel Slack does not know is a permanent client error."""
    with pytest.raises(PermanentError) as caught:
        await bot_sink(slack.api_url, http, channel="#nowhere").send(message())

    assert caught.value.reason == "client"
    assert "channel_not_found" in str(caught.value)


@MODES
async def test_server_error_is_retryable(mode: str, slack: FakeSlack, http: aiohttp.ClientSession):
    """A 500 from Slack is a retryable server error."""
    slack.script(FakeSlack.server_error(500))

    with pytest.raises(RetryableError) as caught:
        await sink_for(mode, slack, http).send(message())

    assert caught.value.reason == "server"
    assert caught.value.status == 500


@MODES
async def test_connection_refused_is_retryable(mode: str, http: aiohttp.ClientSession):
    """Nothing listening on the port is a retryable connection error."""
    base = f"http://127.0.0.1:{closed_port()}"
    sink = (
        webhook_sink(f"{base}/services/T1/B1/secret", http)
        if mode == "webhook"
        else bot_sink(f"{base}/api/", http)
    )

    with pytest.raises(RetryableError) as caught:
        await sink.send(message())

    assert caught.value.reason == "connection"


@MODES
async def test_slow_answer_times_out_retryably(
    mode: str, slack: FakeSlack, http: aiohttp.ClientSession
):
    """An answer slower than the sink's timeout is a retryable timeout, even on a shared session."""
    slack.script(FakeSlack.slow(10))

    with pytest.raises(RetryableError) as caught:
        await sink_for(mode, slack, http, timeout=0.3).send(message())

    assert caught.value.reason == "timeout"


async def test_blocks_that_are_not_a_list_are_permanent(
    slack: FakeSlack, http: aiohttp.ClientSession
):
    """A blocks part that is not a JSON list is refused before anything is sent."""
    with pytest.raises(PermanentError) as caught:
        await webhook_sink(slack.webhook_url, http).send(message(blocks='{"type": "section"}'))

    assert caught.value.reason == "invalid"
    assert slack.requests == []


async def test_errors_and_logs_never_hold_the_credentials(
    slack: FakeSlack, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
):
    """Neither error messages nor debug logs contain the webhook URL, its path, or the token."""
    caplog.set_level(logging.DEBUG)
    secret_path = "/services/T9/B9/very-secret-part"
    refused = f"http://127.0.0.1:{closed_port()}{secret_path}"
    slack.script(FakeSlack.error("invalid_payload"), FakeSlack.rate_limited(1))
    attempts = [
        webhook_sink(slack.webhook_url, http).send(message()),
        webhook_sink(refused, http).send(message()),
        bot_sink(slack.api_url, http).send(message()),
        bot_sink(slack.api_url, http, token="xoxb-wrong-secret").send(message()),
    ]
    errors: list[DeliveryError] = []
    for attempt in attempts:
        with pytest.raises(DeliveryError) as caught:
            await attempt
        errors.append(caught.value)

    shown = " ".join(repr(e) + str(e) for e in errors) + caplog.text
    for secret in (slack.webhook_url, "/services/T000/B000/", secret_path, TOKEN, "wrong-secret"):
        assert secret not in shown
    assert all(e.__cause__ is None for e in errors)


def test_describe_names_host_but_no_credentials():
    """describe() names the host (and channel) but never the webhook path or the token."""
    hook = SlackConfig(type="slack", webhook_url=Secret("https://hooks.slack.com/services/T/B/X"))
    bot = SlackConfig(type="slack", token=Secret(TOKEN), channel=CHANNEL)

    assert SlackSink("s", hook, SinkContext()).describe() == "slack webhook (hooks.slack.com)"
    assert (
        SlackSink("s", bot, SinkContext()).describe()
        == "slack chat.postMessage to #client-access via slack.com"
    )


@pytest.mark.parametrize(
    ("status", "error", "retryable", "reason"),
    [
        (429, "rate_limited", True, "rate_limited"),
        (200, "ratelimited", True, "rate_limited"),
        (200, "internal_error", True, "server"),
        (503, "", True, "server"),
        (408, "", True, "timeout"),
        (200, "invalid_auth", False, "auth"),
        (200, "not_authed", False, "auth"),
        (404, "no_service", False, "auth"),
        (403, "action_prohibited", False, "client"),
        (410, "channel_is_archived", False, "client"),
        (400, "no_text", False, "client"),
        (200, "something_new", False, "client"),
    ],
)
def test_slack_answers_are_classified(status: int, error: str, retryable: bool, reason: str):
    """Each Slack answer maps to retryable or permanent with a reason, naming Slack's error."""
    result = classify_answer(status, error, retry_after=None)

    assert (result.retryable, result.reason, result.status) == (retryable, reason, status)
    assert str(result).startswith(f"Slack answered {status} {error}".strip())


# --- fitting to Slack's limits -----------------------------------------------------------------


def test_truncate_keeps_short_text_and_marks_cut_text():
    """Text within the limit is unchanged; longer text is cut to the limit ending with "…"."""
    assert truncate("short", 10) == "short"
    assert truncate("x" * 11, 10) == "x" * 9 + "…"


def test_sixty_blocks_become_fifty_with_a_notice():
    """Over 50 blocks: the first 49 are kept and a context block says how many are not shown."""
    blocks = [{"type": "divider", "n": i} for i in range(60)]

    fitted = fit_blocks(blocks)

    assert len(fitted) == 50
    assert fitted[:49] == blocks[:49]
    assert fitted[49] == {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": "… 11 more blocks not shown"}],
    }


def test_long_section_text_is_cut_to_3000():
    """A 5000-character section text becomes 3000 characters ending with "…"."""
    block = {"type": "section", "text": {"type": "mrkdwn", "text": "a" * 5000}}

    text = fit_block(block)["text"]["text"]

    assert len(text) == 3000
    assert text.endswith("…")
    assert len(block["text"]["text"]) == 5000  # the input is not changed


def test_header_text_is_cut_to_150():
    """A header's text is cut to 150 characters."""
    block = {"type": "header", "text": {"type": "plain_text", "text": "h" * 200}}

    assert len(fit_block(block)["text"]["text"]) == 150


def test_section_fields_are_cut_in_number_and_length():
    """Sections keep at most 10 fields (the last a notice), each at most 2000 characters."""
    fields = [{"type": "mrkdwn", "text": "f" * 2500} for _ in range(12)]

    fitted = fit_block({"type": "section", "fields": fields})["fields"]

    assert len(fitted) == 10
    assert all(len(f["text"]) == 2000 for f in fitted[:9])
    assert fitted[9] == {"type": "mrkdwn", "text": "… 3 more fields not shown"}


def test_context_element_text_is_cut_to_2000():
    """Context text elements are cut to 2000 characters; image elements are left alone."""
    image = {"type": "image", "image_url": "https://example.com/a.png", "alt_text": "a"}
    block = {"type": "context", "elements": [{"type": "mrkdwn", "text": "c" * 2500}, image]}

    elements = fit_block(block)["elements"]

    assert len(elements[0]["text"]) == 2000
    assert elements[1] == image


def test_unknown_blocks_pass_through():
    """Blocks the sink has no limits for, and non-objects, are passed on unchanged."""
    blocks = [{"type": "divider"}, {"type": "rich_text", "elements": []}, "not a block"]

    assert fit_blocks(blocks) == blocks


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            {"webhook_url": "https://hooks.slack.com/services/T/B/X", "token": TOKEN},
            "set either webhook_url or token, not both",
        ),
        ({}, "set webhook_url (incoming webhook) or token + channel"),
        ({"token": TOKEN}, "channel is required with token"),
        ({"webhook_url": "hooks.slack.com/services/T/B/X"}, "webhook_url must start with"),
        (
            {"webhook_url": "https://hooks.slack.com/services/T/B/X", "channel": "#x"},
            "channel applies only with token",
        ),
    ],
)
def test_config_rejects_wrong_ways_to_reach_slack(keys: dict[str, str], expected: str):
    """Config errors say what to set and never echo a secret."""
    with pytest.raises(ValidationError) as caught:
        SlackConfig(type="slack", **keys)

    assert expected in caught.value.errors()[0]["msg"]
    assert TOKEN not in str(caught.value)
    assert "/services/T/B/X" not in str(caught.value)


def test_config_normalises_api_url_and_forbids_unknown_keys():
    """api_url gets its trailing slash; unknown keys are refused."""
    config = SlackConfig(
        type="slack", token=Secret(TOKEN), channel=CHANNEL, api_url="http://localhost:9/api"
    )
    assert config.api_url == "http://localhost:9/api/"

    with pytest.raises(ValidationError, match="chanel"):
        SlackConfig(type="slack", token=TOKEN, channel=CHANNEL, chanel="#x")  # type: ignore[call-arg]


# --- FakeSlack itself --------------------------------------------------------------------------


async def test_fake_refuses_too_many_blocks_and_records_the_request(
    slack: FakeSlack, http: aiohttp.ClientSession
):
    """FakeSlack answers 400 invalid_blocks to 51 blocks, records the request, accepts nothing."""
    payload = {"text": "t", "blocks": [{"type": "divider"}] * 51}

    async with http.post(slack.webhook_url, json=payload) as response:
        assert (response.status, await response.text()) == (400, "invalid_blocks")

    assert slack.messages == []
    assert slack.requests[0].payload == payload


async def test_fake_accepts_form_encoded_post_message(
    slack: FakeSlack, http: aiohttp.ClientSession
):
    """FakeSlack takes a form-encoded chat.postMessage with the token in the body."""
    form = {"token": TOKEN, "channel": CHANNEL, "text": "hi", "blocks": json.dumps(BLOCKS)}

    async with http.post(slack.api_url + "chat.postMessage", data=form) as response:
        assert (await response.json())["ok"] is True

    assert slack.messages[0]["blocks"] == BLOCKS


async def test_fake_refuses_a_message_without_text(slack: FakeSlack, http: aiohttp.ClientSession):
    """A blank text and no blocks is answered no_text, which the sink reports as permanent."""
    with pytest.raises(PermanentError, match="no_text"):
        await webhook_sink(slack.webhook_url, http).send(message(text="  "))
