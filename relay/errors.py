"""The relay's one error hierarchy.

::

    RelayError
    ├── ConfigError            the config file is wrong; carries every problem found
    ├── TokenError             an inbound token fails verification or is too old (401)
    ├── EventError             decrypted, but not an event object (422)
    ├── StorageError           the outbox could not store or read (503)
    ├── TemplateError          a template does not compile or render; names the template and line
    └── DeliveryError          a sink refused or could not be reached
        ├── RetryableError     a later attempt may succeed (rate limit, timeout, 5xx, ...)
        └── PermanentError     no retry can help (bad auth, invalid payload, gone, ...)

Messages never contain secrets or decrypted plaintext.
"""

from __future__ import annotations

from dataclasses import dataclass


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config, named by its TOML path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(RelayError):
    """The config is invalid; ``problems`` lists every problem, each with its TOML path."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class TokenError(RelayError):
    """The token was not made with any configured secret, is malformed, or is too old or new."""


class EventError(RelayError):
    """The decrypted plaintext is not a JSON object with a string ``type``."""


class StorageError(RelayError):
    """The outbox could not be read or written."""


class TemplateError(RelayError):
    """A template failed to compile or render.

    ``template`` is the template's name (e.g. ``shared_connection/slack.text.j2``) and ``line``
    the line in it, when known.
    """

    def __init__(self, message: str, template: str | None = None, line: int | None = None) -> None:
        self.template = template
        self.line = line
        self.reason = message
        where = template or "template"
        if line is not None:
            where = f"{where}, line {line}"
        super().__init__(f"{where}: {message}")


class DeliveryError(RelayError):
    """A sink did not accept a message.

    ``reason`` is a short machine-friendly classification (``rate_limited``, ``timeout``,
    ``server``, ``client``, ``auth``, ``connection``, ``gone``, ``redirect``, ``invalid``,
    ``template``) used in logs and metrics; ``retry_after`` is the delay the receiver asked
    for, in seconds, when it asked; ``status`` is the HTTP or SMTP code when there was one.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        super().__init__(message)


class RetryableError(DeliveryError):
    """A later attempt may succeed."""

    retryable = True


class PermanentError(DeliveryError):
    """No retry can help; the delivery ends as dead."""

    retryable = False
