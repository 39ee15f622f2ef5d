"""The email sink against FakeSMTP (a real aiosmtpd server), its message, errors and config."""

from __future__ import annotations

import asyncio
import logging
import socket
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from pydantic import ValidationError

from relay.config import load_config
from relay.errors import ConfigError, PermanentError, RetryableError
from relay.events import SAMPLE_EVENT, event_from_dict
from relay.failures import classify_smtp_reply
from relay.sinks.base import Message, SinkContext
from relay.sinks.email import EmailConfig, EmailSink, clean_header_text, smtp_error
from relay.testing.smtp import FakeSMTP, TestTLS, make_test_tls
from tests.helpers import write_config

FROM = "Relay <relay@example.com>"
TO = "ops@example.com"
PARTS = {"subject": "Shared: google_ads", "text": "Ana shared google_ads.\n", "html": ""}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TestTLS:
    return make_test_tls(tmp_path_factory.mktemp("tls"))


def make_sink(server: FakeSMTP | None = None, name: str = "ops-mail", **keys: Any) -> EmailSink:
    settings: dict[str, Any] = {"host": "127.0.0.1", "security": "none", "from": FROM, "to": [TO]}
    if server is not None:
        settings["port"] = server.port
    config = EmailConfig(type="email", **(settings | keys))
    return EmailSink(name, config, SinkContext(timeout=2))


def make_message(
    event: dict[str, Any] | None = None, sink: str = "ops-mail", **parts: str
) -> Message:
    return Message(
        event=event_from_dict(event or SAMPLE_EVENT, received_at=0.0),
        sink=sink,
        parts=PARTS | parts,
    )


def header_names(mail: EmailMessage) -> list[str]:
    return [name.lower() for name in mail]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- delivery -------------------------------------------------------------------------------


async def test_plain_delivery_reaches_every_recipient_with_bcc_hidden() -> None:
    """A plain SMTP send reaches to, cc and bcc, and the bcc address is in no header."""
    async with FakeSMTP() as server:
        sink = make_sink(server, cc=["boss@example.com"], bcc=["audit@example.com"])
        await sink.send(make_message())
    [mail] = server.messages
    assert mail.mail_from == "relay@example.com"
    assert mail.rcpt_tos == ("ops@example.com", "boss@example.com", "audit@example.com")
    assert mail.message["To"] == TO
    assert mail.message["Cc"] == "boss@example.com"
    assert b"audit@example.com" not in mail.data
    assert mail.message["Subject"] == "Shared: google_ads"
    assert mail.message["Date"] is not None


async def test_starttls_with_a_certificate_from_a_trusted_ca(tls: TestTLS) -> None:
    """STARTTLS upgrades the connection and verifies the server against tls_ca_file."""
    async with FakeSMTP(starttls=tls.server_context()) as server:
        sink = make_sink(server, security="starttls", tls_ca_file=tls.ca_file)
        await sink.send(make_message())
    assert len(server.messages) == 1


async def test_starttls_with_an_untrusted_certificate_is_permanent(tls: TestTLS) -> None:
    """A server certificate from an unknown CA fails the send for good, reason "tls"."""
    async with FakeSMTP(starttls=tls.server_context()) as server:
        with pytest.raises(PermanentError) as caught:
            await make_sink(server, security="starttls").send(make_message())
    assert caught.value.reason == "tls"
    assert server.messages == []


async def test_starttls_against_a_server_without_it_never_sends_in_clear() -> None:
    """security = "starttls" against a server that does not offer it fails, reason "tls"."""
    async with FakeSMTP() as server:
        with pytest.raises(PermanentError) as caught:
            await make_sink(server, security="starttls").send(make_message())
    assert caught.value.reason == "tls"
    assert "STARTTLS" in str(caught.value)
    assert server.messages == []


async def test_implicit_tls(tls: TestTLS) -> None:
    """security = "tls" speaks TLS from the first byte and delivers."""
    async with FakeSMTP(implicit_tls=tls.server_context()) as server:
        await make_sink(server, security="tls", tls_ca_file=tls.ca_file).send(make_message())
    assert len(server.messages) == 1


async def test_implicit_tls_against_a_plain_server_is_permanent() -> None:
    """security = "tls" against a plain SMTP port fails for good, reason "tls"."""
    async with FakeSMTP() as server:
        with pytest.raises(PermanentError) as caught:
            await make_sink(server, security="tls").send(make_message())
    assert caught.value.reason == "tls"


async def test_auth_accepted_over_starttls(tls: TestTLS) -> None:
    """Valid credentials log in after STARTTLS and the mail is delivered."""
    async with FakeSMTP(starttls=tls.server_context(), users={"relay": "pa55"}) as server:
        sink = make_sink(
            server, security="starttls", tls_ca_file=tls.ca_file, username="relay", password="pa55"
        )
        await sink.send(make_message())
    assert server.logins == ["relay"]
    assert len(server.messages) == 1


async def test_auth_refused_is_permanent_and_keeps_the_code() -> None:
    """A 535 answer to AUTH is a permanent "auth" failure with the code and text in the error."""
    async with FakeSMTP(users={"relay": "pa55"}) as server:
        sink = make_sink(server, username="relay", password="wrong-password")
        with pytest.raises(PermanentError) as caught:
            await sink.send(make_message())
    error = caught.value
    assert (error.reason, error.status) == ("auth", 535)
    assert "535" in str(error) and "Authentication credentials invalid" in str(error)
    assert "wrong-password" not in str(error)
    assert server.messages == []


async def test_auth_configured_but_not_offered_is_permanent() -> None:
    """Credentials for a server that offers no AUTH fail for good rather than send anonymously."""
    async with FakeSMTP() as server:
        with pytest.raises(PermanentError) as caught:
            await make_sink(server, username="relay", password="pa55").send(make_message())
    assert caught.value.reason == "auth"
    assert server.messages == []


@pytest.mark.parametrize("code", [421, 450, 451, 452])
async def test_transient_recipient_refusal_is_retryable(code: int) -> None:
    """A 4xx answer to RCPT is retryable and keeps the SMTP code and text."""
    async with FakeSMTP() as server:
        server.fail("RCPT", f"{code} 4.3.0 try again later")
        with pytest.raises(RetryableError) as caught:
            await make_sink(server).send(make_message())
        await make_sink(server).send(make_message())  # the next attempt goes through
    assert caught.value.status == code
    assert f"{code} 4.3.0 try again later" in str(caught.value)
    assert len(server.messages) == 1


@pytest.mark.parametrize(("command", "code"), [("RCPT", 550), ("RCPT", 553), ("DATA", 550)])
async def test_permanent_refusal_keeps_the_code(command: str, code: int) -> None:
    """A 5xx answer to RCPT or DATA is permanent, with the code as status and the text kept."""
    async with FakeSMTP() as server:
        server.fail(command, f"{code} 5.1.1 mailbox unavailable")
        with pytest.raises(PermanentError) as caught:
            await make_sink(server).send(make_message())
    assert (caught.value.status, caught.value.reason) == (code, "client")
    assert "5.1.1 mailbox unavailable" in str(caught.value)
    assert server.messages == []


async def test_partial_recipient_refusal_counts_as_sent(caplog: pytest.LogCaptureFixture) -> None:
    """When some recipients are refused the mail counts as sent and the refusal is logged, in a
    line that carries the event id like every line about an event."""
    message = make_message()
    async with FakeSMTP() as server:
        server.fail("RCPT", "550 5.1.1 no such user")
        with caplog.at_level(logging.WARNING, logger="relay.sinks.email"):
            await make_sink(server, cc=["boss@example.com"]).send(message)
    assert server.messages[0].rcpt_tos == ("boss@example.com",)
    (record,) = [r for r in caplog.records if "recipients refused" in r.getMessage()]
    assert "550 5.1.1 no such user" in record.getMessage()
    assert message.event.id in record.getMessage()
    assert (record.event_id, record.sink) == (message.event.id, message.sink)


async def test_connection_refused_is_retryable() -> None:
    """Nothing listening on the port is a retryable "connection" failure."""
    sink = make_sink(port=free_port())
    with pytest.raises(RetryableError) as caught:
        await sink.send(make_message())
    assert caught.value.reason == "connection"


async def test_a_server_that_never_answers_is_a_retryable_timeout() -> None:
    """A server that accepts the connection but never greets times out, retryable."""
    writers: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda _, writer: writers.append(writer), "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        sink = EmailSink("ops-mail", make_sink(port=port).config, SinkContext(timeout=0.3))
        with pytest.raises(RetryableError) as caught:
            await sink.send(make_message())
        for writer in writers:
            writer.close()
            await writer.wait_closed()
    assert caught.value.reason == "timeout"


# --- the message ----------------------------------------------------------------------------


async def test_non_ascii_subject_and_sender_name_arrive_intact() -> None:
    """Non-ASCII subjects and display names are RFC 2047 encoded and decode back at the server."""
    subject = "Acceso compartido: Señora Müller — 日本語"
    async with FakeSMTP() as server:
        sink = make_sink(server, **{"from": "Relé Ops <relay@example.com>"})
        await sink.send(make_message(subject=subject, text="Héllo ✓\n"))
    [mail] = server.messages
    headers = mail.data.partition(b"\r\n\r\n")[0]
    assert headers.isascii() and b"=?utf-8?" in headers
    assert b"<relay@example.com>" in mail.data  # the address stays outside the encoded word
    assert mail.message["Subject"] == subject
    assert mail.message["From"].addresses[0].display_name == "Relé Ops"
    assert mail.message["From"].addresses[0].addr_spec == "relay@example.com"
    assert mail.message.get_body(("plain",)).get_content() == "Héllo ✓\n"


async def test_line_breaks_in_event_values_add_no_header_or_recipient() -> None:
    """CR/LF (and every other line break) in a subject or name adds no header and no recipient."""
    evil = "x@example.com\r\nBcc: evil@example.com\nX-Injected: 1\u2028\x85"
    event = SAMPLE_EVENT | {"email": evil}
    async with FakeSMTP() as server:
        sink = make_sink(server)
        subject = f"Shared by {evil}\r\n\r\nbody?"
        await sink.send(
            make_message(event, subject=subject, text=f"From {evil}\n.\nRCPT TO:<x@y>\n")
        )
    [mail] = server.messages
    assert mail.rcpt_tos == (TO,)
    names = header_names(mail.message)
    assert "bcc" not in names and "x-injected" not in names
    assert mail.message["Subject"].startswith("Shared by x@example.com Bcc: evil@example.com")
    assert mail.message.get_body(("plain",)).get_content().endswith(".\nRCPT TO:<x@y>\n")


def test_clean_header_text_folds_every_line_break_to_a_space() -> None:
    """Every kind of line break and control character becomes a single space."""
    breaks = "\r\n \n \r \v \f \x1c \x1d \x1e \x85 \u2028 \u2029 \x00 \t"
    assert clean_header_text(f"a{breaks}b\n") == "a b"


async def test_message_id_is_stable_per_event_and_sink() -> None:
    """Two sends of one event to one sink share a Message-ID; another sink gets another."""
    async with FakeSMTP() as server:
        await make_sink(server).send(make_message())
        await make_sink(server).send(make_message())
        await make_sink(server, name="other").send(make_message(sink="other"))
    first, second, other = (m.message["Message-ID"] for m in server.messages)
    event_id = event_from_dict(SAMPLE_EVENT, received_at=0.0).id
    assert first == second == f"<{event_id}.ops-mail@example.com>"
    assert other != first


def test_message_id_stays_valid_for_any_sink_name() -> None:
    """A sink name with spaces or non-ASCII letters still gives a well-formed Message-ID."""
    sink = make_sink(name="équipe mail")
    mail = sink.compose(make_message(sink="équipe mail"))
    assert mail["Message-ID"].isascii() and " " not in mail["Message-ID"]


async def test_html_part_makes_multipart_alternative() -> None:
    """With an html part the mail is multipart/alternative with text first, then html."""
    async with FakeSMTP() as server:
        await make_sink(server).send(make_message(html="<p>Ana shared <b>google_ads</b></p>"))
    message = server.messages[0].message
    assert message.get_content_type() == "multipart/alternative"
    types = [part.get_content_type() for part in message.iter_parts()]
    assert types == ["text/plain", "text/html"]
    assert "<b>google_ads</b>" in message.get_body(("html",)).get_content()


async def test_without_html_the_mail_is_text_only() -> None:
    """Without an html part (missing or blank) the mail is a single text/plain part."""
    async with FakeSMTP() as server:
        await make_sink(server).send(make_message(html="  \n"))
    assert server.messages[0].message.get_content_type() == "text/plain"


def test_reply_to_header() -> None:
    """reply_to becomes the Reply-To header."""
    mail = make_sink(reply_to="Support <help@example.com>").compose(make_message())
    assert mail["Reply-To"] == "Support <help@example.com>"


# --- classification and config --------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "retryable", "reason"),
    [
        (421, True, "server"),
        (450, True, "server"),
        (451, True, "server"),
        (452, True, "server"),
        (530, False, "auth"),
        (535, False, "auth"),
        (550, False, "client"),
        (552, False, "client"),
        (553, False, "client"),
        (554, False, "client"),
        (-1, True, "server"),
    ],
)
def test_smtp_reply_classification(code: int, retryable: bool, reason: str) -> None:
    """4xx replies retry, 5xx are permanent, auth codes say "auth", odd codes retry."""
    error = classify_smtp_reply(code, "text")
    assert (error.retryable, error.reason, error.status) == (retryable, reason, code)


def test_smtp_error_maps_a_timeout_to_retryable() -> None:
    """aiosmtplib's timeout exceptions are retryable with reason "timeout"."""
    error = smtp_error(aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response"))
    assert (error.retryable, error.reason) == (True, "timeout")


def test_config_accepts_names_and_plain_addresses() -> None:
    """Addresses with display names, plain ones, and a single string for to are accepted."""
    config = EmailConfig.model_validate(
        {"type": "email", "host": "smtp.example.com", "from": "J. Smith <j@example.com>", "to": TO}
    )
    assert config.from_ == "J. Smith <j@example.com>"
    assert config.to == (TO,)
    assert (config.port, config.security) == (587, "starttls")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("from", "not an address", "'not an address' is not an email address"),
        ("to", ["ops@example.com", "garbage"], "'garbage' is not an email address"),
        ("cc", ["a@example.com, b@example.com"], "holds 2 addresses; give one per list item"),
        ("reply_to", "x@example.com\r\nBcc: y@example.com", "line break or control character"),
        ("to", [], "at least 1 item"),
        ("security", "ssl", "'starttls', 'tls' or 'none'"),
        ("username", "relay", "username and password go together"),
    ],
)
def test_config_rejects_bad_values_naming_them(key: str, value: Any, message: str) -> None:
    """A bad address, an empty to list, an unknown security or half credentials fail at load."""
    settings = {"type": "email", "host": "smtp.example.com", "from": FROM, "to": [TO], key: value}
    with pytest.raises(ValidationError) as caught:
        EmailConfig.model_validate(settings)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("host", "message"),
    [
        (
            "https://127.0.0.1:18025",
            '"https://127.0.0.1:18025" has a scheme; give the host name alone,'
            " e.g. smtp.example.com",
        ),
        (
            "smtp example.com",
            '"smtp example.com" contains white space; give the host name alone,'
            " e.g. smtp.example.com",
        ),
        (
            "smtp.example.com/mail",
            '"smtp.example.com/mail" has a path; give the host name alone, e.g. smtp.example.com',
        ),
        (
            "smtp.example.com:2525",
            '"smtp.example.com:2525" has a port; give the host name alone and set port = 2525',
        ),
        ("[::1]:2525", '"[::1]:2525" has a port; give the host name alone and set port = 2525'),
        ("[::1]", '"[::1]" has brackets; give the IPv6 address alone: ::1'),
        ("", "is empty; give the SMTP server's host name, e.g. smtp.example.com"),
    ],
    ids=["scheme", "white space", "path", "port", "IPv6 port", "brackets", "empty"],
)
def test_config_rejects_a_host_that_is_not_a_bare_host_name(
    tmp_path: Path, host: str, message: str
) -> None:
    """A host with a scheme, white space, path, port or brackets, or none, fails at load by path."""
    body = f"""
    [sinks.ops-mail]
    type = "email"
    host = "{host}"
    from = "relay@example.com"
    to = "ops@example.com"
    """
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, body), environ={})
    assert [str(p) for p in caught.value.problems] == [f"sinks.ops-mail.host: {message}"]


@pytest.mark.parametrize(
    "host", ["smtp.example.com", "localhost", "mail-relay_1", "127.0.0.1", "::1", "2001:db8::25"]
)
def test_config_accepts_host_names_and_ip_addresses(host: str) -> None:
    """Host names (underscores too, as in container names) and IPv4 and IPv6 literals load."""
    assert make_sink(host=host).config.host == host


def test_config_keeps_the_password_out_of_its_repr() -> None:
    """The password is a Secret: repr and validation errors never show it."""
    config = make_sink(username="relay", password="hunter2-secret").config
    assert "hunter2-secret" not in repr(config)
    with pytest.raises(ValidationError) as caught:
        EmailConfig.model_validate(
            {"type": "email", "host": "h", "from": FROM, "to": [TO], "password": "hunter2-secret"}
        )
    assert "hunter2-secret" not in str(caught.value)


def test_config_warnings_on_port_and_security_mismatch() -> None:
    """465 with starttls and 587 with tls are valid but warned about."""
    assert make_sink(port=465, security="starttls").config.warnings() == [
        'port 465 is usually implicit TLS: set security = "tls"'
    ]
    assert make_sink(port=587, security="tls").config.warnings() == [
        'port 587 usually expects STARTTLS: set security = "starttls"'
    ]
    assert make_sink(port=465, security="tls").config.warnings() == []


def test_describe_names_server_and_count_but_no_secret() -> None:
    """describe() names the server, security and recipient count, never the password."""
    sink = make_sink(port=2525, username="relay", password="hunter2-secret", bcc=["a@example.com"])
    text = sink.describe()
    assert text == "email via 127.0.0.1:2525 (none) from relay@example.com to 2 recipients"


async def test_missing_ca_file_is_permanent(tmp_path: Path) -> None:
    """An unreadable tls_ca_file is a permanent "tls" problem, not a retry."""
    sink = make_sink(security="tls", tls_ca_file=tmp_path / "missing.pem")
    with pytest.raises(PermanentError) as caught:
        await sink.send(make_message())
    assert caught.value.reason == "tls"
