"""Fernet keys from Dataslayer secrets, and verification of inbound tokens.

Dataslayer's Fernet key is the standard base64 of the 32-character secret shown on its Developers
page, so the key bytes are the secret's bytes. A 44-character Fernet key is accepted as is.
"""

from __future__ import annotations

import base64
import binascii
import string
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken

from relay.errors import TokenError
from relay.secret import pasting_problem

DEFAULT_MAX_CLOCK_SKEW = (
    60  # seconds a token may come from the future (the sender's clock may run fast)
)

_B64_ALPHABET = frozenset(string.ascii_letters + string.digits + "+/-_=")


def fernet_key(secret: str) -> bytes:
    """The urlsafe-base64 Fernet key for a Dataslayer secret or a Fernet key.

    Raises ValueError saying what is wrong (white space, quotes, length, alphabet) without
    repeating the secret.
    """
    problem = pasting_problem(secret)
    if problem is not None:
        raise ValueError(problem)
    raw = secret.encode("utf-8")
    if len(raw) == 32:
        return base64.urlsafe_b64encode(raw)
    if len(secret) == 44:
        return _fernet_key_from_b64(secret)
    raise ValueError(
        f"is {len(raw)} byte{'s' * (len(raw) != 1)} long; expected the 32-character secret from "
        "Dataslayer's Developers page, or a 44-character base64 Fernet key"
    )


def _fernet_key_from_b64(secret: str) -> bytes:
    if not set(secret) <= _B64_ALPHABET:
        raise ValueError(
            "is 44 characters but not base64 "
            "(only A-Z a-z 0-9 + / - _ = are allowed in a Fernet key)"
        )
    try:
        raw = base64.urlsafe_b64decode(secret.replace("+", "-").replace("/", "_"))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("is 44 characters but not valid base64") from exc
    if len(raw) != 32:
        raise ValueError(f"decodes to {len(raw)} bytes; a Fernet key decodes to 32")
    return base64.urlsafe_b64encode(raw)


def encrypt(secret: str, plaintext: bytes, now: float | None = None) -> str:
    """A token exactly as Dataslayer makes it (for send-test and tests)."""
    f = Fernet(fernet_key(secret))
    token = f.encrypt(plaintext) if now is None else f.encrypt_at_time(plaintext, int(now))
    return token.decode("ascii")


def describe_age(seconds: float) -> str:
    """'2 days', '3 hours', '45 seconds': for log lines about refused tokens."""
    seconds = abs(seconds)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    n = int(seconds)
    return f"{n} second{'s' if n != 1 else ''}"


def normalise_token(token: str) -> bytes:
    """White space anywhere is dropped and missing base64 padding restored.

    The signature covers the decoded bytes, so this accepts no token that was not made with a
    configured secret; it only forgives transports that wrap lines or strip ``=``.
    """
    compact = "".join(token.split()).rstrip("=")
    padded = compact + "=" * (-len(compact) % 4)
    return padded.encode("ascii", errors="replace")


@dataclass(frozen=True)
class Verified:
    plaintext: bytes
    timestamp: int
    key_index: int  # 0 = the current secret, 1.. = previous_secrets (rotation)


class TokenVerifier:
    """Verifies tokens against the current and previous secrets, and checks their age."""

    def __init__(
        self, secrets: list[str], max_age: int, max_skew: int = DEFAULT_MAX_CLOCK_SKEW
    ) -> None:
        self._fernets = [Fernet(fernet_key(s)) for s in secrets]
        self._max_age = max_age
        self._max_skew = max_skew

    def verify(self, token: str, now: float) -> Verified:
        """Decrypt ``token`` or raise TokenError saying why (never echoing the token)."""
        data = normalise_token(token)
        for index, fernet in enumerate(self._fernets):
            try:
                # One HMAC check per key: decrypt verifies before it decrypts, and the
                # timestamp it covered is read from the verified bytes afterwards.
                plaintext = fernet.decrypt(data)
            except InvalidToken:
                continue
            timestamp = int.from_bytes(base64.urlsafe_b64decode(data)[1:9], "big")
            self._check_age(timestamp, now)
            return Verified(plaintext, timestamp, index)
        raise TokenError(self._why_invalid(data))

    def _check_age(self, timestamp: int, now: float) -> None:
        age = now - timestamp
        if age < -self._max_skew:
            raise TokenError(f"token is from the future ({describe_age(age)} ahead of this clock)")
        if self._max_age and age > self._max_age:
            raise TokenError(
                f"token is {describe_age(age)} old; max_token_age is {describe_age(self._max_age)}"
            )

    @staticmethod
    def _why_invalid(data: bytes) -> str:
        try:
            raw = base64.urlsafe_b64decode(data)
        except (binascii.Error, ValueError):
            return "token is not valid base64"
        if not raw or raw[0] != 0x80 or len(raw) < 57:
            return "not a Fernet token"
        return "token was not made with any configured secret (or was altered)"
