"""The inbound webhook handler: who is asking, what they sent, and the answer.

Order of checks: shutting down (503), allow-list (403), failure limit (429), auth (401), size
(413), content type (415), body (400), token (401), event (422), storage (503). Every answer is
JSON and never holds secrets or plaintext.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from aiohttp import hdrs, web

from relay.clock import Clock
from relay.config import Config
from relay.errors import EventError, StorageError, TokenError
from relay.events import reject_constant
from relay.guard import (
    FailureLimiter,
    allowed,
    check_basic,
    check_token,
    client_address,
    parse_networks,
)
from relay.ingest import Ingest

log = logging.getLogger("relay.server")

JSON_TYPES = ("application/json",)
FORM_TYPE = "application/x-www-form-urlencoded"
COUNTED = frozenset({400, 401, 408, 413, 415})  # answers that count against the client's limit


@dataclass
class Gate:
    """Per-app request guard built from ``[server]``."""

    allow: tuple[Any, ...]
    trusted: tuple[Any, ...]
    limiter: FailureLimiter

    @classmethod
    def from_config(cls, config: Config, clock: Clock) -> Gate:
        s = config.server
        limiter = FailureLimiter(s.max_failures_per_minute, clock)
        return cls(parse_networks(s.allow_ips), parse_networks(s.trusted_proxies), limiter)


@dataclass
class State:
    """Mutable run state: ``closing`` once shutdown began (new posts get 503)."""

    closing: bool = False


CONFIG = web.AppKey("config", Config)
INGEST = web.AppKey("ingest", Ingest)
STATE = web.AppKey("state", State)
GATE = web.AppKey("gate", Gate)


def answer(http_status: int, /, headers: dict[str, str] | None = None, **body: Any) -> web.Response:
    return web.json_response(body, status=http_status, headers=headers)


async def handle_webhook(request: web.Request) -> web.Response:
    gate = request.app[GATE]
    # Repeated header lines are one comma-separated list (RFC 9110); some proxies add a line
    # rather than append, so reading only the first would trust what the client wrote.
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", [])) or None
    client = client_address(request.remote, forwarded, gate.trusted)
    refused = _refuse(request, gate, client)
    if refused is not None:
        return refused
    response = await _handle(request)
    if response.status in COUNTED:
        if response.status == 401:
            log.warning("refused a request from %s: %s", client, _detail(response))
        if gate.limiter.failed(client):
            log.warning(
                "%s reached server.max_failures_per_minute: its posts get 429 until its minute "
                "is over (behind a proxy, list the proxy in server.trusted_proxies)",
                client,
            )
    return response


def _refuse(request: web.Request, gate: Gate, client: str) -> web.Response | None:
    if request.app[STATE].closing:
        return answer(503, headers={"Retry-After": "5"}, error="unavailable")
    if not allowed(client, gate.allow):
        log.warning("refused a request from %s: not in server.allow_ips", client)
        return answer(403, error="forbidden", detail="this address may not post here")
    wait = gate.limiter.retry_after(client)
    if wait is not None:
        return answer(429, headers={"Retry-After": str(int(wait) + 1)}, error="too_many_requests")
    return None


def _detail(response: web.Response) -> str:
    try:
        return str(json.loads(response.text or "{}").get("detail", ""))
    except ValueError:
        return ""


async def _handle(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    if not _authorized(request, config):
        headers = {"WWW-Authenticate": 'Basic realm="relay"'} if _basic(config) else None
        return answer(
            401, headers=headers, error="unauthorized", detail="missing or wrong credentials"
        )
    body = await _read_body(request, config.server.max_body_bytes, config.server.body_timeout)
    if isinstance(body, web.Response):
        return body
    token = _token_from(body, request)
    if isinstance(token, web.Response):
        return token
    return await _receive(request, token)


def _basic(config: Config) -> bool:
    auth = config.server.auth
    return auth is not None and auth.type == "basic"


def _authorized(request: web.Request, config: Config) -> bool:
    auth = config.server.auth
    if auth is None:
        return True
    if auth.type == "basic":
        assert auth.username is not None and auth.password is not None
        header = request.headers.get(hdrs.AUTHORIZATION)
        return check_basic(header, auth.username, auth.password.reveal())
    assert auth.header is not None and auth.value is not None
    return check_token(request.headers.get(auth.header), auth.value.reveal())


async def _read_body(request: web.Request, limit: int, within: float) -> bytes | web.Response:
    """The body, refused before it is read whole when it is over ``limit``, or when it has not
    arrived within ``within`` seconds (a client trickling bytes holds a connection open)."""
    if request.content_length is not None and request.content_length > limit:
        return answer(413, error="too_large")
    try:
        async with asyncio.timeout(within):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return answer(413, error="too_large")
    except TimeoutError:
        detail = f"the body did not arrive within {within:g} s"
        return answer(408, headers={"Connection": "close"}, error="timeout", detail=detail)


def _token_from(body: bytes, request: web.Request) -> str | web.Response:
    declared = hdrs.CONTENT_TYPE in request.headers
    content_type = request.content_type if declared else "application/json"
    charset = (request.charset or "utf-8").lower().replace("_", "-")
    if content_type not in (*JSON_TYPES, FORM_TYPE):
        detail = f'Content-Type must be application/json or {FORM_TYPE}, not "{content_type}"'
        return answer(415, error="unsupported_media_type", detail=detail)
    if charset not in ("utf-8", "utf8"):
        detail = f'charset must be utf-8, not "{charset}"'
        return answer(415, error="unsupported_media_type", detail=detail)
    if content_type == FORM_TYPE:
        return _token_from_form(body)
    return _token_from_json(body)


def _token_from_json(body: bytes) -> str | web.Response:
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return answer(400, error="bad_request", detail="body is not JSON")
    if not isinstance(data, dict):
        return answer(400, error="bad_request", detail="body is not a JSON object")
    token = data.get("encrypted_data")
    if not isinstance(token, str):
        return answer(400, error="bad_request", detail='no string "encrypted_data" in the body')
    return token


def _token_from_form(body: bytes) -> str | web.Response:
    try:
        fields = parse_qs(body.decode("utf-8"), strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return answer(400, error="bad_request", detail="form body is not UTF-8")
    values = fields.get("encrypted_data")
    if not values:
        return answer(400, error="bad_request", detail='no "encrypted_data" field in the form')
    return values[0]


async def _receive(request: web.Request, token: str) -> web.Response:
    try:
        receipt = await request.app[INGEST].receive(token)
    except TokenError as exc:
        return answer(401, error="invalid_token", detail=str(exc))
    except EventError as exc:
        log.warning("refused an event from %s: %s", request.remote, exc)
        return answer(422, error="invalid_event", detail=str(exc))
    except StorageError as exc:
        log.error("could not store an event, answering 503: %s", exc)
        return answer(503, headers={"Retry-After": "30"}, error="unavailable")
    return answer(200, status=receipt.status, id=receipt.id)
