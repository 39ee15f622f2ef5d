"""The Event: a decrypted Dataslayer notification, its stable id, and masking of personal data."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from relay.errors import EventError

SAMPLE_EVENT: dict[str, Any] = {
    "type": "shared_connection",
    "datasource": "google_ads",
    "email": "ana.lopez@example.com",
    "created": 1733240000,
}


@dataclass(frozen=True)
class Event:
    """One decrypted event. ``data`` holds every field as sent."""

    id: str
    data: dict[str, Any]
    received_at: float

    @property
    def type(self) -> str:
        return str(self.data["type"])

    @property
    def datasource(self) -> str | None:
        return _text_or_none(self.data.get("datasource"))

    @property
    def email(self) -> str | None:
        return _text_or_none(self.data.get("email"))

    @property
    def created(self) -> Any:
        return self.data.get("created")

    def canonical_json(self) -> str:
        return canonical_json(self.data)

    def describe(self, show_personal_data: bool = False) -> str:
        """A log-friendly one-liner; the email is masked unless asked."""
        email = self.email if show_personal_data else mask_email(self.email)
        fields = f"type={self.type} datasource={self.datasource} email={email}"
        return f"event {self.id} {printable(fields)}"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str, keep_newlines: bool = False) -> str:
    """Control characters as ``\\xNN`` escapes: event data cannot forge log lines or drive a
    terminal (ANSI escapes). Newlines and tabs survive only when ``keep_newlines``."""
    text = _CONTROL.sub(lambda m: ascii(m.group(0))[1:-1], text)
    if not keep_newlines:
        text = text.replace("\n", "\\n").replace("\t", "\\t")
    return text


def _text_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def canonical_json(data: Any) -> str:
    """Key-sorted, compact, UTF-8 JSON: the same data always gives the same text."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_id(data: dict[str, Any]) -> str:
    """Stable id of an event: a hash of its canonical JSON, whatever token carried it."""
    return hashlib.sha256(canonical_json(data).encode("utf-8")).hexdigest()[:32]


def reject_constant(name: str) -> Any:
    """json.loads hook: NaN and Infinity are not JSON, and would not survive a round trip."""
    raise ValueError(f"{name} is not valid JSON")


def parse_event(plaintext: bytes, received_at: float) -> Event:
    """Parse decrypted plaintext into an Event, or raise EventError saying why it is not one."""
    try:
        data = json.loads(plaintext.decode("utf-8"), parse_constant=reject_constant)
    except UnicodeDecodeError as exc:
        raise EventError("decrypted content is not UTF-8 text") from exc
    except ValueError as exc:
        raise EventError("decrypted content is not JSON") from exc
    except RecursionError as exc:
        raise EventError("decrypted JSON is nested too deeply") from exc
    return event_from_dict(data, received_at)


def event_from_dict(data: Any, received_at: float) -> Event:
    if not isinstance(data, dict):
        raise EventError(f"the event is {_json_kind(data)}, not a JSON object")
    if not isinstance(data.get("type"), str) or not data["type"]:
        raise EventError('the event has no string "type"')
    try:
        text = canonical_json(data).encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate such as "\ud800"
        raise EventError("decrypted JSON holds invalid Unicode (a lone surrogate)") from exc
    except (RecursionError, ValueError) as exc:
        raise EventError("decrypted JSON is nested too deeply") from exc
    return Event(id=hashlib.sha256(text).hexdigest()[:32], data=data, received_at=received_at)


def _json_kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


# The look-behind lets a match start only where a word starts, so the scan is linear: without it
# a long run of address characters with no "@" costs quadratic time (seen: 20 kB -> 6 s).
# "=" ends a word too, so "email=ana@x.com" masks as "email=a***@x.com".
_EMAIL = re.compile(r"(?<![^\s@<>\"'=])[^\s@<>\"'=]+@[^\s@<>\"']+")


def mask_email(email: str | None) -> str:
    """``ana@example.com`` -> ``a***@example.com``; keeps the domain for support."""
    if not email:
        return str(email)
    local, sep, domain = email.partition("@")
    if not sep:
        return "***"
    return f"{local[:1]}***@{domain}"


def mask_emails_in(text: str) -> str:
    """Mask every email address inside free text."""
    return _EMAIL.sub(lambda m: mask_email(m.group(0)), text)
