"""The webhook sink against FakeReceiver (a real local server verifying with standardwebhooks)."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from relay.errors import PermanentError, RetryableError
from relay.events import SAMPLE_EVENT, event_from_dict
from relay.secret import Secret
from relay.sinks.base import Message, SinkContext
from relay.sinks.webhook import WebhookConfig, WebhookSink, redact_url, sign
from relay.testing.webhook import FakeReceiver, Reply

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 24).decode()
BODY = json.dumps({"type": "shared_connection", "data": SAMPLE_EVENT})
TOKEN = "crm-token-0123456789"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def make_sink(
    url: str, http: aiohttp.ClientSession | None, timeout: float = 2, **keys: Any
) -> WebhookSink:
    config = WebhookConfig.model_validate({"type": "webhook", "url": url, **keys})
    return WebhookSink("crm", config, SinkContext(http=http, timeout=timeout))


def make_message(body: str = BODY) -> Message:
    event = event_from_dict(SAMPLE_EVENT, received_at=0.0)
    return Message(event=event, sink="crm", parts={"body": body})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- delivery and signatures ----------------------------------------------------------------


async def test_signed_request_verifies_with_standardwebhooks(http: aiohttp.ClientSession) -> None:
    """A signed request verifies with the standardwebhooks package and carries the JSON headers."""
    async with FakeReceiver([SECRET]) as receiver:
        await make_sink(receiver.url, http, signing_secret=SECRET).send(make_message())
        [request] = await receiver.wait_for(1)
    assert request.verified is True
    assert request.method == "POST"
    assert request.headers["Content-Type"] == "application/json; charset=utf-8"
    assert request.headers["User-Agent"].startswith("dataslayer-relay/")
    assert request.headers["webhook-id"] == make_message().idempotency_key
    assert request.body == BODY.encode()


async def test_two_secrets_give_two_signatures_that_both_verify(
    http: aiohttp.ClientSession,
) -> None:
    """With a list of secrets each one signs, so receivers on the old or new key both verify."""
    async with FakeReceiver([SECRET, OLD_SECRET]) as receiver:
        sink = make_sink(receiver.url, http, signing_secret=[SECRET, OLD_SECRET])
        await sink.send(make_message())
        [request] = await receiver.wait_for(1)
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert request.verified is True


async def test_a_receiver_with_another_secret_does_not_verify(http: aiohttp.ClientSession) -> None:
    """A signature made with one secret does not verify with another (the check is real)."""
    async with FakeReceiver([OLD_SECRET]) as receiver:
        await make_sink(receiver.url, http, signing_secret=SECRET).send(make_message())
        [request] = await receiver.wait_for(1)
    assert request.verified is False


async def test_unsigned_request_still_carries_a_webhook_id(http: aiohttp.ClientSession) -> None:
    """Without a signing secret the webhook-id and timestamp are sent, the signature is not."""
    async with FakeReceiver() as receiver:
        await make_sink(receiver.url, http).send(make_message())
        [request] = await receiver.wait_for(1)
    assert request.headers["webhook-id"] == make_message().idempotency_key
    assert "webhook-timestamp" in request.headers
    assert "webhook-signature" not in request.headers


async def test_method_and_configured_headers_are_sent(http: aiohttp.ClientSession) -> None:
    """The configured method and headers (e.g. Authorization) reach the receiver."""
    async with FakeReceiver() as receiver:
        sink = make_sink(
            receiver.url, http, method="put", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        await sink.send(make_message())
        [request] = await receiver.wait_for(1)
    assert request.method == "PUT"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_non_ascii_body_arrives_byte_exact(http: aiohttp.ClientSession) -> None:
    """A body with non-ASCII text arrives as exactly its UTF-8 bytes, and the signature holds."""
    body = '{"name": "Señora Müller — 日本語 ✓", "raw": "\\u00e9"}'
    async with FakeReceiver([SECRET]) as receiver:
        await make_sink(receiver.url, http, signing_secret=SECRET).send(make_message(body))
        [request] = await receiver.wait_for(1)
    assert request.body == body.encode("utf-8")
    assert request.verified is True


async def test_without_a_shared_session_the_sink_owns_and_closes_one() -> None:
    """With no session lent by the relay the sink makes its own and closes it in close()."""
    async with FakeReceiver() as receiver:
        sink = make_sink(receiver.url, None)
        await sink.send(make_message())
        await sink.close()
    assert len(receiver.requests) == 1


def test_signature_matches_the_standard_webhooks_example() -> None:
    """sign() reproduces the signature from the Standard Webhooks specification's example."""
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign([key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected


# --- retries and failures -------------------------------------------------------------------


async def test_same_webhook_id_across_attempts_and_503_then_200(
    http: aiohttp.ClientSession,
) -> None:
    """A 503 is retryable with Retry-After; the retry carries the same webhook-id and delivers."""
    async with FakeReceiver([SECRET]) as receiver:
        receiver.reply(Reply(503, "busy", headers={"Retry-After": "7"}))
        sink = make_sink(receiver.url, http, signing_secret=SECRET)
        with pytest.raises(RetryableError) as caught:
            await sink.send(make_message())
        await sink.send(make_message())
        first, second = await receiver.wait_for(2)
    assert (caught.value.status, caught.value.reason, caught.value.retry_after) == (
        503,
        "server",
        7,
    )
    assert "busy" in str(caught.value)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.verified and second.verified
    assert len(receiver.requests) == 2


async def test_redirect_is_not_followed(http: aiohttp.ClientSession) -> None:
    """A 301 is a permanent "redirect" failure naming the (redacted) target; it is not followed."""
    async with FakeReceiver() as receiver:
        target = receiver.url.replace("/hook", "/moved/here?key=redirect-secret")
        receiver.reply(Reply.redirect(target))
        with pytest.raises(PermanentError) as caught:
            await make_sink(receiver.url, http).send(make_message())
    assert (caught.value.status, caught.value.reason) == (301, "redirect")
    assert "/moved/…?<redacted>" in str(caught.value)
    assert "redirect-secret" not in str(caught.value)
    assert len(receiver.requests) == 1


async def test_410_is_gone(http: aiohttp.ClientSession) -> None:
    """410 means the endpoint is gone: permanent, reason "gone"."""
    async with FakeReceiver() as receiver:
        receiver.reply(Reply(410))
        with pytest.raises(PermanentError) as caught:
            await make_sink(receiver.url, http).send(make_message())
    assert (caught.value.status, caught.value.reason) == (410, "gone")


async def test_400_is_permanent_with_the_answer_as_detail(http: aiohttp.ClientSession) -> None:
    """A 400 is permanent and keeps at most about 1 KiB of the answer as the detail."""
    async with FakeReceiver() as receiver:
        receiver.reply(Reply(400, "invalid payload " + "x" * 5000))
        with pytest.raises(PermanentError) as caught:
            await make_sink(receiver.url, http).send(make_message())
    assert (caught.value.status, caught.value.reason) == (400, "client")
    assert "invalid payload" in str(caught.value)
    assert len(str(caught.value)) < 1100


@pytest.mark.parametrize("status", [408, 429, 500, 502])
async def test_retryable_statuses(http: aiohttp.ClientSession, status: int) -> None:
    """408, 429 and 5xx answers are retryable."""
    async with FakeReceiver() as receiver:
        receiver.reply(Reply(status))
        with pytest.raises(RetryableError) as caught:
            await make_sink(receiver.url, http).send(make_message())
    assert caught.value.status == status


async def test_slow_receiver_is_a_retryable_timeout(http: aiohttp.ClientSession) -> None:
    """A receiver slower than the timeout gives a retryable "timeout" failure."""
    async with FakeReceiver() as receiver:
        receiver.reply(Reply(200, delay=2))
        with pytest.raises(RetryableError) as caught:
            await make_sink(receiver.url, http, timeout=0.2).send(make_message())
    assert caught.value.reason == "timeout"


async def test_connection_refused_is_retryable(http: aiohttp.ClientSession) -> None:
    """Nothing listening is a retryable "connection" failure."""
    with pytest.raises(RetryableError) as caught:
        await make_sink(f"http://127.0.0.1:{free_port()}/hook", http).send(make_message())
    assert caught.value.reason == "connection"


async def test_a_host_that_does_not_resolve_is_a_retryable_connection_failure(
    http: aiohttp.ClientSession,
) -> None:
    """A URL whose host name does not resolve (.invalid) gives a retryable "connection" failure."""
    sink = make_sink("https://crm.invalid/hooks/dataslayer?token=dns-secret-77", http)
    with pytest.raises(RetryableError) as caught:
        await sink.send(make_message())
    assert caught.value.reason == "connection"
    assert caught.value.status is None
    assert str(caught.value).startswith("connection failed: ")
    assert "crm.invalid" in str(caught.value)
    assert "dns-secret-77" not in str(caught.value)


async def test_errors_never_contain_header_values_or_url_tokens(
    http: aiohttp.ClientSession,
) -> None:
    """Errors and describe() hold no header value and no URL userinfo or query, even if echoed."""
    headers = {"X-Auth": f"Bearer {TOKEN}", "X-Api-Key": "key-abcdef123456"}
    async with FakeReceiver() as receiver:
        url = receiver.url.replace("http://", "http://user:url-password@") + "?token=qs-secret-42"
        receiver.reply(Reply(400, f"bad token Bearer {TOKEN} key-abcdef123456 {url} {TOKEN}"))
        sink = make_sink(url, http, headers=headers)
        with pytest.raises(PermanentError) as answered:
            await sink.send(make_message())
    with pytest.raises(RetryableError) as refused:
        await sink.send(make_message())  # the receiver is gone: connection refused
    for text in (str(answered.value), str(refused.value), sink.describe(), repr(sink.config)):
        for secret in (TOKEN, "key-abcdef123456", "qs-secret-42", "url-password"):
            assert secret not in text, text
    assert sink.describe() == (
        f"webhook POST http://<redacted>@127.0.0.1:{receiver.url.split(':')[2].split('/')[0]}"
        "/hook?<redacted>, headers: X-Auth, X-Api-Key"
    )


# --- config ---------------------------------------------------------------------------------


def test_every_bad_header_is_reported_at_once() -> None:
    """Three bad headers give three problems in one error, not one per run of relay check."""
    headers = {"Bad Name": "x", "webhook-id": "x", "X-Token": "abc\r\nX-Evil: 1"}
    settings = {"type": "webhook", "url": "https://crm.example.com/", "headers": headers}
    with pytest.raises(ValidationError) as caught:
        WebhookConfig.model_validate(settings)
    text = str(caught.value)
    for message in ("not a valid header name", "set by the relay", "line break"):
        assert message in text


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"method": "GET"}, "'POST', 'PUT' or 'PATCH'"),
        ({"signing_secret": "not-whsec"}, "must start with 'whsec_'"),
        ({"signing_secret": "whsec_!!!not-base64!!!"}, "followed by base64"),
        ({"signing_secret": [SECRET, "whsec_"]}, "empty"),
        ({"url": "ftp://crm.example.com/hook?token=abc123secret"}, "http:// or https://"),
        ({"url": "crm.example.com/hook"}, "http:// or https://"),
        ({"url": "https://crm.example.com/a b"}, "whitespace"),
        ({"headers": {"Bad Name": "x"}}, "not a valid header name"),
        ({"headers": {"webhook-id": "x"}}, "set by the relay"),
        ({"headers": {"X-Token": "abc\r\nX-Evil: 1"}}, "line break"),
        (
            {"url": "https://u:abc123secret@crm.example.com/", "headers": {"authorization": "x"}},
            "use one",
        ),
    ],
)
def test_config_rejects_bad_values(keys: dict[str, Any], message: str) -> None:
    """A bad method, signing secret, URL or header is an error at load, without secret values."""
    settings = {"type": "webhook", "url": "https://crm.example.com/hook"} | keys
    with pytest.raises(ValidationError) as caught:
        WebhookConfig.model_validate(settings)
    text = str(caught.value)
    assert message in text
    assert "abc123secret" not in text and "!!!not-base64!!!" not in text
    assert "X-Evil" not in text


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        (
            SECRET + " ",
            "signing_secret has leading or trailing white space; paste the secret alone",
        ),
        (
            " " + SECRET,
            "signing_secret has leading or trailing white space; paste the secret alone",
        ),
        (
            f"'{SECRET}'",
            "signing_secret is wrapped in quotes; paste the secret alone, without them",
        ),
        (
            f'"{SECRET}"',
            "signing_secret is wrapped in quotes; paste the secret alone, without them",
        ),
    ],
    ids=["trailing space", "leading space", "single quotes", "double quotes"],
)
def test_a_mis_pasted_signing_secret_says_how_without_showing_it(secret: str, message: str) -> None:
    """White space around a signing secret, or quotes, is named as such and the secret not shown."""
    settings = {"type": "webhook", "url": "https://crm.example.com/hook", "signing_secret": secret}
    with pytest.raises(ValidationError) as caught:
        WebhookConfig.model_validate(settings)
    text = str(caught.value)
    assert message in text
    assert SECRET.removeprefix("whsec_") not in text


def test_config_keeps_secrets_out_of_repr() -> None:
    """Header values and signing secrets are Secrets: the config's repr shows neither."""
    config = WebhookConfig.model_validate(
        {
            "type": "webhook",
            "url": "https://crm.example.com/hook",
            "headers": {"Authorization": f"Bearer {TOKEN}"},
            "signing_secret": SECRET,
        }
    )
    assert TOKEN not in repr(config) and SECRET not in repr(config)
    assert config.signing_secrets == (Secret(SECRET),)
    assert config.method == "POST"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://crm.example.com/hooks/dataslayer?token=abc",
            "https://crm.example.com/hooks/…?<redacted>",
        ),
        ("https://u:p@crm.example.com:8443/", "https://<redacted>@crm.example.com:8443/"),
        ("https://crm.example.com/hook", "https://crm.example.com/hook"),
        ("http://[::1]:8080/a/b/c", "http://[::1]:8080/a/…"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    """redact_url keeps scheme, host, port and first path segment; hides the rest."""
    assert redact_url(url) == shown
