"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, with TLS, AUTH and scripted refusals.

Use it to test email templates and settings end to end::

    async with FakeSMTP() as server:
        await sink.send(message)          # EmailConfig(host=server.host, port=server.port, ...)
    mail = server.messages[0].message     # the parsed EmailMessage, as the server received it

``make_test_tls(tmp_path)`` creates a throwaway CA and a certificate for 127.0.0.1 and localhost,
so a test can run STARTTLS or implicit TLS with certificate verification left on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections import defaultdict, deque
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relay.testing import LocalServer

HOST = "127.0.0.1"


@dataclass(frozen=True)
class ReceivedMail:
    """One message the server accepted: its envelope and its bytes exactly as sent."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        """The message parsed with the modern email policy, line endings back to ``\\n``."""
        text = self.data.replace(b"\r\n", b"\n")
        return BytesParser(policy=policy.default).parsebytes(text)


class FakeSMTP(LocalServer):
    """An aiosmtpd server in a background thread on a free port of 127.0.0.1.

    ``starttls``: offer and require STARTTLS with this server context. ``implicit_tls``: speak
    TLS from the first byte (port-465 style). ``users``: accepted AUTH logins (name -> password);
    anything else gets ``535``. ``fail(command, reply)`` scripts the next answer to ``MAIL``,
    ``RCPT`` or ``DATA``, e.g. ``fail("RCPT", "451 4.3.0 try again later")``.
    """

    def __init__(
        self,
        *,
        starttls: ssl.SSLContext | None = None,
        implicit_tls: ssl.SSLContext | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        self.messages: list[ReceivedMail] = []
        self.logins: list[str] = []
        self._users = users
        self._scripted: defaultdict[str, deque[str]] = defaultdict(deque)
        self._tls = (starttls, implicit_tls)
        self._controller: _Controller | None = None

    def _handler_kwargs(
        self, starttls: ssl.SSLContext | None, implicit_tls: ssl.SSLContext | None
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"server_hostname": "localhost", "handler": _Handler(self)}
        if starttls is not None:
            kwargs.update(tls_context=starttls, require_starttls=True)
        if self._users is not None:
            kwargs["authenticator"] = self._authenticate
            # Over STARTTLS, AUTH is offered only once TLS is up, as real servers do.
            kwargs["auth_require_tls"] = starttls is not None and implicit_tls is None
        return kwargs

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if self._controller is None:
            raise RuntimeError(
                "FakeSMTP is not running: use it as `async with FakeSMTP() as server`"
            )
        return int(self._controller.port)

    def fail(self, command: str, reply: str, times: int = 1) -> None:
        """Answer the next ``times`` ``command`` (MAIL, RCPT or DATA) with ``reply``."""
        self._scripted[command.upper()].extend([reply] * times)

    def scripted_reply(self, command: str) -> str | None:
        queue = self._scripted[command]
        return queue.popleft() if queue else None

    async def start(self) -> None:
        starttls, implicit_tls = self._tls
        self._controller = _Controller(self._handler_kwargs(starttls, implicit_tls), implicit_tls)
        await asyncio.to_thread(self._controller.start)

    async def close(self) -> None:
        if self._controller is not None:
            await asyncio.to_thread(self._controller.stop)
            self._controller = None

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        users = self._users or {}
        if isinstance(data, LoginPassword):
            login, password = data.login.decode(), data.password.decode()
            if login in users and users[login] == password:
                self.logins.append(login)
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


class _Controller(Controller):
    """Binds port 0 and learns the port the system chose before its readiness probe."""

    def __init__(self, kwargs: dict[str, Any], implicit_tls: ssl.SSLContext | None) -> None:
        super().__init__(hostname=HOST, port=0, ssl_context=implicit_tls, **kwargs)

    def _trigger_server(self) -> None:
        server = cast(asyncio.Server, self.server)
        self.port = server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class _Handler:
    """aiosmtpd hooks: scripted refusals first, otherwise accept and record."""

    def __init__(self, fake: FakeSMTP) -> None:
        self._fake = fake

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if reply := self._fake.scripted_reply("MAIL"):
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if reply := self._fake.scripted_reply("RCPT"):
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if reply := self._fake.scripted_reply("DATA"):
            return reply
        data = envelope.original_content or envelope.content or b""
        raw = data if isinstance(data, bytes) else data.encode("utf-8")
        mail = ReceivedMail(str(envelope.mail_from), tuple(envelope.rcpt_tos), raw)
        self._fake.messages.append(mail)
        return "250 Message accepted"


@dataclass(frozen=True)
class TestTLS:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost."""

    __test__ = False  # not a pytest test class, despite the name

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_test_tls(directory: Path) -> TestTLS:
    """Write a CA certificate, and a server certificate and key it signed, into ``directory``."""
    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dataslayer-relay test CA")])
    ca_cert = (
        _certificate_builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
    server_cert = (
        _certificate_builder(server_name, ca_name, server_key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    tls = TestTLS(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    tls.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    tls.cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    tls.key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return tls


def _certificate_builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
