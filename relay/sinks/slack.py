"""Slack sink: posts through an incoming webhook or the Web API's ``chat.postMessage``.

Owns Slack's configuration, the reading of Slack's answers as retryable or permanent errors, and
the fitting of messages to Slack's size limits (visibly truncated rather than refused).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from pydantic import ConfigDict, Field, field_validator, model_validator
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from relay.config_types import Float
from relay.errors import DeliveryError, PermanentError, RetryableError
from relay.failures import classify_exception, classify_status, parse_retry_after
from relay.secret import Secret
from relay.sinks.base import Message, Part, Sink, SinkConfig, SinkContext

# slack-sdk logs request URLs and bodies whenever its logger's *own* level is DEBUG or unset,
# and a webhook's URL is its credential. A logger whose level is above DEBUG turns that off.
_SDK_LOGGER = logging.getLogger("relay.sinks.slack.sdk")
_SDK_LOGGER.setLevel(logging.INFO)

# Slack's documented limits (https://docs.slack.dev/reference/block-kit/blocks).
MAX_TEXT = 40_000
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3_000
MAX_FIELDS = 10
MAX_FIELD_TEXT = 2_000
MAX_HEADER_TEXT = 150
MAX_CONTEXT_ELEMENTS = 10
MAX_CONTEXT_TEXT = 2_000
ELLIPSIS = "…"

RATE_LIMIT_ERRORS = frozenset({"ratelimited", "rate_limited"})
# Web API errors Slack documents as transient: a later attempt may succeed.
TRANSIENT_ERRORS = frozenset(
    {"internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
AUTH_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "token_revoked",
        "token_expired",
        "account_inactive",
        "no_service",
        "invalid_token",
        "not_allowed_token_type",
        "missing_scope",
        "team_access_not_granted",
    }
)


class SlackConfig(SinkConfig):
    """``[sinks.NAME]`` with ``type = "slack"``: an incoming webhook, or a bot token + channel."""

    # pydantic prints the raw input (secrets included) in its error text unless told not to.
    model_config = ConfigDict(hide_input_in_errors=True)

    type: Literal["slack"]
    webhook_url: Secret | None = Field(
        default=None, description="incoming webhook URL; it is itself a credential"
    )
    token: Secret | None = Field(default=None, description="bot token for chat.postMessage")
    channel: str | None = Field(default=None, description='name or id, e.g. "#client-access"')
    api_url: str = Field(default="https://slack.com/api/", description="Web API base URL")
    # Slack asks for at most one message per second per webhook or channel.
    rate: Float | None = Field(
        default=1.0, ge=0, le=10000, description="messages per second; 0 = no limit"
    )

    @field_validator("api_url")
    @classmethod
    def _normalise_api_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("api_url must start with https:// or http://")
        return value if value.endswith("/") else value + "/"

    @model_validator(mode="after")
    def _one_way_to_post(self) -> SlackConfig:
        problem = _config_problem(self)
        if problem:
            raise ValueError(problem)
        return self


def _config_problem(config: SlackConfig) -> str | None:
    """What is wrong with how ``config`` says to reach Slack, or None; never quotes a secret."""
    if config.webhook_url and config.token:
        return "set either webhook_url or token, not both"
    if not config.webhook_url and not config.token:
        return "set webhook_url (incoming webhook) or token + channel"
    if config.token and not config.channel:
        return "channel is required with token"
    if config.webhook_url and config.channel:
        return "channel applies only with token; an incoming webhook posts to its own channel"
    if config.webhook_url and not config.webhook_url.reveal().startswith(("http://", "https://")):
        return "webhook_url must start with https:// (or http://)"
    return None


class SlackSink(Sink):
    """Posts the ``text`` part (and ``blocks``, when rendered) to one Slack channel."""

    type = "slack"
    config_model = SlackConfig
    parts = (
        Part("text", required=True, escape="slack"),
        Part("blocks", required=False, escape="slack_json", json=True),
    )
    config: SlackConfig

    def __init__(self, name: str, config: SlackConfig, context: SinkContext) -> None:
        super().__init__(name, config, context)
        self._webhook: AsyncWebhookClient | None = None
        self._web: AsyncWebClient | None = None

    @classmethod
    def refusal(cls, parts: Mapping[str, str]) -> tuple[str, str] | None:
        try:
            content(parts)
        except Refused as refused:
            return refused.part, str(refused)
        return None

    @classmethod
    def as_sent(cls, parts: Mapping[str, str]) -> dict[str, str]:
        text, blocks = content(parts)
        shown = {**parts, "text": text}
        if blocks is not None and blocks != json.loads(parts["blocks"]):  # fitting changed it
            shown["blocks"] = json.dumps(blocks, indent=2, ensure_ascii=False)
        return shown

    async def send(self, message: Message) -> None:
        text, blocks = content(message.parts)  # Refused is a PermanentError
        try:
            async with asyncio.timeout(self.timeout):
                await self._post(text, blocks)
        except DeliveryError as exc:
            raise self._redacted(exc) from None
        except SlackApiError as exc:
            raise self._redacted(api_error(exc)) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # `from None`: aiohttp's exception text can hold the request URL, i.e. the secret.
            raise self._redacted(classify_exception(exc)) from None

    async def _post(self, text: str, blocks: list[Any] | None) -> None:
        if self.config.webhook_url is not None:
            await self._post_webhook(self.config.webhook_url, text, blocks)
        else:
            await self._post_message(text, blocks)

    async def _post_webhook(self, url: Secret, text: str, blocks: list[Any] | None) -> None:
        # An incoming webhook answers errors as plain HTTP; slack-sdk does not raise for them.
        response = await self._webhook_client(url).send(text=text, blocks=blocks)
        error = webhook_error(response.status_code, response.body, response.headers)
        if error is not None:
            raise error

    async def _post_message(self, text: str, blocks: list[Any] | None) -> None:
        payload: dict[str, Any] = {"channel": self.config.channel, "text": text}
        if blocks is not None:
            payload["blocks"] = blocks
        # api_call, not chat_postMessage: the latter emits a UserWarning for a blank text, which
        # Slack accepts when blocks carry the content. The JSON body is the same.
        try:
            await self._web_client().api_call("chat.postMessage", json=payload)
        except AttributeError:
            # slack-sdk's validate() fails this way on a 200 whose JSON is not an object (a
            # server that is not the Web API answering "ok", say): nothing a retry can change.
            raise PermanentError(
                "Slack's Web API answered 200 with a body that is not a JSON object: is api_url "
                "the Web API's base URL (https://slack.com/api/)?",
                reason="client",
                status=200,
            ) from None

    def _webhook_client(self, url: Secret) -> AsyncWebhookClient:
        if self._webhook is None:
            self._webhook = AsyncWebhookClient(
                url.reveal(),
                timeout=self._sdk_timeout,
                session=self.context.http,
                logger=_SDK_LOGGER,
                retry_handlers=[],  # the relay's worker owns retries
            )
        return self._webhook

    def _web_client(self) -> AsyncWebClient:
        if self._web is None:
            token = self.config.token
            self._web = AsyncWebClient(
                token=token.reveal() if token is not None else None,
                base_url=self.config.api_url,
                timeout=self._sdk_timeout,
                session=self.context.http,
                logger=_SDK_LOGGER,
                retry_handlers=[],  # the relay's worker owns retries
            )
        return self._web

    @property
    def _sdk_timeout(self) -> int:
        # slack-sdk applies this only to sessions it creates itself; send() enforces the real limit.
        return max(1, math.ceil(self.timeout))

    def _redacted(self, error: DeliveryError) -> DeliveryError:
        """``error`` with any credential in its message replaced by ``<secret>``."""
        text = original = str(error)
        for secret in self._secret_strings():
            text = text.replace(secret, "<secret>")
        if text == original:
            return error
        return type(error)(
            text, reason=error.reason, status=error.status, retry_after=error.retry_after
        )

    def _secret_strings(self) -> list[str]:
        found = []
        if self.config.token:
            found.append(self.config.token.reveal())
        if self.config.webhook_url:
            url = self.config.webhook_url.reveal()
            found += [url, urlsplit(url).path]
        return [s for s in found if len(s) > 1]

    def describe(self) -> str:
        if self.config.webhook_url is not None:
            return f"slack webhook ({_host(self.config.webhook_url.reveal())})"
        return f"slack chat.postMessage to {self.config.channel} via {_host(self.config.api_url)}"


def _host(url: str) -> str:
    return urlsplit(url).hostname or "(no host)"


# --- reading Slack's answers -------------------------------------------------------------------


def classify_answer(status: int, error: str, retry_after: float | None = None) -> DeliveryError:
    """The error for a Slack answer that was not a success; ``error`` is Slack's error code."""
    message = f"Slack answered {status} {error or '(no error code)'}"
    if status == 429 or error in RATE_LIMIT_ERRORS:
        reason = "rate_limited"
    elif error in TRANSIENT_ERRORS:
        reason = "server"
    else:
        generic = classify_status(status)
        reason = generic.reason if generic is not None and generic.retryable else ""
    if reason:
        return RetryableError(message, reason=reason, status=status, retry_after=retry_after)
    reason = "auth" if error in AUTH_ERRORS else "client"
    return PermanentError(message, reason=reason, status=status)


def webhook_error(status: int, body: str, headers: Mapping[str, str]) -> DeliveryError | None:
    """None when an incoming webhook accepted the message, else the error.

    Slack answers 200 ``ok``, and its errors as text (``invalid_payload``), whatever the status.
    Slack-compatible services (Mattermost, Rocket.Chat, proxies) may answer a 2xx with an empty
    body or a JSON object (``{"ok": true}``, ``{"success": true}``): a success too, unless the
    object says ``"ok": false`` or ``"success": false``. Counting such a success as a failure
    would post the message again on a retry.
    """
    code = _refusal(body)
    if 200 <= status < 300 and code is None:
        return None
    retry_after = parse_retry_after(headers.get("Retry-After"))
    return classify_answer(status, code or _error_code(body), retry_after)


def _refusal(body: str) -> str | None:
    """None when a 2xx ``body`` means posted; else the error code it gives ("" for none)."""
    text = body.strip()
    if text in ("", "ok"):
        return None
    try:
        data = json.loads(text) if text.startswith("{") else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return _error_code(text)  # Slack's own text answers: "invalid_auth", "no_service"
    if data.get("ok") is False or data.get("success") is False:
        return truncate(str(data.get("error") or ""), 100)
    return None


def api_error(exc: SlackApiError) -> DeliveryError:
    """The error for a Web API call slack-sdk reported as failed (``ok: false`` or not JSON)."""
    response = exc.response
    # Usually an AsyncSlackResponse; for a body that is not JSON, slack-sdk puts aiohttp's
    # ClientResponse there instead, which names its status `status`.
    status = int(getattr(response, "status_code", None) or getattr(response, "status", None) or 0)
    data = getattr(response, "data", None)
    error = str(data.get("error", "")) if isinstance(data, dict) else ""
    headers = getattr(response, "headers", None) or {}
    return classify_answer(status, error, parse_retry_after(headers.get("Retry-After")))


def _error_code(body: str) -> str:
    """Slack's error code from a webhook answer: its first line, kept short."""
    lines = body.strip().splitlines()
    return truncate(lines[0].strip(), 100) if lines else ""


# --- fitting messages to Slack's limits --------------------------------------------------------


def truncate(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else cut to ``limit`` ending with "…"."""
    if len(text) <= limit:
        return text
    return text[: limit - 1] + ELLIPSIS


class Refused(PermanentError):
    """Rendered parts Slack is sure to refuse; ``part`` names the one at fault."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(message, reason="invalid")
        self.part = part


def content(parts: Mapping[str, str]) -> tuple[str, list[Any] | None]:
    """The text and blocks to post, fitted to Slack's limits; Refused for what Slack refuses.

    The one place ``send``, ``relay check`` (via ``refusal``) and ``relay preview`` read parts.
    """
    try:
        blocks = parse_blocks(parts.get("blocks"))
    except PermanentError as exc:
        raise Refused("blocks", str(exc)) from None
    text = parts.get("text", "")
    if blocks is None and not text.strip():
        raise Refused(
            "text", "the text part is empty and there are no blocks: Slack refuses that (no_text)"
        )
    return truncate(text, MAX_TEXT), blocks


def parse_blocks(text: str | None) -> list[Any] | None:
    """The ``blocks`` part as a list fitted to Slack's limits; None when absent or empty."""
    if text is None or not text.strip():
        return None
    try:
        blocks = json.loads(text)
    except ValueError:
        raise PermanentError("the blocks part is not valid JSON", reason="invalid") from None
    if not isinstance(blocks, list):
        kind = type(blocks).__name__
        raise PermanentError(f"the blocks part is a JSON {kind}, not a list", reason="invalid")
    return fit_blocks(blocks) or None


def fit_blocks(blocks: list[Any]) -> list[Any]:
    """A copy of ``blocks`` within Slack's limits; a last context block says what had to go."""
    fitted = [fit_block(block) for block in blocks]
    return _cap(fitted, MAX_BLOCKS, _more("blocks", _context_block))


def fit_block(block: Any) -> Any:
    """A copy of one block with its texts and lists cut to Slack's limits; others unchanged."""
    if not isinstance(block, dict):
        return block
    fitter = _BLOCK_FITTERS.get(block.get("type"))
    return fitter(block) if fitter else block


def _fit_section(block: dict[str, Any]) -> dict[str, Any]:
    fitted = dict(block)
    if "text" in block:
        fitted["text"] = _fit_text_object(block["text"], MAX_SECTION_TEXT)
    if isinstance(block.get("fields"), list):
        fields = [_fit_text_object(f, MAX_FIELD_TEXT) for f in block["fields"]]
        fitted["fields"] = _cap(fields, MAX_FIELDS, _more("fields"))
    return fitted


def _fit_header(block: dict[str, Any]) -> dict[str, Any]:
    if "text" not in block:
        return block
    return {**block, "text": _fit_text_object(block["text"], MAX_HEADER_TEXT)}


def _fit_context(block: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(block.get("elements"), list):
        return block
    elements = [_fit_text_object(e, MAX_CONTEXT_TEXT) for e in block["elements"]]
    return {**block, "elements": _cap(elements, MAX_CONTEXT_ELEMENTS, _more("elements"))}


_BLOCK_FITTERS: dict[Any, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "section": _fit_section,
    "header": _fit_header,
    "context": _fit_context,
}


def _fit_text_object(obj: Any, limit: int) -> Any:
    if isinstance(obj, dict) and isinstance(obj.get("text"), str):
        return {**obj, "text": truncate(obj["text"], limit)}
    return obj


def _cap(items: list[Any], limit: int, notice: Callable[[int], Any]) -> list[Any]:
    """At most ``limit`` items: the first ``limit - 1``, then a notice of how many are left out."""
    if len(items) <= limit:
        return items
    kept = items[: limit - 1]
    return [*kept, notice(len(items) - len(kept))]


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def _context_block(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [_mrkdwn(text)]}


def _more(
    what: str, shape: Callable[[str], dict[str, Any]] = _mrkdwn
) -> Callable[[int], dict[str, Any]]:
    """Makes the notice standing in for ``n`` left-out items, e.g. "… 11 more blocks not shown"."""
    return lambda n: shape(f"{ELLIPSIS} {n} more {what} not shown")
