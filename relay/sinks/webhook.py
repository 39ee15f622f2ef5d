"""Webhook sink: sends the rendered JSON body to any URL, signed per Standard Webhooks 1.0.

Owns the ``type = "webhook"`` config, the signature headers, and redaction: no URL token or
header value reaches a log, an error or ``describe()``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import yarl
from multidict import CIMultiDict
from pydantic import ConfigDict, Field, field_validator, model_validator

from relay import __version__
from relay.config_types import Int
from relay.errors import DeliveryError
from relay.failures import classify_exception, classify_status, parse_retry_after
from relay.secret import Secret, pasting_problem
from relay.sinks.base import Message, Part, Sink, SinkConfig, SinkContext

CONTENT_TYPE = "application/json; charset=utf-8"
MAX_DETAIL_BYTES = 1024  # of a failed answer's body, kept as the error's detail
OWN_SESSION_LIMIT = 10  # connections, when the relay lends no shared session (tests, scripts)
SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's marker, not a secret
# Shorter strings are not credentials, and scrubbing them would garble messages ("1", "v2").
MIN_SCRUB_LENGTH = 6
# Set by the sink itself; a configured header must not replace them.
RESERVED_HEADERS = frozenset(
    {
        "content-length",
        "host",
        "transfer-encoding",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an HTTP header name (RFC 9110 token)
_SAFE_ID = re.compile(r"[A-Za-z0-9._~-]+\Z")


USER_AGENT = f"dataslayer-relay/{__version__}"


class WebhookConfig(SinkConfig):
    """``[sinks.NAME]`` with ``type = "webhook"``.

    ``headers`` values are kept as secrets (they often carry tokens). ``signing_secret`` is one
    ``whsec_``-prefixed base64 key or a list of them: during a rotation every listed key signs.
    """

    # hide_input_in_errors: a model-level error would otherwise print every key, headers included.
    model_config = ConfigDict(hide_input_in_errors=True)

    type: Literal["webhook"] = "webhook"
    # Your own endpoints usually take more than Slack's pace: 16 sends in flight by default.
    concurrency: Int = Field(default=16, ge=1, le=256, description="sends in flight at once")
    url: str
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    headers: dict[str, Secret] = Field(default_factory=dict)
    signing_secret: Secret | list[Secret] | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # The URL is never echoed: it may carry a token.
        if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ValueError("url contains whitespace or control characters")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError("url is not a valid URL") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be an http:// or https:// URL with a host")
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, Secret]) -> dict[str, Secret]:
        problems = [p for name, secret in value.items() if (p := _header_problem(name, secret))]
        if problems:
            raise ValueError("; ".join(problems))  # every header at once, not one per run
        return value

    @field_validator("signing_secret")
    @classmethod
    def _whsec(cls, value: Secret | list[Secret] | None) -> Secret | list[Secret] | None:
        for secret in _as_list(value):
            signing_key(secret)
        return value

    @model_validator(mode="after")
    def _one_authorization(self) -> WebhookConfig:
        userinfo = urlsplit(self.url).username is not None
        if userinfo and any(name.lower() == "authorization" for name in self.headers):
            raise ValueError("url has user:password and headers has Authorization: use one")
        return self

    @property
    def signing_secrets(self) -> tuple[Secret, ...]:
        return tuple(_as_list(self.signing_secret))

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # The URL may carry a token (query, userinfo, path): repr shows it redacted.
        for key, value in super().__repr_args__():
            yield key, redact_url(value) if key == "url" else value


def _header_problem(name: str, value: Secret) -> str | None:
    if not _TOKEN.match(name):
        return f"{name!r} is not a valid header name"
    if name.lower() in RESERVED_HEADERS:
        return f"{name!r} is set by the relay and cannot be configured"
    if re.search(r"[\x00-\x1f\x7f]", value.reveal().replace("\t", " ")):
        return f"the value of {name!r} contains a line break or control character"
    return None


class WebhookSink(Sink):
    """POSTs (or PUTs, PATCHes) the ``body`` part byte-exact as UTF-8 JSON.

    2xx is success. Redirects are not followed and count as failures; 408, 429, 5xx, timeouts,
    connection and DNS errors retry (honouring ``Retry-After``); 410 and other 4xx are permanent.
    """

    type = "webhook"
    config_model = WebhookConfig
    parts = (Part("body", required=True, escape="json", json=True),)
    config: WebhookConfig

    def __init__(self, name: str, config: WebhookConfig, context: SinkContext) -> None:
        super().__init__(name, config, context)
        self._keys = [signing_key(s) for s in config.signing_secrets]
        self._own_session: aiohttp.ClientSession | None = None

    def describe(self) -> str:
        c = self.config
        text = f"webhook {c.method} {redact_url(c.url)}"
        if c.headers:
            text += f", headers: {', '.join(c.headers)}"
        if self._keys:
            text += f", signed ({len(self._keys)} secret{'s' if len(self._keys) > 1 else ''})"
        return text

    async def send(self, message: Message) -> None:
        body = message.parts["body"].encode("utf-8")
        headers = self.headers(message, body, int(time.time()))
        try:
            error = await self._request(body, headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = classify_exception(exc)
        if error is not None:
            # Raised outside the except block: aiohttp's exception may name the full URL.
            raise self._redacted(error)

    def headers(self, message: Message, body: bytes, timestamp: int) -> CIMultiDict[str]:
        """Every header of one attempt; signature headers when signing secrets are configured."""
        headers: CIMultiDict[str] = CIMultiDict(
            {"Content-Type": CONTENT_TYPE, "User-Agent": USER_AGENT}
        )
        for name, value in self.config.headers.items():
            headers[name] = value.reveal()
        msg_id = webhook_id(message)
        headers["webhook-id"] = msg_id
        headers["webhook-timestamp"] = str(timestamp)
        if self._keys:
            headers["webhook-signature"] = sign(self._keys, msg_id, timestamp, body)
        return headers

    async def close(self) -> None:
        if self._own_session is not None:
            await self._own_session.close()
            self._own_session = None

    async def _request(self, body: bytes, headers: CIMultiDict[str]) -> DeliveryError | None:
        async with self._session().request(
            self.config.method,
            self.config.url,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        ) as response:
            if 200 <= response.status < 300:
                return None
            return await _failure(response)

    def _session(self) -> aiohttp.ClientSession:
        if self.context.http is not None:
            return self.context.http
        if self._own_session is None:
            connector = aiohttp.TCPConnector(limit=OWN_SESSION_LIMIT)
            self._own_session = aiohttp.ClientSession(connector=connector)
        return self._own_session

    def _redacted(self, error: DeliveryError) -> DeliveryError:
        message = scrub(str(error), self._sensitive())
        return type(error)(
            message, reason=error.reason, status=error.status, retry_after=error.retry_after
        )

    def _sensitive(self) -> list[str]:
        """Strings that must not appear in an error: URL parts and header values."""
        raw, url = urlsplit(self.config.url), yarl.URL(self.config.url)
        found = [self.config.url, str(url), raw.query, url.raw_query_string]
        found += [raw.netloc.rpartition("@")[0], raw.password or ""]
        found += [raw.path.partition("/")[2].partition("/")[2]]  # below the first path segment
        for value in self.config.headers.values():
            found += [value.reveal(), *value.reveal().split()]
        return [s for s in found if len(s) >= MIN_SCRUB_LENGTH]


async def _failure(response: aiohttp.ClientResponse) -> DeliveryError | None:
    detail = await _read_detail(response)
    if 300 <= response.status < 400:
        location = response.headers.get("Location")
        target = f" to {redact_url(location)}" if location else ""
        detail = f"redirect{target} not followed"
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    return classify_status(response.status, detail, retry_after)


async def _read_detail(response: aiohttp.ClientResponse) -> str:
    raw = await response.content.read(MAX_DETAIL_BYTES)
    return " ".join(raw.decode("utf-8", errors="replace").split())


def signing_key(secret: Secret) -> bytes:
    """The HMAC key inside a ``whsec_`` secret; ValueError (without the value) when malformed."""
    text = secret.reveal()
    # Checked first: a stray space or quote would otherwise read as a missing prefix or bad base64.
    problem = pasting_problem(text)
    if problem is not None:
        raise ValueError(f"signing_secret {problem}")
    if not text.startswith(SECRET_PREFIX):
        raise ValueError(
            f"signing_secret must start with {SECRET_PREFIX!r} (Standard Webhooks format)"
        )
    encoded = text[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"signing_secret must be {SECRET_PREFIX!r} followed by base64") from None
    if not key:
        raise ValueError("signing_secret is empty after 'whsec_'")
    return key


def sign(keys: Iterable[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """``webhook-signature``: one ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` per key."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digests = (hmac.new(key, signed, hashlib.sha256).digest() for key in keys)
    return " ".join(f"v1,{base64.b64encode(d).decode('ascii')}" for d in digests)


def webhook_id(message: Message) -> str:
    """The message's idempotency key, made header-safe when the sink name is not."""
    key = message.idempotency_key
    if _SAFE_ID.match(key):
        return key
    return f"{message.event.id}.{hashlib.sha256(message.sink.encode('utf-8')).hexdigest()[:16]}"


def redact_url(url: str) -> str:
    """``https://crm.example.com/hooks/…?<redacted>``: no userinfo, query or deeper path."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<redacted url>"
    host = parts.hostname or ""
    netloc = ("<redacted>@" if parts.username or parts.password else "") + (
        f"[{host}]" if ":" in host else host
    )
    netloc += f":{port}" if port is not None else ""
    segments = [s for s in parts.path.split("/") if s]
    path = f"/{segments[0]}" + ("/…" if len(segments) > 1 else "") if segments else parts.path
    query = "?<redacted>" if parts.query else ""
    prefix = f"{parts.scheme}://" if parts.scheme else ""
    return f"{prefix}{netloc}{path}{query}"


def scrub(text: str, sensitive: Sequence[str]) -> str:
    """``text`` with every non-empty string of ``sensitive`` replaced by ``<redacted>``."""
    for value in sorted({s for s in sensitive if s}, key=len, reverse=True):
        text = text.replace(value, "<redacted>")
    return text


def _as_list(value: Secret | list[Secret] | None) -> list[Secret]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
