"""FakeSlack: a local server that answers like Slack's incoming webhooks and ``chat.postMessage``.

For testing sinks and templates without Slack::

    async with FakeSlack(token="xoxb-test") as slack:
        # point a slack sink at slack.webhook_url, or at slack.api_url with token "xoxb-test"
        slack.script(FakeSlack.rate_limited(retry_after=3))  # the next request gets a 429
        ...
        await slack.wait_for_messages(1)
        assert "google_ads" in slack.messages[0]["text"]

It checks messages where templates usually go wrong (more than 50 blocks, over-long texts, no text)
and refuses them the way Slack does, so a template accepted here is unlikely to be refused there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from relay.testing import LocalServer

WEBHOOK_PATH = "/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX"

# Slack's limits, as its docs state them; written out here rather than imported from the sink so
# that the fake checks the sink instead of agreeing with it.
_MAX_TEXT = 40_000
_MAX_BLOCKS = 50
_TEXT_LIMITS = {"section": 3_000, "header": 150}
_MAX_FIELDS = 10
_MAX_FIELD_TEXT = 2_000
_MAX_CONTEXT_ELEMENTS = 10


@dataclass(frozen=True)
class Answer:
    """One scripted answer. ``error`` None means success, after ``delay`` seconds.

    Incoming webhooks answer ``webhook_status`` with ``webhook_body`` (default: ``error``) as text;
    the Web API answers ``api_status`` with ``{"ok": false, "error": error}``.
    """

    error: str | None = None
    webhook_status: int = 200
    api_status: int = 200
    webhook_body: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class ReceivedRequest:
    """A request FakeSlack received, accepted or not. ``payload`` is {} when it was unreadable."""

    path: str
    payload: dict[str, Any]
    headers: Mapping[str, str]
    time: float


class FakeSlack(LocalServer):
    """Slack on 127.0.0.1 and a free port; use as ``async with FakeSlack() as slack``.

    ``token`` is the bot token ``chat.postMessage`` expects (any token when None);
    ``unknown_channels`` answer ``channel_not_found``. ``port`` 0 picks a free port; a fixed one
    lets a test bring Slack "back up" at the same URL.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        unknown_channels: set[str] | frozenset[str] = frozenset(),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.token = token
        self.unknown_channels = frozenset(unknown_channels)
        self.host = host
        self.port = port
        self.messages: list[dict[str, Any]] = []
        self.requests: list[ReceivedRequest] = []
        self._script: list[Answer] = []
        self._arrived = asyncio.Condition()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # --- scripted answers ----------------------------------------------------------------------

    @staticmethod
    def ok() -> Answer:
        """Success (the default once the script runs out)."""
        return Answer()

    @staticmethod
    def rate_limited(retry_after: int = 1) -> Answer:
        """HTTP 429 with ``Retry-After``, as Slack answers when rate-limiting."""
        return Answer(
            error="ratelimited",
            webhook_body="rate_limited",
            webhook_status=429,
            api_status=429,
            headers={"Retry-After": str(retry_after)},
        )

    @staticmethod
    def error(code: str, status: int = 400) -> Answer:
        """Slack refusing with ``code``: webhook HTTP ``status``; Web API 200 ``ok: false``."""
        return Answer(error=code, webhook_status=status)

    @staticmethod
    def server_error(status: int = 500, code: str = "internal_error") -> Answer:
        """Slack failing: HTTP ``status`` on both APIs."""
        return Answer(error=code, webhook_status=status, api_status=status)

    @staticmethod
    def slow(seconds: float) -> Answer:
        """Success, answered after ``seconds``."""
        return Answer(delay=seconds)

    def script(self, *answers: Answer) -> None:
        """Queue answers, used one per request in order; then requests are answered normally."""
        self._script.extend(answers)

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def webhook_url(self) -> str:
        return self.url + WEBHOOK_PATH

    @property
    def api_url(self) -> str:
        return self.url + "/api/"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/services/{rest:.*}", self._on_webhook)
        app.router.add_post("/api/{method}", self._on_api)
        # Slow answers end early on close, so a short shutdown timeout loses nothing. No access
        # log: a webhook's path is its secret, and tests check that nothing logs it.
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # A deadline of its own reads best in a test: `await slack.wait_for_messages(2)`.
    async def wait_for_messages(
        self,
        count: int,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` messages were accepted; raises TimeoutError saying how many came."""
        try:
            async with asyncio.timeout(timeout), self._arrived:
                await self._arrived.wait_for(lambda: len(self.messages) >= count)
        except TimeoutError:
            got = len(self.messages)
            raise TimeoutError(
                f"FakeSlack accepted {got} of {count} messages in {timeout}s"
            ) from None
        return list(self.messages)

    # --- handlers ------------------------------------------------------------------------------

    async def _on_webhook(self, request: web.Request) -> web.StreamResponse:
        payload = await self._receive(request)
        answer = await self._next_answer()
        if answer.error is not None:
            body = answer.webhook_body or answer.error
            return _text(answer.webhook_status, body, answer.headers)
        if request.path != WEBHOOK_PATH:
            return _text(404, "no_service")
        problem = "invalid_payload" if payload is None else message_problem(payload)
        if problem:
            return _text(400, problem)
        await self._accept(payload or {})
        return _text(200, "ok")

    async def _on_api(self, request: web.Request) -> web.StreamResponse:
        payload = await self._receive(request)
        answer = await self._next_answer()
        if answer.error is not None:
            return _api_error(answer.error, answer.api_status, answer.headers)
        if request.match_info["method"] != "chat.postMessage":
            return _api_error("unknown_method", 404)
        if payload is None:
            return _api_error("invalid_json")
        problem = self._auth_problem(request, payload) or self._post_problem(payload)
        if problem:
            return _api_error(problem)
        await self._accept(payload)
        return web.json_response({"ok": True, "channel": "C123", "ts": f"{time.time():.6f}"})

    def _auth_problem(self, request: web.Request, payload: Mapping[str, Any]) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token if scheme.lower() == "bearer" else str(payload.get("token") or "")
        if not token:
            return "not_authed"
        if self.token is not None and token != self.token:
            return "invalid_auth"
        return None

    def _post_problem(self, payload: Mapping[str, Any]) -> str | None:
        channel = payload.get("channel")
        if not channel or channel in self.unknown_channels:
            return "channel_not_found"
        return message_problem(payload)

    # --- plumbing ------------------------------------------------------------------------------

    async def _receive(self, request: web.Request) -> dict[str, Any] | None:
        payload = await _read_payload(request)
        headers = dict(request.headers)
        self.requests.append(ReceivedRequest(request.path, payload or {}, headers, time.time()))
        return payload

    async def _next_answer(self) -> Answer:
        answer = self._script.pop(0) if self._script else Answer()
        if answer.delay:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(answer.delay):  # not wait_for: see relay.worker
                    await self._closing.wait()
        if self._closing.is_set():
            raise web.HTTPServiceUnavailable(text="FakeSlack is closing")
        return answer

    async def _accept(self, payload: dict[str, Any]) -> None:
        async with self._arrived:
            self.messages.append(payload)
            self._arrived.notify_all()


async def _read_payload(request: web.Request) -> dict[str, Any] | None:
    """The JSON or form body as a dict (``blocks`` and webhook ``payload`` fields decoded)."""
    try:
        if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            return _decode_form(dict(await request.post()))
        data = await request.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _decode_form(form: dict[str, Any]) -> dict[str, Any] | None:
    if isinstance(form.get("payload"), str):  # incoming webhooks also take payload=<json>
        data = json.loads(form["payload"])
        return data if isinstance(data, dict) else None
    if isinstance(form.get("blocks"), str):
        form["blocks"] = json.loads(form["blocks"])
    return form


def message_problem(payload: Mapping[str, Any]) -> str | None:
    """Slack's error code for a message it would refuse, or None."""
    text, blocks = payload.get("text"), payload.get("blocks")
    if blocks is not None and not _blocks_ok(blocks):
        return "invalid_blocks"
    if not blocks and not (isinstance(text, str) and text.strip()):
        return "no_text"
    if isinstance(text, str) and len(text) > _MAX_TEXT:
        return "msg_too_long"
    return None


def _blocks_ok(blocks: Any) -> bool:
    if not isinstance(blocks, list) or len(blocks) > _MAX_BLOCKS:
        return False
    return all(_block_ok(block) for block in blocks)


def _block_ok(block: Any) -> bool:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        return False
    limit = _TEXT_LIMITS.get(block["type"])
    if limit is not None and len(_text_of(block.get("text"))) > limit:
        return False
    fields = block.get("fields") or []
    if len(fields) > _MAX_FIELDS or any(len(_text_of(f)) > _MAX_FIELD_TEXT for f in fields):
        return False
    return block["type"] != "context" or len(block.get("elements") or []) <= _MAX_CONTEXT_ELEMENTS


def _text_of(obj: Any) -> str:
    text = obj.get("text") if isinstance(obj, dict) else None
    return text if isinstance(text, str) else ""


def _text(status: int, body: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=body, headers=dict(headers or {}))


def _api_error(
    error: str, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"ok": False, "error": error}, status=status, headers=dict(headers or {})
    )
