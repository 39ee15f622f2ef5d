"""One classification of delivery failures, shared by every sink.

Maps an HTTP status or an exception to "success", a :class:`RetryableError` or a
:class:`PermanentError`, with a short reason that feeds logs and metrics.
"""

from __future__ import annotations

import asyncio
import email.utils
import ssl
import time

import aiohttp

from relay.errors import DeliveryError, PermanentError, RetryableError

MAX_RETRY_AFTER = (
    24 * 3600.0
)  # a receiver asking for more than a day is treated as asking for a day


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def classify_status(
    status: int, detail: str = "", retry_after: float | None = None
) -> DeliveryError | None:
    """None for a 2xx answer, otherwise the error that describes it."""
    if 200 <= status < 300:
        return None
    message = f"HTTP {status}" + (f": {detail}" if detail else "")
    if status == 429:
        return RetryableError(
            message, reason="rate_limited", status=status, retry_after=retry_after
        )
    if status == 408:
        return RetryableError(message, reason="timeout", status=status, retry_after=retry_after)
    if status >= 500:
        return RetryableError(message, reason="server", status=status, retry_after=retry_after)
    if 300 <= status < 400:
        return PermanentError(message, reason="redirect", status=status)
    if status in (401, 403):
        return PermanentError(message, reason="auth", status=status)
    if status == 410:
        return PermanentError(message, reason="gone", status=status)
    if 400 <= status < 500:
        return PermanentError(message, reason="client", status=status)
    return PermanentError(message, reason="invalid", status=status)


def classify_exception(exc: BaseException) -> DeliveryError:
    """The error that describes an exception raised while talking to a receiver."""
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return RetryableError("timed out", reason="timeout")
    if isinstance(exc, ssl.SSLCertVerificationError | aiohttp.ClientConnectorCertificateError):
        return PermanentError(f"TLS certificate rejected: {exc}", reason="tls")
    if isinstance(exc, aiohttp.ClientError | ConnectionError | OSError):
        return RetryableError(f"connection failed: {_describe(exc)}", reason="connection")
    return PermanentError(f"unexpected error: {_describe(exc)}", reason="internal")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


SMTP_AUTH_CODES = frozenset({530, 534, 535, 538})  # auth required / too weak / refused / needs TLS


def classify_smtp_reply(code: int, text: str = "", *, auth: bool = False) -> DeliveryError:
    """The error that describes an SMTP failure reply (RFC 5321 section 4.2.1).

    4yz replies are transient and retry; 5yz replies are permanent. ``auth`` marks a reply to
    AUTH, so its refusals are reported as ``auth``. A code outside 400-599 (a confused or
    non-SMTP peer) is retried: a later attempt may meet a working server.
    """
    message = f"SMTP {code}" + (f" {text}" if text else "")
    if 400 <= code < 500:
        reason = "auth" if auth and code == 454 else "server"
        return RetryableError(message, reason=reason, status=code)
    if 500 <= code < 600:
        reason = "auth" if auth or code in SMTP_AUTH_CODES else "client"
        return PermanentError(message, reason=reason, status=code)
    return RetryableError(f"unexpected reply: {message}", reason="server", status=code)
