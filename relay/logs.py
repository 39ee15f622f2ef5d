"""Logging set-up: text or JSON lines; a last line of defence masks emails in every line."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from relay.events import mask_emails_in, printable


class MaskPersonalData(logging.Filter):
    """The last line of defence for every log line.

    Masks email addresses (``ana@x.com`` -> ``a***@x.com``) unless ``mask_emails`` is False
    (``[logging] show_personal_data = true``), and always escapes control characters, so text
    that came from outside (event fields, a receiver's error body) cannot forge log lines.
    """

    def __init__(self, mask_emails: bool = True) -> None:
        super().__init__()
        self._mask_emails = mask_emails

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = printable(mask_emails_in(message) if self._mask_emails else message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: str = "INFO", fmt: str = "text", show_personal_data: bool = False) -> None:
    """Log to standard error at ``level``, as readable text or (``fmt="json"``) JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(MaskPersonalData(mask_emails=not show_personal_data))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    server_log.filters[:] = [QuietMalformedRequests()]


class QuietMalformedRequests(logging.Filter):
    """A request that is not valid HTTP (huge or broken headers) is the client's fault: one
    warning line, not an ERROR with a traceback, and none of the request's bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "refused a malformed HTTP request (%s)", (type(exc).__name__,)
            record.exc_info, record.exc_text = None, None
        return True


# Keys that log calls pass in ``extra`` and that JSON lines carry when present.
EXTRA_KEYS = ("event_id", "sink")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and event_id when about an event."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in EXTRA_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)
