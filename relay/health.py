"""Readiness: may a load balancer send this relay traffic now?

Ready means the storage takes writes, the delivery worker is running, a config is loaded and
the relay is not shutting down. ``/healthz`` (alive) stays trivial on purpose; this one checks.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from relay.errors import StorageError
from relay.outbox import Outbox

PROBE_TIMEOUT = 5.0  # seconds; a storage that cannot take the write lock by then is not ready


@dataclass(frozen=True)
class Subject:
    """What readiness looks at; ``worker_task`` None when tests drive the worker themselves."""

    outbox: Outbox | None
    worker_task: asyncio.Task[None] | None
    worker_expected: bool
    config_loaded: bool
    closing: bool


async def failed_checks(subject: Subject) -> dict[str, str]:
    """Each failed check with why; empty when ready."""
    failed: dict[str, str] = {}
    if subject.closing:
        failed["shutdown"] = "shutting down"
    if not subject.config_loaded:
        failed["config"] = "not loaded"
    storage = await _storage(subject.outbox)
    if storage:
        failed["storage"] = storage
    if subject.worker_expected and (subject.worker_task is None or subject.worker_task.done()):
        failed["worker"] = "not running"
    return failed


async def _storage(outbox: Outbox | None) -> str | None:
    if outbox is None:
        return "not open"
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):  # not wait_for: it can lose a cancellation
            await outbox.check_writable()
    except StorageError as exc:
        return str(exc)
    except TimeoutError:
        return f"no write lock within {PROBE_TIMEOUT:.0f} s"
    return None
