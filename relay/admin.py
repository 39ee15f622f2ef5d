"""``relay outbox``: list, show, retry and purge stored deliveries, also while the server runs.

Works on the SQLite file directly (WAL lets it read and write beside a running relay; writes wait
for the server's rather than failing with "database is locked"). A running worker picks requeued
deliveries up within a second.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relay.errors import RelayError
from relay.events import mask_email
from relay.outbox import connect, purge

STATUSES = ("pending", "retrying", "delivered", "dead")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class AdminError(RelayError):
    """A request the outbox command cannot carry out (unknown id, no database, ...)."""


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``15m``, ``1h``, ``7d``, ``2w`` -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f'"{text}" is not a duration like 30s, 15m, 1h, 7d or 2w')
    return float(match.group(1)) * _UNITS[match.group(2)]


@contextmanager
def open_db(path: Path) -> Iterator[sqlite3.Connection]:
    if not path.exists():
        raise AdminError(f"no database at {path} (the relay creates it when it first starts)")
    conn = connect(path)
    try:
        yield conn
    finally:
        conn.close()


# -- list --------------------------------------------------------------------------------------

_LIST_SQL = """
SELECT d.id, d.event_id, d.sink, d.status, d.attempts, e.received_at, d.next_attempt_at,
       d.updated_at, d.last_reason, d.last_status, d.last_error, e.type, e.datasource
FROM deliveries d JOIN events e ON e.id = d.event_id
WHERE (:status IS NULL OR d.status = :status) AND (:sink IS NULL OR d.sink = :sink)
  AND e.received_at >= :since
ORDER BY e.received_at DESC, d.id
LIMIT :limit
"""
_LIST_COLUMNS = (
    "delivery", "event", "sink", "status", "attempts", "received_at", "next_attempt_at",
    "updated_at", "last_reason", "last_status", "last_error", "type", "datasource",
)  # fmt: skip


def list_deliveries(
    conn: sqlite3.Connection,
    *,
    status: str | None = None,
    sink: str | None = None,
    since: float = 0.0,
    limit: int = 50,
) -> list[dict[str, Any]]:
    params = {"status": status, "sink": sink, "since": since, "limit": limit}
    return [dict(zip(_LIST_COLUMNS, row, strict=True)) for row in conn.execute(_LIST_SQL, params)]


def format_list(rows: list[dict[str, Any]], now: float) -> str:
    if not rows:
        return "no deliveries match"
    header = f"{'ID':>6}  {'EVENT':<12}  {'SINK':<16}  {'STATUS':<9}  {'TRIES':>5}  "
    header += f"{'RECEIVED (UTC)':<16}  {'NEXT':<9}  LAST ERROR"
    lines = [header]
    for r in rows:
        lines.append(
            f"{r['delivery']:>6}  {r['event'][:12]:<12}  {r['sink'][:16]:<16}  "
            f"{r['status']:<9}  {r['attempts']:>5}  {_utc(r['received_at']):<16}  "
            f"{_next(r, now):<9}  {_short(r['last_error'])}"
        )
    return "\n".join(lines)


def _utc(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _next(row: dict[str, Any], now: float) -> str:
    if row["status"] not in ("pending", "retrying"):
        return "-"
    wait = row["next_attempt_at"] - now
    return "now" if wait <= 0 else f"in {_span(wait)}"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _short(text: str | None, width: int = 70) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# -- show --------------------------------------------------------------------------------------


def resolve_event(conn: sqlite3.Connection, ref: str) -> str:
    """The full event id for a delivery id, an event id or a unique prefix of 8+ characters."""
    if is_delivery_id(ref):
        row = conn.execute("SELECT event_id FROM deliveries WHERE id = ?", (int(ref),)).fetchone()
        if row is None:
            raise AdminError(f"no delivery {ref}")
        return str(row[0])
    if len(ref) < 8 or not re.fullmatch(r"[0-9a-f]+", ref):
        raise AdminError(f'"{ref}" is not an event id (its first 8 or more characters)')
    rows = conn.execute(
        "SELECT id FROM events WHERE id >= ? AND id < ? LIMIT 2", (ref, ref + "g")
    ).fetchall()
    if not rows:
        raise AdminError(f"no event {ref}")
    if len(rows) > 1:
        raise AdminError(f"{ref} matches several events; give more characters")
    return str(rows[0][0])


def is_delivery_id(ref: str) -> bool:
    """Delivery ids are the short numbers in ``outbox list``; event ids are long hex strings."""
    return ref.isdigit() and len(ref) < 8


def show_event(conn: sqlite3.Connection, ref: str, show_personal_data: bool) -> dict[str, Any]:
    event_id = resolve_event(conn, ref)
    payload, received_at = conn.execute(
        "SELECT payload, received_at FROM events WHERE id = ?", (event_id,)
    ).fetchone()
    data = json.loads(payload)
    if not show_personal_data and isinstance(data.get("email"), str):
        data["email"] = mask_email(data["email"])
    deliveries = []
    for row in conn.execute(
        "SELECT id, sink, status, attempts, next_attempt_at FROM deliveries WHERE event_id = ?"
        " ORDER BY id",
        (event_id,),
    ).fetchall():
        deliveries.append(_delivery_detail(conn, row))
    return {"id": event_id, "received_at": received_at, "event": data, "deliveries": deliveries}


def _delivery_detail(conn: sqlite3.Connection, row: tuple[Any, ...]) -> dict[str, Any]:
    delivery_id, sink, status, attempts, next_at = row
    history = conn.execute(
        "SELECT at, outcome, reason, status_code, duration, error FROM attempts"
        " WHERE delivery_id = ? ORDER BY id",
        (delivery_id,),
    ).fetchall()
    keys = ("at", "outcome", "reason", "status_code", "duration", "error")
    return {
        "id": delivery_id, "sink": sink, "status": status, "attempts": attempts,
        "next_attempt_at": next_at if status in ("pending", "retrying") else None,
        "history": [dict(zip(keys, h, strict=True)) for h in history],
    }  # fmt: skip


def format_event(detail: dict[str, Any], now: float) -> str:
    lines = [f"event {detail['id']}  received {_utc(detail['received_at'])} UTC"]
    lines += [f"  {key}: {json.dumps(value, ensure_ascii=False)}"
              for key, value in detail["event"].items()]  # fmt: skip
    for d in detail["deliveries"]:
        row = {"status": d["status"], "next_attempt_at": d["next_attempt_at"]}
        lines.append(
            f"delivery {d['id']} -> {d['sink']}: {d['status']}, {d['attempts']} attempt(s),"
            f" next {_next(row, now)}"
        )
        for h in d["history"]:
            code = f" {h['status_code']}" if h["status_code"] is not None else ""
            reason = f" {h['reason']}{code}" if h["reason"] else code
            took = f"{h['duration'] * 1000:.0f} ms" if h["duration"] is not None else "-"
            error = f": {_short(h['error'], 100)}" if h["error"] else ""
            lines.append(f"  {_utc(h['at'])}  {h['outcome']:<9}{reason} ({took}){error}")
    return "\n".join(lines)


# -- retry and purge ---------------------------------------------------------------------------


def retry(
    conn: sqlite3.Connection,
    refs: list[str],
    *,
    dead: bool = False,
    sink: str | None = None,
    now: float,
) -> int:
    """Requeue deliveries (due at once, attempts counted afresh); how many were requeued.

    ``next_attempt_at`` becomes 0 rather than ``now`` so they are due whatever the server's
    clock says, and go before deliveries already waiting.
    """
    where, params = _retry_selection(conn, refs, dead, sink)
    conn.execute("BEGIN IMMEDIATE")
    try:
        cursor = conn.execute(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = 0,"  # noqa: S608
            f" updated_at = ? WHERE status != 'delivered' AND ({where})",
            (now, *params),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return cursor.rowcount


def _retry_selection(
    conn: sqlite3.Connection, refs: list[str], dead: bool, sink: str | None
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if dead:
        clauses.append("status = 'dead'")
    for ref in refs:
        if is_delivery_id(ref):
            clauses.append("id = ?")
            params.append(int(ref))
        else:
            clauses.append("event_id = ?")
            params.append(resolve_event(conn, ref))
    where = " OR ".join(clauses) or "0"
    if sink is not None:
        where = f"({where}) AND sink = ?"
        params.append(sink)
    return where, params


def purge_older(conn: sqlite3.Connection, older_than: float, now: float) -> int:
    """Delete events older than ``older_than`` seconds that have nothing pending."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        removed = purge(conn, now - older_than, only_delivered=False)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return removed


def now() -> float:
    return time.time()
