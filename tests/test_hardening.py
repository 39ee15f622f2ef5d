"""The public receiver: content types, token variants, replays, abuse limits, access control."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging

import pytest

from relay.admin_settings import outbox_settings
from relay.clock import FakeClock
from relay.config import load_config
from relay.crypto import encrypt
from relay.errors import ConfigError
from relay.server import WORKER, create_app
from tests.helpers import BY_NAME, SECRET, VECTOR_NOW, write_config

PATH = "/webhooks/dataslayer"
TOKEN = BY_NAME["basic"]["token"]


async def make_relay(tmp_path, aiohttp_client, server="", clock=None):
    body = f"""
    [server]
    {server}
    [sinks.out]
    type = "console"
    [[routes]]
    sinks = ["out"]
    """
    config = load_config(write_config(tmp_path, body), environ={})
    client = await aiohttp_client(
        create_app(config, clock=clock or FakeClock(VECTOR_NOW), run_worker=False)
    )
    return client


@pytest.fixture
async def relay(tmp_path, aiohttp_client):
    return await make_relay(tmp_path, aiohttp_client)


def body(token=TOKEN):
    return json.dumps({"encrypted_data": token}).encode()


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "application/json; charset=utf-8", "application/json;charset=UTF-8"],
)
async def test_json_with_or_without_charset_is_accepted(relay, content_type):
    """JSON bodies are accepted with any spelling of a UTF-8 charset, or no Content-Type at all."""
    headers = {"Content-Type": content_type} if content_type else {}
    response = await relay.post(
        PATH, data=body(), headers=headers, skip_auto_headers=["Content-Type"]
    )
    assert response.status == 200


@pytest.mark.parametrize(
    ("content_type", "detail"),
    [
        ("text/plain", 'not "text/plain"'),
        ("multipart/form-data; boundary=x", 'not "multipart/form-data"'),
        ("application/json; charset=latin-1", 'charset must be utf-8, not "latin-1"'),
    ],
)
async def test_other_content_types_get_415_with_a_reason(relay, content_type, detail):
    """Anything but JSON or a form is refused with 415 saying what is accepted."""
    response = await relay.post(PATH, data=body(), headers={"Content-Type": content_type})
    assert response.status == 415
    answer = await response.json()
    assert answer["error"] == "unsupported_media_type"
    assert detail in answer["detail"]


@pytest.mark.parametrize(
    "variant",
    [
        lambda t: f"  {t}\n",
        lambda t: t + "==",
        lambda t: t[:20] + "\n" + t[20:],
        lambda t: base64.urlsafe_b64encode(base64.urlsafe_b64decode(t)).decode().rstrip("="),
    ],
    ids=["whitespace", "extra-padding", "newline-inside", "unpadded"],
)
async def test_variants_of_one_token_are_the_same_event(relay, variant):
    """Base64 is lenient, so dedup works on the decrypted event: variants are duplicates."""
    first = await (await relay.post(PATH, data=body(), headers=JSON)).json()
    response = await relay.post(PATH, data=body(variant(TOKEN)), headers=JSON)
    assert response.status == 200
    assert await response.json() == {"status": "duplicate", "id": first["id"]}


async def test_tokens_from_beyond_the_skew_are_refused(relay):
    """A token made an hour in the future (a forged or broken clock) gets 401."""
    token = encrypt(SECRET, b'{"type": "x"}', now=VECTOR_NOW + 3600)
    response = await relay.post(PATH, data=body(token), headers=JSON)
    assert response.status == 401
    assert "from the future" in (await response.json())["detail"]


def test_dedup_window_must_cover_max_token_age(tmp_path):
    """A dedup window shorter than the token lifetime would allow replays: a config error."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[dataslayer]\nsecret = "{SECRET}"\nmax_token_age = 86400\ndedup_window = 3600\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(config, environ={})
    (problem,) = info.value.problems
    assert problem.path == "dataslayer.dedup_window"
    assert "replayed" in problem.message


async def test_a_token_from_inside_the_skew_cannot_be_replayed_once_its_window_ends(
    tmp_path, aiohttp_client
):
    """A token stamped up to max_clock_skew ahead stays valid that much longer, and so does the
    memory of its event: replayed at the last moment it is still valid, it is a duplicate."""
    clock = FakeClock(VECTOR_NOW)
    body_ = """
    max_token_age = 3600
    dedup_window = 3600
    max_clock_skew = 60
    [sinks.out]
    type = "console"
    [[routes]]
    sinks = ["out"]
    """
    config = load_config(write_config(tmp_path, body_), environ={})
    relay = await aiohttp_client(create_app(config, clock=clock, run_worker=False))
    token = encrypt(SECRET, b'{"type": "x", "n": 1}', now=VECTOR_NOW + 55)
    first = await relay.post(PATH, data=body(token), headers=JSON)
    assert (await first.json())["status"] == "accepted"
    clock.advance(3600 + 50)  # the token is 3,595 s old: still inside max_token_age
    again = await relay.post(PATH, data=body(token), headers=JSON)
    assert again.status == 200
    assert await again.json() == {"status": "duplicate", "id": (await first.json())["id"]}


def test_relay_outbox_remembers_events_as_long_as_the_server(tmp_path):
    """relay outbox purge keeps tombstones for dedup_window plus max_clock_skew, as the server."""
    config = tmp_path / "config.toml"
    config.write_text("[dataslayer]\ndedup_window = 3600\nmax_clock_skew = 30\n")
    assert outbox_settings(config, {}).remember_for == 3630
    config.write_text("[dataslayer]\ndedup_window = 0\n")
    assert outbox_settings(config, {}).remember_for == 0


async def test_repeated_failures_from_one_address_get_429_until_the_minute_ends(
    tmp_path, aiohttp_client
):
    """After max_failures_per_minute bad requests, the address gets 429, then may post again."""
    clock = FakeClock(VECTOR_NOW)
    relay = await make_relay(tmp_path, aiohttp_client, "max_failures_per_minute = 3", clock)
    for _ in range(3):
        assert (await relay.post(PATH, data=b"junk", headers=JSON)).status == 400
    blocked = await relay.post(PATH, data=body(), headers=JSON)
    assert blocked.status == 429
    assert int(blocked.headers["Retry-After"]) <= 61
    clock.advance(61)
    assert (await relay.post(PATH, data=body(), headers=JSON)).status == 200


async def test_reaching_the_failure_limit_is_logged_once_per_minute(
    tmp_path, aiohttp_client, caplog
):
    """The failure that reaches the limit logs one warning naming the address; the 429s after it
    and further failures in the same minute log no more."""
    clock = FakeClock(VECTOR_NOW)
    relay = await make_relay(tmp_path, aiohttp_client, "max_failures_per_minute = 2", clock)
    with caplog.at_level(logging.WARNING, logger="relay"):
        for _ in range(5):
            await relay.post(PATH, data=b"junk", headers=JSON)
    lines = [r.getMessage() for r in caplog.records if "max_failures_per_minute" in r.getMessage()]
    assert lines == [
        "127.0.0.1 reached server.max_failures_per_minute: its posts get 429 until its minute is "
        "over (behind a proxy, list the proxy in server.trusted_proxies)"
    ]


async def test_successful_posts_do_not_count_as_failures(tmp_path, aiohttp_client):
    """Many accepted or duplicate posts never trip the failure limit."""
    relay = await make_relay(tmp_path, aiohttp_client, "max_failures_per_minute = 2")
    for _ in range(10):
        assert (await relay.post(PATH, data=body(), headers=JSON)).status == 200


async def test_allow_ips_refuses_other_addresses(tmp_path, aiohttp_client):
    """With allow_ips set, a client outside it gets 403 before anything is read."""
    relay = await make_relay(tmp_path, aiohttp_client, 'allow_ips = ["10.0.0.0/8"]')
    response = await relay.post(PATH, data=body(), headers=JSON)
    assert response.status == 403
    assert (await response.json())["error"] == "forbidden"


async def test_x_forwarded_for_is_trusted_only_from_configured_proxies(tmp_path, aiohttp_client):
    """Behind a trusted proxy the forwarded client address decides; otherwise it is ignored."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    proxied = await make_relay(
        tmp_path / "a",
        aiohttp_client,
        'allow_ips = ["203.0.113.0/24"]\ntrusted_proxies = ["127.0.0.1"]',
    )
    ok = await proxied.post(PATH, data=body(), headers={**JSON, "X-Forwarded-For": "203.0.113.9"})
    assert ok.status == 200
    spoofed = await proxied.post(
        PATH, data=body(), headers={**JSON, "X-Forwarded-For": "203.0.113.9, 198.51.100.7"}
    )
    assert spoofed.status == 403  # the right-most untrusted hop is the client
    direct = await make_relay(tmp_path / "b", aiohttp_client, 'allow_ips = ["203.0.113.0/24"]')
    ignored = await direct.post(
        PATH, data=body(), headers={**JSON, "X-Forwarded-For": "203.0.113.9"}
    )
    assert ignored.status == 403


BASIC = '[server.auth]\ntype = "basic"\nusername = "dataslayer"\npassword = "s3cret-pass"'
HEADER = '[server.auth]\ntype = "header"\nheader = "X-Relay-Token"\nvalue = "tok-123456"'


async def test_basic_auth_is_required_when_configured(tmp_path, aiohttp_client):
    """Without or with wrong credentials: 401 with a Basic challenge; with them: accepted."""
    relay = await make_relay(tmp_path, aiohttp_client, BASIC)
    missing = await relay.post(PATH, data=body(), headers=JSON)
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"] == 'Basic realm="relay"'
    assert (await missing.json())["error"] == "unauthorized"
    wrong = base64.b64encode(b"dataslayer:nope").decode()
    assert (
        await relay.post(PATH, data=body(), headers={**JSON, "Authorization": f"Basic {wrong}"})
    ).status == 401
    right = base64.b64encode(b"dataslayer:s3cret-pass").decode()
    assert (
        await relay.post(PATH, data=body(), headers={**JSON, "Authorization": f"Basic {right}"})
    ).status == 200


async def test_a_shared_header_can_be_required(tmp_path, aiohttp_client):
    """With header auth, only requests carrying the configured value are let in."""
    relay = await make_relay(tmp_path, aiohttp_client, HEADER)
    assert (await relay.post(PATH, data=body(), headers=JSON)).status == 401
    assert (
        await relay.post(PATH, data=body(), headers={**JSON, "X-Relay-Token": "tok-12345"})
    ).status == 401
    assert (
        await relay.post(PATH, data=body(), headers={**JSON, "X-Relay-Token": "tok-123456"})
    ).status == 200


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (
            'allow_ips = ["10.0.0.0/33"]',
            'server.allow_ips: "10.0.0.0/33" is not an IP address or CIDR',
        ),
        (
            '[server.auth]\ntype = "basic"\nusername = "x"',
            'server.auth: type = "basic" needs username and password',
        ),
    ],
)
def test_access_settings_are_validated(tmp_path, server, message):
    """Bad CIDRs and incomplete auth settings are config errors naming the key."""
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, f"[server]\n{server}\n"), environ={})
    assert str(info.value.problems[0]).startswith(message)


@pytest.mark.parametrize(
    ("plaintext", "detail"),
    [
        ('{"type": "x", "n": NaN}', "not JSON"),
        ('{"type": "x", "e": "\\ud800"}', "lone surrogate"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
    ids=["nan", "lone-surrogate", "deep-nesting"],
)
async def test_hostile_plaintexts_get_422_not_500(tmp_path, aiohttp_client, plaintext, detail):
    """NaN, lone surrogates and absurd nesting inside a valid token are refused cleanly."""
    relay = await make_relay(tmp_path, aiohttp_client, "max_body_bytes = 1048576")
    token = encrypt(SECRET, plaintext.encode(), now=VECTOR_NOW)
    response = await relay.post(PATH, data=body(token), headers=JSON)
    assert response.status == 422
    assert detail in (await response.json())["detail"]


async def test_deeply_nested_bodies_get_400_not_500(relay):
    """A body of nested arrays that would overflow the parser is a plain 400."""
    response = await relay.post(
        PATH, data=b"[" * 60_000, headers={**JSON, "Content-Type": "application/json"}
    )
    assert response.status == 400


async def test_event_data_cannot_forge_log_lines_or_drive_the_terminal(
    tmp_path, aiohttp_client, caplog
):
    """Newlines and ANSI escapes in event fields are escaped in logs and console output."""
    caplog.set_level(logging.INFO)
    relay = await make_relay(tmp_path, aiohttp_client)
    out = io.StringIO()
    for sink in relay.app[WORKER]._sinks.values():
        sink.context.stdout = out
    event = {
        "type": "shared_connection",
        "datasource": "x\nFAKE LOG LINE",
        "email": "\x1b[2Jz@x.io",
    }
    token = encrypt(SECRET, json.dumps(event).encode(), now=VECTOR_NOW)
    assert (await relay.post(PATH, data=body(token), headers=JSON)).status == 200
    await relay.app[WORKER].drain()
    assert "\nFAKE LOG LINE" not in caplog.text
    assert "x\\nFAKE LOG LINE" in caplog.text
    assert "\x1b" not in out.getvalue()
    assert "\\x1b[2J" in out.getvalue()


async def test_emails_are_masked_in_logs_unless_configured(tmp_path, aiohttp_client, caplog):
    """By default logs show a***@example.com; [logging] show_personal_data = true shows it all."""
    caplog.set_level(logging.INFO)
    relay = await make_relay(tmp_path, aiohttp_client)
    await relay.post(PATH, data=body(), headers=JSON)
    assert "a***@example.com" in caplog.text
    assert "ana.lopez@example.com" not in caplog.text
    caplog.clear()
    (tmp_path / "shown").mkdir()
    config = write_config(
        tmp_path / "shown",
        '[logging]\nshow_personal_data = true\n[sinks.out]\ntype = "console"\n',
    )
    shown = await aiohttp_client(
        create_app(load_config(config, environ={}), clock=FakeClock(VECTOR_NOW), run_worker=False)
    )
    await shown.post(PATH, data=body(), headers=JSON)
    assert "ana.lopez@example.com" in caplog.text


def test_masking_is_linear_and_keeps_the_label():
    """Masking a huge field finishes (it used to be quadratic) and keeps "email=" intact."""
    from relay.events import mask_emails_in

    assert mask_emails_in("email=ana@example.com, x") == "email=a***@example.com, x"
    assert mask_emails_in("email=a***@example.com") == "email=a***@example.com"
    huge = "d" * 300_000
    assert mask_emails_in(huge) == huge  # quadratic, this took minutes and hit the test timeout
    assert mask_emails_in(huge + "@x.io").endswith("***@x.io")


async def test_repeated_x_forwarded_for_lines_are_read_as_one_list(tmp_path, aiohttp_client):
    """A proxy that adds its own header line wins over the client's line before it."""
    from multidict import CIMultiDict

    relay = await make_relay(
        tmp_path, aiohttp_client, 'allow_ips = ["10.1.2.3"]\ntrusted_proxies = ["127.0.0.1"]'
    )
    headers = CIMultiDict([("Content-Type", "application/json"), ("X-Forwarded-For", "10.1.2.3")])
    headers.add("X-Forwarded-For", "8.8.8.8")  # what the proxy saw: the real client
    response = await relay.post(PATH, data=body(), headers=headers)
    assert response.status == 403


async def test_console_output_escapes_line_breaks_that_come_from_event_data(
    tmp_path, aiohttp_client
):
    """A newline inside an event value cannot start a fake line in the console output."""
    relay = await make_relay(tmp_path, aiohttp_client)
    out = io.StringIO()
    for sink in relay.app[WORKER]._sinks.values():
        sink.context.stdout = out
    event = {"type": "shared_connection", "email": "evil\n2026-12-03 INFO relay.ingest: FORGED"}
    token = encrypt(SECRET, json.dumps(event).encode(), now=VECTOR_NOW)
    assert (await relay.post(PATH, data=body(token), headers=JSON)).status == 200
    await relay.app[WORKER].drain()
    lines = out.getvalue().splitlines()
    assert not any(line.startswith("2026-12-03 INFO") for line in lines)
    assert "evil\\n2026-12-03 INFO relay.ingest: FORGED" in out.getvalue()
    assert len(lines) > 3  # the template's own line breaks are kept


async def test_a_body_that_trickles_in_gets_408_and_the_connection_is_freed(
    tmp_path, aiohttp_client
):
    """A client sending its body a byte at a time cannot hold a connection: past
    [server] body_timeout it gets 408 and the connection is closed."""
    relay = await make_relay(tmp_path, aiohttp_client, "body_timeout = 0.3")

    async def trickle():
        yield b'{"encrypted_data": "'
        await asyncio.sleep(5)
        yield b'"}'

    response = await relay.post(PATH, data=trickle(), headers=JSON)
    assert response.status == 408
    assert await response.json() == {
        "error": "timeout",
        "detail": "the body did not arrive within 0.3 s",
    }
    assert response.headers["Connection"] == "close"
