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
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relay.admin_settings import OutboxSettings
from relay.config_errors import suggest
from relay.errors import RelayError
from relay.events import mask_email, mask_emails_in
from relay.outbox import connect
from relay.outbox_purge import TOMBSTONE, in_transaction, purge, purge_sink

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
    try:
        conn = connect(path)
    except sqlite3.Error as exc:  # not a database, a folder, no permission...
        raise AdminError(f"cannot open the database {path}: {exc}") from None
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
    rows = [dict(zip(_LIST_COLUMNS, row, strict=True)) for row in conn.execute(_LIST_SQL, params)]
    for row in rows:  # a receiver's error text may quote the client's address
        if row["last_error"]:
            row["last_error"] = mask_emails_in(row["last_error"])
    return rows


def format_list(rows: list[dict[str, Any]], now: float, note: str = "") -> str:
    if not rows:
        return "no deliveries match" + note
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
    deliveries = []
    for row in conn.execute(
        "SELECT id, sink, status, attempts, next_attempt_at, last_error FROM deliveries"
        " WHERE event_id = ? ORDER BY id",
        (event_id,),
    ).fetchall():
        deliveries.append(_delivery_detail(conn, row))
    detail = {
        "id": event_id, "received_at": received_at, "purged": payload == TOMBSTONE,
        "event": json.loads(payload), "deliveries": deliveries,
    }  # fmt: skip
    return detail if show_personal_data else _masked(detail)


def _masked(detail: dict[str, Any]) -> dict[str, Any]:
    """Every email address masked: the event's ``email`` field, any address in any of its
    strings (however nested), and in the errors receivers sent back."""
    event = {key: _mask_all(value) for key, value in detail["event"].items()}
    if isinstance(detail["event"].get("email"), str):
        event["email"] = mask_email(detail["event"]["email"])
    deliveries = [
        {**d, "last_error": _mask_all(d["last_error"]),
         "history": [{**h, "error": _mask_all(h["error"])} for h in d["history"]]}
        for d in detail["deliveries"]
    ]  # fmt: skip
    return {**detail, "event": event, "deliveries": deliveries}


def _mask_all(value: Any) -> Any:
    if isinstance(value, str):
        return mask_emails_in(value)
    if isinstance(value, dict):
        return {key: _mask_all(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_mask_all(item) for item in value]
    return value


def _delivery_detail(conn: sqlite3.Connection, row: tuple[Any, ...]) -> dict[str, Any]:
    delivery_id, sink, status, attempts, next_at, last_error = row
    history = conn.execute(
        "SELECT at, outcome, reason, status_code, duration, error FROM attempts"
        " WHERE delivery_id = ? ORDER BY id",
        (delivery_id,),
    ).fetchall()
    keys = ("at", "outcome", "reason", "status_code", "duration", "error")
    return {
        "id": delivery_id, "sink": sink, "status": status, "attempts": attempts,
        "next_attempt_at": next_at if status in ("pending", "retrying") else None,
        "last_error": last_error, "history": [dict(zip(keys, h, strict=True)) for h in history],
    }  # fmt: skip


def format_event(detail: dict[str, Any], now: float) -> str:
    lines = [f"event {detail['id']}  received {_utc(detail['received_at'])} UTC"]
    if detail["purged"]:
        lines.append(
            "  purged: its data and deliveries were deleted; the id is kept until the dedup"
            " window ends, so a replay of it is still refused"
        )
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


@dataclass(frozen=True)
class Requeued:
    """What a retry did: deliveries requeued, per sink, out of how many the selection matched."""

    by_sink: dict[str, int]
    matched: int

    @property
    def count(self) -> int:
        return sum(self.by_sink.values())


def retry(
    conn: sqlite3.Connection,
    refs: list[str],
    *,
    dead: bool = False,
    sink: str | None = None,
    now: float,
) -> Requeued:
    """Requeue deliveries (due at once, attempts counted afresh); delivered ones stay as they are.

    ``next_attempt_at`` becomes 0 rather than ``now`` so they are due whatever the server's
    clock says, and go before deliveries already waiting.
    """
    where, params = _retry_selection(conn, refs, dead, sink)
    return in_transaction(_requeue, conn, where, params, now)


def _requeue(conn: sqlite3.Connection, where: str, params: list[Any], now: float) -> Requeued:
    (matched,) = conn.execute(
        f"SELECT COUNT(*) FROM deliveries WHERE {where}",  # noqa: S608
        params,
    ).fetchone()
    sinks = conn.execute(
        "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = 0,"  # noqa: S608
        f" updated_at = ? WHERE status != 'delivered' AND ({where}) RETURNING sink",
        (now, *params),
    ).fetchall()
    return Requeued(dict(Counter(s for (s,) in sinks)), matched)


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
            params.append(_existing_delivery(conn, ref))
        else:
            clauses.append("event_id = ?")
            params.append(resolve_event(conn, ref))
    where = " OR ".join(clauses) or "0"
    if sink is not None:
        where = f"({where}) AND sink = ?"
        params.append(sink)
    return where, params


def _existing_delivery(conn: sqlite3.Connection, ref: str) -> int:
    if conn.execute("SELECT 1 FROM deliveries WHERE id = ?", (int(ref),)).fetchone() is None:
        raise AdminError(f"no delivery {ref}")
    return int(ref)


def describe_retry(result: Requeued, note: str = "") -> str:
    """One line for the operator: what was requeued, or why nothing was."""
    delivered = result.matched - result.count
    if result.matched == 0:
        return "no deliveries match" + note
    if result.count == 0:
        which = "the delivery is" if delivered == 1 else f"all {delivered} deliveries are"
        return f"nothing to requeue: {which} already delivered"
    done = f" ({delivered} already delivered)" if delivered else ""
    return f"requeued {deliveries(result.count)}{done}"


def deliveries(n: int) -> str:
    """``1 delivery``, ``2 deliveries``."""
    return f"{n} deliver{'y' if n == 1 else 'ies'}"


def unconfigured(result: Requeued, settings: OutboxSettings) -> list[str]:
    """A warning per requeued sink that the config does not have: nothing will send those."""
    warnings = []
    for sink, n in sorted(result.by_sink.items()):
        if not settings.knows(sink):
            which = "the delivery waits" if n == 1 else f"its {n} deliveries wait"
            warnings.append(f"warning: sink {sink} is not configured; {which} until it is")
    return warnings


def unknown_sink_note(sink: str | None, settings: OutboxSettings) -> str:
    """Said when nothing matched: a sink name the config does not know is likely a typo."""
    if sink is None or settings.knows(sink):
        return ""
    return f" (sink {sink} is not in the config)"


def require_sink(conn: sqlite3.Connection, sink: str | None, settings: OutboxSettings) -> None:
    """Refuse a sink that neither the config nor the database knows: most likely a typo, and
    retrying or purging it would quietly do nothing. A sink removed from the config still has
    deliveries stored, so it passes."""
    if sink is None or settings.knows(sink) or _has_deliveries(conn, sink):
        return
    raise AdminError(f'no sink named "{sink}" in the config or the database{_hint(sink, settings)}')


def _has_deliveries(conn: sqlite3.Connection, sink: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM deliveries WHERE sink = ? LIMIT 1", (sink,)).fetchone()
        is not None
    )


def _hint(sink: str, settings: OutboxSettings) -> str:
    """A did-you-mean when a configured name is close, else the names to choose from."""
    names = sorted(settings.sinks or ())
    close = suggest(sink, names)
    if close or not names:
        return close
    return f"; the config's sinks: {', '.join(names)}"


def purge_older(
    conn: sqlite3.Connection, older_than: float, now: float, dedup_window: float
) -> int:
    """Purge events older than ``older_than`` seconds that have nothing pending.

    Those still inside the dedup window stay as tombstones (see ``relay.outbox_purge.purge``).
    """
    return in_transaction(purge, conn, now - older_than, False, now - dedup_window)


def purge_sink_older(
    conn: sqlite3.Connection, sink: str, older_than: float, now: float, dedup_window: float
) -> tuple[int, int]:
    """Delete ``sink``'s deliveries, pending ones too, of events older than ``older_than``
    seconds, then purge the events left with nothing; how many deliveries and events went."""
    return in_transaction(purge_sink, conn, sink, now - older_than, now - dedup_window)


def now() -> float:
    return time.time()
