"""Through the running HTTP server: every answer of the contract, and delivery to a fake Slack."""

from __future__ import annotations

import io
import json

import pytest

from relay.clock import FakeClock
from relay.config import load_config
from relay.crypto import encrypt
from relay.server import OUTBOX, WORKER, create_app
from relay.testing.slack import Answer, FakeSlack
from tests.helpers import BY_NAME, SECRET, VECTOR_NOW, write_config

PATH = "/webhooks/dataslayer"


@pytest.fixture
async def slack():
    async with FakeSlack(token="xoxb-test") as fake:
        yield fake


@pytest.fixture
def clock():
    return FakeClock(VECTOR_NOW)


def slack_config(tmp_path, slack, extra=""):
    body = f"""
    [delivery]
    max_attempts = 3
    initial_backoff = 10
    [sinks.team-slack]
    type = "slack"
    webhook_url = "{slack.webhook_url}"
    [[routes]]
    sinks = ["team-slack"]
    """
    return load_config(write_config(tmp_path, body + extra), environ={})


@pytest.fixture
async def relay(tmp_path, slack, clock, aiohttp_client):
    """A relay whose worker is driven by the test (drain) on an injected clock."""
    app = create_app(slack_config(tmp_path, slack), clock=clock, run_worker=False)
    return await aiohttp_client(app)


async def post_token(client, token):
    response = await client.post(PATH, json={"encrypted_data": token})
    return response.status, await response.json()


def token_for(event: dict, now: float) -> str:
    return encrypt(SECRET, json.dumps(event).encode(), now=now)


async def test_a_dataslayer_post_reaches_slack_with_email_and_datasource(relay, slack):
    """A vector's token is accepted, stored, and arrives in Slack once, readable."""
    status, body = await post_token(relay, BY_NAME["basic"]["token"])
    assert status == 200
    assert body["status"] == "accepted"
    await relay.app[WORKER].drain()
    assert len(slack.messages) == 1
    text = slack.messages[0]["text"]
    assert "ana.lopez@example.com" in text
    assert "Google Ads" in text


async def test_the_same_event_again_is_a_duplicate_and_sends_nothing(relay, slack):
    """The same event in a fresh token is a duplicate with the same id; one message in all."""
    _, first = await post_token(relay, BY_NAME["basic"]["token"])
    plaintext = json.loads(BY_NAME["basic"]["plaintext"])
    status, again = await post_token(relay, token_for(plaintext, VECTOR_NOW))
    assert status == 200
    assert again == {"status": "duplicate", "id": first["id"]}
    await relay.app[WORKER].drain()
    assert len(slack.messages) == 1


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"not json", "body is not JSON"),
        (b"[1, 2]", "body is not a JSON object"),
        (b'{"encrypted_data": 5}', 'no string "encrypted_data"'),
        (b"{}", 'no string "encrypted_data"'),
        (b"\xff\xfe", "body is not JSON"),
    ],
)
async def test_malformed_bodies_get_400_with_a_reason(relay, body, detail):
    """Bodies that are not {"encrypted_data": "..."} get 400 bad_request saying why."""
    response = await relay.post(PATH, data=body, headers={"Content-Type": "application/json"})
    assert response.status == 400
    answer = await response.json()
    assert answer["error"] == "bad_request"
    assert detail in answer["detail"]


async def test_token_from_another_secret_gets_401(relay):
    """A token made with another secret is refused with invalid_token."""
    token = encrypt("another-secret-0123456789abcdefg", b'{"type": "x"}', now=VECTOR_NOW)
    status, body = await post_token(relay, token)
    assert status == 401
    assert body["error"] == "invalid_token"


async def test_expired_token_gets_401_with_its_age(relay, clock):
    """A token older than max_token_age is refused, and the detail says how old."""
    clock.advance(3 * 86400)
    status, body = await post_token(relay, BY_NAME["basic"]["token"])
    assert status == 401
    assert "3 days old" in body["detail"]


@pytest.mark.parametrize("name", ["not_json_plaintext", "json_array_plaintext"])
async def test_decrypted_content_that_is_not_an_event_gets_422(relay, name):
    """Valid tokens whose plaintext is not a JSON object get 422 invalid_event."""
    status, body = await post_token(relay, BY_NAME[name]["token"])
    assert status == 422
    assert body["error"] == "invalid_event"
    assert BY_NAME[name]["plaintext"] not in body["detail"]


async def test_an_object_without_a_string_type_gets_422(relay):
    """Decrypted JSON without a string "type" is not an event."""
    status, body = await post_token(relay, token_for({"datasource": "x"}, VECTOR_NOW))
    assert status == 422
    assert "type" in body["detail"]


async def test_bodies_over_the_limit_get_413_and_at_the_limit_do_not(relay):
    """max_body_bytes is the limit aiohttp enforces, not its 1 MiB default."""
    limit = 65536
    big = json.dumps({"encrypted_data": "x" * limit}).encode()
    response = await relay.post(PATH, data=big, headers={"Content-Type": "application/json"})
    assert response.status == 413
    assert await response.json() == {"error": "too_large"}
    exact = b'{"encrypted_data": "' + b"a" * (limit - 22) + b'"}'
    assert len(exact) == limit
    response = await relay.post(PATH, data=exact, headers={"Content-Type": "application/json"})
    assert response.status == 401


async def test_chunked_bodies_over_the_limit_get_413(relay):
    """A body without Content-Length is still cut off at the limit."""

    async def chunks():
        for _ in range(20):
            yield b"x" * 8192

    response = await relay.post(PATH, data=chunks())
    assert response.status == 413


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_limit_above_aiohttps_default_is_the_one_enforced(
    tmp_path, slack, clock, aiohttp_client, chunked
):
    """With max_body_bytes = 2 MiB a 1.5 MiB body is read (401) and a 2.2 MiB one gets 413."""
    config = slack_config(tmp_path, slack, "[server]\nmax_body_bytes = 2097152\n")
    client = await aiohttp_client(create_app(config, clock=clock, run_worker=False))

    async def post_body(size):
        body = b'{"encrypted_data": "' + b"a" * (size - 22) + b'"}'
        assert len(body) == size

        async def chunks():
            for start in range(0, size, 65536):
                yield body[start : start + 65536]

        data = chunks() if chunked else io.BytesIO(body)  # BytesIO: sent with Content-Length
        response = await client.post(PATH, data=data, headers={"Content-Type": "application/json"})
        return response.status, await response.json()

    status, answer = await post_body(1536 * 1024)  # read whole: the token is refused
    assert (status, answer["error"]) == (401, "invalid_token")
    assert await post_body(2253 * 1024) == (413, {"error": "too_large"})


async def test_other_paths_and_methods_answer_json(relay):
    """Unknown paths and wrong methods get JSON errors, not HTML; a 405 says what is allowed."""
    response = await relay.get("/nope")
    assert response.status == 404
    assert (await response.json())["error"] == "not_found"
    response = await relay.get(PATH)
    assert response.status == 405
    assert (await response.json())["error"] == "method_not_allowed"
    assert response.headers["Allow"] == "POST"


async def test_form_encoded_posts_are_accepted(relay):
    """encrypted_data as a form field works like the JSON body."""
    response = await relay.post(PATH, data={"encrypted_data": BY_NAME["basic"]["token"]})
    assert response.status == 200


async def test_storage_failure_answers_503_and_never_200(relay):
    """When the database cannot take the event, the sender gets 503 to retry later."""
    outbox = relay.app[OUTBOX]
    outbox._conn.execute("PRAGMA max_page_count = 1")  # the disk is "full"
    event = {"type": "shared_connection", "account": "x" * 20_000}
    status, body = await post_token(relay, token_for(event, VECTOR_NOW))
    assert status == 503
    assert body == {"error": "unavailable"}


async def test_slack_429_is_retried_after_retry_after_exactly_once(relay, slack, clock):
    """429 with Retry-After: 3, then 200: one message, and no attempt before 3 s."""
    slack.script(FakeSlack.rate_limited(retry_after=3))
    await post_token(relay, BY_NAME["basic"]["token"])
    worker = relay.app[WORKER]
    await worker.drain()
    assert len(slack.requests) == 1
    clock.advance(2.9)
    await worker.drain()
    assert len(slack.requests) == 1
    clock.advance(0.1)
    await worker.drain()
    assert len(slack.requests) == 2
    assert len(slack.messages) == 1


@pytest.mark.parametrize(
    ("answer", "reason", "error"),
    [
        (FakeSlack.error("invalid_blocks", status=400), "client", "400 invalid_blocks"),
        (FakeSlack.error("no_service", status=404), "auth", "404 no_service"),
        (
            Answer(error="invalid_auth", webhook_body='{"ok": false, "error": "invalid_auth"}'),
            "auth",
            "200 invalid_auth",
        ),
    ],
    ids=["400-invalid_blocks", "404-no_service", "ok-false-invalid_auth"],
)
async def test_permanent_slack_errors_are_dead_after_one_attempt(
    relay, slack, clock, answer, reason, error
):
    """Slack's invalid_blocks, no_service, invalid_auth: dead after one try, the error kept."""
    slack.script(answer)
    await post_token(relay, BY_NAME["basic"]["token"])
    await relay.app[WORKER].drain()
    clock.advance(10_000)
    await relay.app[WORKER].drain()
    assert len(slack.requests) == 1
    assert await relay.app[OUTBOX].counts() == {
        "pending": 0,
        "retrying": 0,
        "delivered": 0,
        "dead": 1,
    }
    assert dead_delivery(relay) == (
        "dead",
        1,
        reason,
        f"Slack answered {error} (permanent failure after 1 attempt)",
    )


def dead_delivery(client):
    """(status, attempts, last_reason, last_error) of the relay's only delivery."""
    return (
        client.app[OUTBOX]
        ._conn.execute("SELECT status, attempts, last_reason, last_error FROM deliveries")
        .fetchone()
    )


@pytest.mark.parametrize("scripted", [False, True], ids=["wrong-token", "scripted-answer"])
async def test_a_bot_token_slack_refuses_with_ok_false_is_dead_naming_the_error(
    tmp_path, slack, clock, aiohttp_client, scripted
):
    """Bot-token mode: a 200 {"ok": false, "error": "invalid_auth"} is dead after one attempt."""
    body = f"""
    [delivery]
    max_attempts = 3
    [sinks.bot]
    type = "slack"
    token = "{"xoxb-test" if scripted else "xoxb-revoked"}"
    channel = "#access"
    api_url = "{slack.api_url}"
    [[routes]]
    sinks = ["bot"]
    """
    config = load_config(write_config(tmp_path, body), environ={})
    client = await aiohttp_client(create_app(config, clock=clock, run_worker=False))
    if scripted:
        slack.script(FakeSlack.error("invalid_auth"))
    status, _ = await post_token(client, BY_NAME["basic"]["token"])
    assert status == 200
    await client.app[WORKER].drain()
    clock.advance(10_000)
    await client.app[WORKER].drain()
    [request] = slack.requests
    assert request.path == "/api/chat.postMessage"
    assert slack.messages == []
    assert dead_delivery(client) == (
        "dead",
        1,
        "auth",
        "Slack answered 200 invalid_auth (permanent failure after 1 attempt)",
    )


async def test_retryable_failures_end_dead_after_max_attempts(relay, slack, clock):
    """5xx is retried with backoff until max_attempts, then dead."""
    slack.script(*[FakeSlack.server_error(500)] * 5)
    await post_token(relay, BY_NAME["basic"]["token"])
    for _ in range(5):
        await relay.app[WORKER].drain()
        clock.advance(3600)
    assert len(slack.requests) == 3
    assert (await relay.app[OUTBOX].counts())["dead"] == 1


async def test_event_values_cannot_ping_or_forge_links_in_slack(relay, slack):
    """An email with <!channel> & a link markup arrives escaped in text and blocks."""
    event = {
        "type": "shared_connection",
        "datasource": "google_ads",
        "email": "<!channel> & <https://x.example|y>",
        "created": 1733240000,
    }
    await post_token(relay, token_for(event, VECTOR_NOW))
    await relay.app[WORKER].drain()
    message = json.dumps(slack.messages[0])
    assert "&lt;!channel&gt; &amp; &lt;https://x.example|y&gt;" in message
    assert "<!channel>" not in message
    assert "<https://x.example" not in message


async def test_accepted_events_survive_a_restart_and_arrive_exactly_once(
    tmp_path, slack, clock, aiohttp_client
):
    """Events accepted while Slack is down are delivered once by a new server on the same DB."""
    config = slack_config(tmp_path, slack)
    slack.script(*[FakeSlack.server_error(503)] * 2)
    first = await aiohttp_client(create_app(config, clock=clock, run_worker=False))
    ids = []
    for n in range(4):
        event = {"type": "shared_connection", "datasource": "ga4", "email": f"c{n}@example.com"}
        ids.append((await post_token(first, token_for(event, VECTOR_NOW)))[1]["id"])
    for _ in range(3):  # Slack's pace is one message a second: three attempts
        await first.app[WORKER].drain()
        clock.advance(1)
    await first.close()
    assert len(slack.requests) == 3
    assert len(slack.messages) == 1

    second = await aiohttp_client(create_app(config, clock=clock, run_worker=False))
    clock.advance(3600)
    for _ in range(6):
        await second.app[WORKER].drain()
        clock.advance(1)
    emails = sorted(m["text"].split("*")[1] for m in slack.messages)
    assert emails == [f"c{n}@example.com" for n in range(4)]
    assert len(set(ids)) == 4


async def test_slack_down_then_back_at_the_same_url_gets_the_message(
    tmp_path, clock, aiohttp_client
):
    """While nothing listens the delivery waits; once Slack is back on its URL it arrives once."""
    async with FakeSlack() as first:
        port = first.port
        config = slack_config(tmp_path, first)
    app = create_app(config, clock=clock, run_worker=False)
    client = await aiohttp_client(app)
    await post_token(client, BY_NAME["basic"]["token"])
    await app[WORKER].drain()  # refused: Slack is down
    assert (await app[OUTBOX].counts())["retrying"] == 1
    async with FakeSlack(port=port) as back:
        clock.advance(3600)
        await app[WORKER].drain()
        assert len(back.messages) == 1
