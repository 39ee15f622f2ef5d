"""Logging set-up; a last line of defence masks email addresses in every log line."""

from __future__ import annotations

import logging
import sys

from relay.events import mask_emails_in


class MaskPersonalData(logging.Filter):
    """Masks email addresses in the final message (``ana@x.com`` -> ``a***@x.com``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_emails_in(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(MaskPersonalData())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
