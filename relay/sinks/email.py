"""Email sink: one multipart mail per message over SMTP (aiosmtplib), with TLS made explicit.

Owns the ``type = "email"`` config, composing the mail (headers safe from injection, a
Message-ID stable per event and sink) and mapping SMTP outcomes to retryable or permanent errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import re
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.headerregistry import Address, AddressHeader, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Literal, cast

import aiosmtplib
from pydantic import ConfigDict, Field, field_validator, model_validator

from relay.config_types import Int
from relay.errors import DeliveryError, PermanentError, RetryableError
from relay.failures import classify_exception, classify_smtp_reply
from relay.secret import Secret
from relay.sinks.base import Message, Part, Sink, SinkConfig, SinkContext

log = logging.getLogger(__name__)

QUIT_TIMEOUT = 5.0  # seconds to say goodbye once the mail was accepted; failure changes nothing

_HEADERS = HeaderRegistry()
# Every control character, which covers every line break str.splitlines() knows, plus the
# Unicode ones (NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR).
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")


def clean_header_text(text: str) -> str:
    """``text`` on one line: runs of line breaks and other control characters become one space."""
    return " ".join(_CONTROL.sub(" ", text).split())


def parse_address(value: str) -> Address:
    """One mailbox, ``ops@example.com`` or ``Ops <ops@example.com>``; ValueError names a bad one."""
    problem = f"{value!r} is not an email address (expected name@domain or 'Name <name@domain>')"
    if _CONTROL.search(value):
        raise ValueError(f"{problem}: it contains a line break or control character")
    try:
        header = _HEADERS("to", value)
    except (HeaderParseError, IndexError, ValueError) as exc:
        raise ValueError(problem) from exc
    addresses = cast(AddressHeader, header).addresses
    if len(addresses) > 1:
        raise ValueError(f"{value!r} holds {len(addresses)} addresses; give one per list item")
    # An ObsoleteHeaderDefect is e.g. the dot in "J. Smith <j@example.com>": common and harmless.
    defects = [d for d in header.defects if type(d).__name__ != "ObsoleteHeaderDefect"]
    if defects or not addresses or not addresses[0].username or not addresses[0].domain:
        raise ValueError(problem)
    return addresses[0]


def host_problem(host: str) -> str | None:
    """Why ``host`` is not a bare host name or IP address, or None.

    aiosmtplib hands the host to the resolver as is, so a URL or ``name:port`` would otherwise
    pass validation and only fail at delivery, retried, as "Name or service not known".
    """
    shown = _toml_string(host)
    alone = "give the host name alone, e.g. smtp.example.com"
    if not host:
        return "is empty; give the SMTP server's host name, e.g. smtp.example.com"
    if "://" in host:
        return f"{shown} has a scheme; {alone}"
    if any(ch.isspace() for ch in host):
        return f"{shown} contains white space; {alone}"
    if "/" in host:
        return f"{shown} has a path; {alone}"
    return _colon_problem(host, shown)


def _colon_problem(host: str, shown: str) -> str | None:
    """A port suffix or IPv6 brackets; an unbracketed IPv6 address has colons but is fine."""
    if _is_ip_address(host):
        return None
    name, colon, port = host.rpartition(":")
    if colon and name and port.isdigit():
        return f"{shown} has a port; give the host name alone and set port = {int(port)}"
    inner = host.removeprefix("[").removesuffix("]")
    if host.startswith("[") and _is_ip_address(inner):
        return f"{shown} has brackets; give the IPv6 address alone: {inner}"
    if ":" in host:
        return f"{shown} is neither a host name nor an IP address"
    return None


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _toml_string(text: str) -> str:
    """``text`` quoted as the config file spells a string, so the user sees what they wrote."""
    return json.dumps(text, ensure_ascii=False)


class EmailConfig(SinkConfig):
    """``[sinks.NAME]`` with ``type = "email"``.

    ``security`` is explicit: ``starttls`` upgrades a plain connection and fails (never falls back
    to clear text) when the server does not offer STARTTLS; ``tls`` speaks TLS from the first byte
    (usually port 465); ``none`` is plain SMTP. ``tls_ca_file`` names a PEM file of CA
    certificates to trust instead of the system's, for a server with a private CA (or a test
    with a self-signed one); certificate verification itself is never turned off.
    """

    # hide_input_in_errors: a model-level error would otherwise print every key, password included.
    model_config = ConfigDict(populate_by_name=True, hide_input_in_errors=True)

    type: Literal["email"] = "email"
    host: str
    port: Int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: Secret | None = None
    from_: str = Field(alias="from")
    to: tuple[str, ...] = Field(min_length=1)
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    reply_to: str | None = None
    tls_ca_file: Path | None = None

    @field_validator("host")
    @classmethod
    def _bare_host(cls, value: str) -> str:
        problem = host_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("to", "cc", "bcc", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("from_", "reply_to")
    @classmethod
    def _one_address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_address(value)
        return value

    @field_validator("to", "cc", "bcc")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            parse_address(item)
        return value

    @model_validator(mode="after")
    def _credentials_pair(self) -> EmailConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together: set both or neither")
        return self

    def warnings(self) -> list[str]:
        """Settings that are valid but probably not what was meant."""
        found = []
        if self.port == 465 and self.security == "starttls":
            found.append('port 465 is usually implicit TLS: set security = "tls"')
        if self.port == 587 and self.security == "tls":
            found.append('port 587 usually expects STARTTLS: set security = "starttls"')
        if self.security == "none" and self.password is not None:
            found.append('security = "none" sends the password in clear text')
        if self.security == "none" and self.tls_ca_file is not None:
            found.append('tls_ca_file is unused with security = "none"')
        return found


class EmailSink(Sink):
    """Sends each message as one mail to every address in ``to``, ``cc`` and ``bcc``.

    A retry reuses the Message-ID, so a mail that was accepted but reported as failed (the
    connection dropped after DATA) can be recognised as a duplicate. When the server refuses
    some recipients but accepts others the mail counts as sent (a retry would duplicate it for
    the others) and the refusals are logged.
    """

    type = "email"
    config_model = EmailConfig
    parts = (
        Part("subject", required=True, escape="header"),
        Part("text", required=True, escape="none"),
        Part("html", required=False, escape="html"),
    )
    config: EmailConfig

    def __init__(self, name: str, config: EmailConfig, context: SinkContext) -> None:
        super().__init__(name, config, context)
        self._tls_context: ssl.SSLContext | None = None

    def describe(self) -> str:
        c = self.config
        count = len(self.recipients())
        return (
            f"email via {c.host}:{c.port} ({c.security}) from {parse_address(c.from_).addr_spec}"
            f" to {count} recipient{'s' if count != 1 else ''}"
        )

    def recipients(self) -> list[str]:
        """The envelope recipients: to, cc and bcc, each once."""
        c = self.config
        return list(dict.fromkeys(parse_address(a).addr_spec for a in (*c.to, *c.cc, *c.bcc)))

    def compose(self, message: Message, now: datetime | None = None) -> EmailMessage:
        """The mail for ``message``: text, and HTML as an alternative when the part is not empty."""
        c = self.config
        sender = _safe(parse_address(c.from_))
        mail = EmailMessage()
        mail["Subject"] = clean_header_text(message.parts["subject"])
        mail["From"] = sender
        mail["To"] = _addresses(c.to)
        if c.cc:
            mail["Cc"] = _addresses(c.cc)
        if c.reply_to:
            mail["Reply-To"] = _safe(parse_address(c.reply_to))
        mail["Date"] = format_datetime(now or datetime.now(UTC))
        mail["Message-ID"] = message_id(message, sender.domain)
        mail.set_content(message.parts["text"])
        html = message.parts.get("html") or ""
        if html.strip():
            mail.add_alternative(html, subtype="html")
        return mail

    async def send(self, message: Message) -> None:
        mail = self.compose(message)
        try:
            async with asyncio.timeout(self.timeout):
                client, refused = await self._transmit(mail)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise smtp_error(exc) from exc
        if refused:
            detail = "; ".join(f"{rcpt}: {r.code} {r.message}" for rcpt, r in refused.items())
            log.warning(
                "event %s to %s: mail accepted, but some recipients refused: %s",
                message.event.id,
                self.name,
                detail,
                extra={"event_id": message.event.id, "sink": self.name},
            )
        await _quit(client)

    async def _transmit(self, mail: EmailMessage) -> tuple[aiosmtplib.SMTP, dict[str, Any]]:
        client = aiosmtplib.SMTP(
            hostname=self.config.host,
            port=self.config.port,
            use_tls=self.config.security == "tls",
            start_tls=False,  # upgraded by hand in _secure(), so a missing STARTTLS is an error
            timeout=self.timeout,
            tls_context=self._tls(),
        )
        try:
            await client.connect()
            await self._secure(client)
            await self._login(client)
            refused, _ = await client.send_message(
                mail,
                sender=parse_address(self.config.from_).addr_spec,
                recipients=self.recipients(),
            )
        except BaseException:
            client.close()
            raise
        return client, refused

    async def _secure(self, client: aiosmtplib.SMTP) -> None:
        if self.config.security != "starttls":
            return
        await client.ehlo()
        if not client.supports_extension("starttls"):
            raise PermanentError(
                f"{self.config.host}:{self.config.port} does not offer STARTTLS; not sending in"
                ' clear text (security = "starttls")',
                reason="tls",
            )
        await client.starttls()

    async def _login(self, client: aiosmtplib.SMTP) -> None:
        c = self.config
        if c.username is None or c.password is None:
            return
        await client.ehlo()
        if not client.supports_extension("auth"):
            raise PermanentError(
                f"{c.host}:{c.port} does not offer AUTH (security = {c.security!r})", reason="auth"
            )
        try:
            await client.login(c.username, c.password.reveal())
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise classify_smtp_reply(exc.code, exc.message, auth=True) from exc

    def _tls(self) -> ssl.SSLContext | None:
        ca_file = self.config.tls_ca_file
        if ca_file is None or self.config.security == "none":
            return None  # aiosmtplib's default: the system's CAs, hostname checked
        if self._tls_context is None:
            try:
                self._tls_context = ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise PermanentError(
                    f"cannot load tls_ca_file {ca_file}: {exc}", reason="tls"
                ) from exc
        return self._tls_context


def message_id(message: Message, domain: str) -> str:
    """``<event id.sink@domain>``: the same for every attempt of one event to one sink."""
    left = message.idempotency_key
    if not _DOT_ATOM.match(left):  # a sink name with spaces or non-ASCII letters
        digest = hashlib.sha256(message.sink.encode("utf-8")).hexdigest()[:16]
        left = f"{message.event.id}.{digest}"
    try:
        right = domain.encode("idna").decode("ascii")
    except UnicodeError:
        right = ""
    return f"<{left}@{right if _DOT_ATOM.match(right) else 'dataslayer-relay'}>"


def smtp_error(exc: BaseException) -> DeliveryError:
    """The delivery error for an exception from aiosmtplib or the connection below it."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return _all_refused(exc.recipients)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return classify_smtp_reply(exc.code, exc.message)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return RetryableError("timed out talking to the SMTP server", reason="timeout")
    if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected):
        if isinstance(exc.__cause__, ssl.SSLError):
            return _tls_error(exc.__cause__)
        return RetryableError(f"connection failed: {exc.message}", reason="connection")
    if isinstance(exc, ssl.SSLError):
        return _tls_error(exc)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return PermanentError(f"SMTP server cannot take this mail: {exc.message}", reason="invalid")
    if isinstance(exc, aiosmtplib.SMTPException):
        return PermanentError(f"SMTP error: {exc.message}", reason="invalid")
    return classify_exception(exc)


def _all_refused(refusals: Sequence[aiosmtplib.SMTPRecipientRefused]) -> DeliveryError:
    """Every recipient refused: retry if any refusal was transient (4xx), else give up."""
    transient = [r for r in refusals if 400 <= r.code < 500]
    chosen = classify_smtp_reply((transient or list(refusals))[0].code)
    detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in refusals)
    return type(chosen)(
        f"SMTP {chosen.status} every recipient refused: {detail}",
        reason=chosen.reason,
        status=chosen.status,
    )


def _tls_error(exc: ssl.SSLError) -> DeliveryError:
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return RetryableError(f"TLS connection closed: {exc}", reason="connection")
    return PermanentError(f"TLS failed: {exc}", reason="tls")


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        async with asyncio.timeout(QUIT_TIMEOUT):
            await client.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        log.debug("SMTP QUIT failed after the mail was accepted: %r", exc)
        client.close()


def _safe(address: Address) -> Address:
    """The address with a display name that cannot break the header line."""
    name = clean_header_text(address.display_name)
    return Address(display_name=name, username=address.username, domain=address.domain)


def _addresses(values: Sequence[str]) -> tuple[Address, ...]:
    return tuple(_safe(parse_address(v)) for v in values)
