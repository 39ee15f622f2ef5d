"""Purging the outbox: old events with nothing left to send, and a removed sink's deliveries.

Events still inside the dedup window become tombstones (id, type, arrival time; no personal
data, no deliveries) so a replayed token is still refused; older ones are deleted outright.
Used by the retention sweep (relay.worker) and ``relay outbox purge`` (relay.admin).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


TOMBSTONE = "{}"  # the payload of a purged event; no real event is empty (each has a type)


def purge(
    conn: sqlite3.Connection, before: float, only_delivered: bool, remember_since: float
) -> int:
    """Purge events older than ``before`` with nothing pending (and, if asked, nothing dead).

    Events received since ``remember_since`` (still inside the dedup window) become tombstones:
    their deliveries, attempts and personal data go, the id stays so a replay is still refused.
    Older ones are deleted outright. Pending work is never purged. Returns how many were purged.
    """
    keep = "('pending', 'retrying', 'dead')" if only_delivered else "('pending', 'retrying')"
    where = (
        "received_at < ? AND NOT EXISTS (SELECT 1 FROM deliveries d"  # noqa: S608
        f" WHERE d.event_id = events.id AND d.status IN {keep})"
    )
    return _purge_events(conn, where, (before,), remember_since)


def purge_sink(
    conn: sqlite3.Connection, sink: str, before: float, remember_since: float
) -> tuple[int, int]:
    """Delete every delivery to ``sink`` (pending ones too) of events older than ``before``.

    Events left with no delivery at all are purged as by ``purge``. Returns how many deliveries
    and how many events went.
    """
    old = "SELECT id FROM events WHERE received_at < ?"
    (deliveries,) = conn.execute(
        f"SELECT COUNT(*) FROM deliveries WHERE sink = ? AND event_id IN ({old})",  # noqa: S608
        (sink, before),
    ).fetchone()
    only_this_sink = (
        "received_at < ?"
        " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id AND d.sink = ?)"
        " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id AND d.sink != ?)"
    )
    events = _purge_events(conn, only_this_sink, (before, sink, sink), remember_since)
    conn.execute(
        f"DELETE FROM deliveries WHERE sink = ? AND event_id IN ({old})",  # noqa: S608
        (sink, before),
    )
    return deliveries, events


def _purge_events(
    conn: sqlite3.Connection, where: str, params: tuple[Any, ...], remember_since: float
) -> int:
    """Delete the events matching ``where`` that are older than ``remember_since``, tombstone the
    rest; then delete tombstones that have aged out of the window too. Returns how many of the
    matching events were not tombstones yet."""
    deleted = conn.execute(
        f"DELETE FROM events WHERE ({where}) AND payload != ? AND received_at < ?",  # noqa: S608
        (*params, TOMBSTONE, remember_since),
    ).rowcount
    tombstoned = conn.execute(
        f"UPDATE events SET payload = ?, datasource = NULL WHERE ({where}) AND payload != ?",  # noqa: S608
        (TOMBSTONE, *params, TOMBSTONE),
    ).rowcount
    conn.execute(
        "DELETE FROM deliveries WHERE event_id IN (SELECT id FROM events WHERE payload = ?)",
        (TOMBSTONE,),
    )
    conn.execute(
        "DELETE FROM events WHERE payload = ? AND received_at < ?", (TOMBSTONE, remember_since)
    )
    return deleted + tombstoned


def in_transaction(fn: Callable[..., T], conn: sqlite3.Connection, *args: Any) -> T:
    """Run ``fn(conn, *args)`` as one write transaction: all of it happens, or none."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return result
