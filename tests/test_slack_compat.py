"""The Slack sink against Slack-compatible servers that answer otherwise than Slack does."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from relay.errors import PermanentError
from relay.events import SAMPLE_EVENT, event_from_dict
from relay.secret import Secret
from relay.sinks.base import Message, SinkContext
from relay.sinks.slack import SlackConfig, SlackSink

ANSWERS = {
    "/plain-ok": lambda: web.Response(text="ok"),
    "/json-ok": lambda: web.json_response({"ok": True}),
    "/empty-204": lambda: web.Response(status=204),
    "/json-success": lambda: web.json_response({"success": True}),
    "/json-refusal": lambda: web.json_response({"ok": False, "error": "invalid_blocks"}),
    "/text-refusal": lambda: web.Response(text="invalid_token"),
    "/api/chat.postMessage": lambda: web.Response(text="ok"),
}


@pytest.fixture
async def compatible() -> AsyncIterator[str]:
    """A local server answering each path as in ANSWERS."""

    async def answer(request: web.Request) -> web.StreamResponse:
        return ANSWERS[request.path]()

    app = web.Application()
    for path in ANSWERS:
        app.router.add_post(path, answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def message() -> Message:
    return Message(event_from_dict(SAMPLE_EVENT, 0.0), "chat", {"text": "hello"})


def webhook(url: str, http: aiohttp.ClientSession) -> SlackSink:
    config = SlackConfig(type="slack", webhook_url=Secret(url))
    return SlackSink("chat", config, SinkContext(http=http, timeout=2))


@pytest.mark.parametrize("path", ["/plain-ok", "/json-ok", "/json-success", "/empty-204"])
async def test_a_2xx_that_says_ok_in_any_form_is_a_success(compatible, path):
    """A 2xx answer of "ok", nothing, or a JSON object that does not refuse means posted."""
    async with aiohttp.ClientSession() as http:
        await webhook(compatible + path, http).send(message())


@pytest.mark.parametrize(
    ("path", "code", "reason"),
    [("/json-refusal", "invalid_blocks", "client"), ("/text-refusal", "invalid_token", "auth")],
)
async def test_a_refusal_with_200_is_a_permanent_error_named_by_its_code(
    compatible, path, code, reason
):
    """A 200 whose body is {"ok": false, "error": CODE} or Slack's text CODE is a refusal: the
    body is checked as well as the status."""
    async with aiohttp.ClientSession() as http:
        with pytest.raises(PermanentError) as caught:
            await webhook(compatible + path, http).send(message())
    assert code in str(caught.value)
    assert caught.value.reason == reason


async def test_a_web_api_that_answers_plain_text_is_a_clear_permanent_error(compatible):
    """A bot-token sink whose api_url answers 200 "ok" (not the Web API) fails clearly."""
    config = SlackConfig(
        type="slack", token=Secret("xoxb-0123456789"), channel="#c", api_url=compatible + "/api/"
    )
    async with aiohttp.ClientSession() as http:
        sink = SlackSink("chat", config, SinkContext(http=http, timeout=2))
        with pytest.raises(PermanentError) as caught:
            await sink.send(message())
    assert "api_url" in str(caught.value)
    assert caught.value.reason == "client"


async def test_an_empty_text_without_blocks_is_refused_before_sending(compatible):
    """A message Slack would refuse (no_text) is dead at once, without a request."""
    empty = Message(event_from_dict(SAMPLE_EVENT, 0.0), "chat", {"text": "  "})
    async with aiohttp.ClientSession() as http:
        with pytest.raises(PermanentError) as caught:
            await webhook(compatible + "/plain-ok", http).send(empty)
    assert "no_text" in str(caught.value)
    assert caught.value.reason == "invalid"
