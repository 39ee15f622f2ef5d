"""Property-based fuzzing of a real `relay serve`: it only ever answers 2xx or 4xx, keeps serving,
and its memory stays bounded, whatever arrives."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.crypto import encrypt
from tests.helpers import SECRET, write_config
from tests.helpers_process import RelayProcess, free_port

PATH = "/webhooks/dataslayer"
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    body = f"""
    [server]
    port = {port}
    max_failures_per_minute = 0
    [sinks.out]
    type = "console"
    [[routes]]
    sinks = ["out"]
    """
    process = RelayProcess(write_config(folder, body), port)
    asyncio.run(process.start())
    process.rss_at_start = rss_kb(process)
    yield process
    asyncio.run(process.stop())


def rss_kb(process) -> int:
    status = Path(f"/proc/{process.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


def post(relay, body: bytes, content_type: str | None = "application/json") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
    headers = {"Content-Type": content_type} if content_type is not None else {}
    try:
        conn.request("POST", PATH, body=body, headers=headers)
        response = conn.getresponse()
        status, raw = response.status, response.read()
    finally:
        conn.close()
    assert 200 <= status < 500, (status, raw[:200])
    return status, json.loads(raw)


def token_for(value) -> str:
    return encrypt(SECRET, json.dumps(value).encode(), now=time.time())


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=20,
)
nasty_text = st.text(
    alphabet=st.characters(
        codec="utf-8", categories=["Cc", "Cf", "Zs", "Zl", "Zp", "So", "Lo", "Ll"]
    ),
    max_size=300,
) | st.sampled_from(["<!channel>", "&amp;<>", "\r\nBcc: x@y.z", "\x1b[2J", "{{ 7*7 }}", "a" * 5000])


@FUZZ
@given(body=st.binary(max_size=3000))
def test_random_bytes_get_4xx(relay, body):
    """Arbitrary bytes as a JSON body are a client error, never a server error."""
    status, _ = post(relay, body)
    assert status in (400, 401, 413)


@FUZZ
@given(value=json_values)
def test_random_json_bodies_get_4xx(relay, value):
    """Any JSON that is not {"encrypted_data": <valid token>} is refused with a 4xx."""
    status, _ = post(relay, json.dumps(value).encode())
    assert status in (400, 401)


@FUZZ
@given(
    content_type=st.text(
        st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=60
    )
    | st.sampled_from(
        [
            "text/plain",
            "application/xml",
            "multipart/form-data; boundary=x",
            "application/json; charset=latin-1",
        ]
    )
)
def test_random_content_types_are_handled(relay, content_type):
    """Unknown or malformed content types get a 4xx answer in JSON."""
    body = json.dumps({"encrypted_data": "x"}).encode()
    status, _ = post(relay, body, content_type=content_type)
    assert status in (400, 401, 415)


@FUZZ
@given(value=json_values)
def test_valid_tokens_over_random_plaintexts_are_200_or_422(relay, value):
    """A properly encrypted token always gets 200 (an event) or 422 (not one), never a 500."""
    status, _ = post(relay, json.dumps({"encrypted_data": token_for(value)}).encode())
    assert status in (200, 413, 422)


@FUZZ
@given(
    datasource=nasty_text,
    email=nasty_text | st.integers() | st.none() | st.lists(st.text(), max_size=3),
    created=st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | nasty_text
    | st.none(),
    extra=st.dictionaries(st.text(max_size=10), nasty_text, max_size=4),
)
def test_hostile_event_fields_are_accepted_and_rendered(relay, datasource, email, created, extra):
    """Events with odd, huge, unicode or control-character fields: 200, or 413 when too big."""
    event = {
        **extra,
        "type": "shared_connection",
        "datasource": datasource,
        "email": email,
        "created": created,
    }
    status, _ = post(relay, json.dumps({"encrypted_data": token_for(event)}).encode())
    assert status in (200, 413)


def test_still_serving_with_bounded_memory_and_no_crash(relay):
    """After all the fuzzing the relay answers, grew by less than 64 MB, and logged no traceback."""
    time.sleep(2)  # let the worker render what was accepted
    status, _ = post(relay, json.dumps({"encrypted_data": token_for({"type": "ping"})}).encode())
    assert status == 200
    assert relay.proc.poll() is None
    assert rss_kb(relay) - relay.rss_at_start < 64 * 1024
    log = relay.log.read_text(errors="replace")
    assert "Traceback" not in log
    assert "raised unexpectedly" not in log
