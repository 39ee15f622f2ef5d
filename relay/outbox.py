"""The durable outbox: events and their deliveries in SQLite (WAL, synchronous=FULL).

Accepting an event commits it and one delivery per routed sink before the caller answers 200.
Accepts that arrive together share one transaction and one fsync (group commit). All SQLite work
runs on one dedicated thread, so the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from relay.errors import StorageError
from relay.events import Event
from relay.outbox_purge import in_transaction, purge

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    datasource TEXT,
    payload TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES events(id) ON DELETE CASCADE,
    sink TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'retrying', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_error TEXT,
    last_reason TEXT,
    last_status INTEGER
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (sink, next_attempt_at)
    WHERE status IN ('pending', 'retrying');
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries (event_id);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    at REAL NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    status_code INTEGER,
    duration REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts (delivery_id);
"""

ACTIVE = ("pending", "retrying")


@dataclass(frozen=True)
class Due:
    """A delivery whose time has come."""

    id: int
    sink: str
    attempts: int
    event: Event


@dataclass(frozen=True)
class Outcome:
    """What one attempt ended as; written with the delivery's new state."""

    outcome: str  # delivered | retry | dead
    duration: float
    reason: str | None = None
    status_code: int | None = None
    error: str | None = None
    next_attempt_at: float | None = None


@dataclass(frozen=True)
class Stats:
    """What the outbox holds, for metrics: deliveries per status, and the oldest still to send."""

    by_status: dict[str, int]
    oldest_active_created_at: float | None


@dataclass(frozen=True)
class _Pending:
    event: Event
    sinks: Sequence[str]
    dedup_window: float


@dataclass
class _Write:
    """One write waiting for the next group commit, and who waits for its result."""

    run: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]


class Outbox:
    """Async facade over the SQLite file; open with ``await Outbox.open(path)``."""

    def __init__(
        self, conn: sqlite3.Connection, executor: ThreadPoolExecutor, lock: IO[bytes]
    ) -> None:
        self._conn = conn
        self._executor = executor
        self._lock = lock
        self._queue: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path) -> Outbox:
        lock = _lock(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        loop = asyncio.get_running_loop()
        conn: sqlite3.Connection | None = None
        try:
            conn = await loop.run_in_executor(executor, connect, path)
            await loop.run_in_executor(executor, _take_write_lock, conn)  # writable, or say so now
        except (sqlite3.Error, OSError) as exc:
            if conn is not None:
                conn.close()
            executor.shutdown(wait=False)
            lock.close()
            raise StorageError(f"cannot open the database {path}: {exc}") from exc
        return cls(conn, executor, lock)

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        await self._run(self._conn.close)
        self._executor.shutdown(wait=True)
        self._lock.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise StorageError(f"database error: {exc}") from exc

    # -- accepting -----------------------------------------------------------------------------

    async def accept(self, event: Event, sinks: Sequence[str], dedup_window: float) -> bool:
        """Store ``event`` with a delivery per sink; False if it is a duplicate inside the window.

        Returns only after the transaction is committed to disk.
        """
        accepted: bool = await self._write(
            functools.partial(_accept_one, item=_Pending(event, sinks, dedup_window))
        )
        return accepted

    async def _write(self, run: Callable[[sqlite3.Connection], Any]) -> Any:
        """Queue ``run`` for the next transaction; writes that arrive together share one commit
        (one fsync), which is what lets many requests and outcomes per second be durable."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Write(run, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    results = await self._run(_write_batch, self._conn, [w.run for w in batch])
                except StorageError as exc:
                    for write in batch:
                        if not write.future.done():
                            write.future.set_exception(exc)
                    continue
                for write, result in zip(batch, results, strict=True):
                    if not write.future.done():
                        write.future.set_result(result)
        finally:
            self._flusher = None

    # -- delivering ----------------------------------------------------------------------------

    async def due(self, now: float, capacity: dict[str, int], exclude: set[int]) -> list[Due]:
        """Due deliveries, at most ``capacity[sink]`` per sink, skipping ids in ``exclude``."""
        return await self._run(_due, self._conn, now, capacity, frozenset(exclude))

    async def next_due_by_sink(self, sinks: Sequence[str]) -> dict[str, float]:
        """The earliest next attempt of each sink that has pending deliveries."""
        return await self._run(_next_due_by_sink, self._conn, tuple(sinks))

    async def purge(self, before: float, *, only_delivered: bool, remember_since: float) -> int:
        """Purge events received before ``before`` that have nothing left to send.

        Those received since ``remember_since`` stay as tombstones, so dedup still refuses them.
        """
        return await self._run(
            in_transaction, purge, self._conn, before, only_delivered, remember_since
        )

    async def record(self, delivery_id: int, outcome: Outcome, now: float) -> None:
        """Record an attempt's outcome; shares a commit with other writes arriving together."""
        await self._write(functools.partial(_record, delivery_id=delivery_id, o=outcome, now=now))

    async def pending_outside(self, sinks: Sequence[str]) -> dict[str, int]:
        """Pending deliveries per sink for sinks not in ``sinks`` (removed from the config)."""
        active = await self._run(_active_by_sink, self._conn)
        return {sink: n for sink, (n, _) in active.items() if sink not in sinks}

    async def counts(self) -> dict[str, int]:
        return await self._run(_counts, self._conn)

    async def stats(self) -> Stats:
        return await self._run(_stats, self._conn)

    async def check_writable(self) -> None:
        """Raise StorageError unless the database would take a write now (for readiness).

        Takes the write lock and lets it go; runs on the outbox's thread, between batches.
        """
        await self._run(_take_write_lock, self._conn)


def _lock(path: Path) -> IO[bytes]:
    """Hold ``<db>.lock`` while serving: two relays on one database would send everything twice."""
    # Named after the real file, so a symlink or another spelling of the path meets the same lock.
    real = path.resolve()
    lock_path = real.with_name(real.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = lock_path.open("ab")
    except OSError as exc:
        raise StorageError(f"cannot open the database {path}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise StorageError(
            f"another relay is already serving from {path}; run one relay per database "
            "(`relay outbox` commands work beside it)"
        ) from None
    return handle


def connect(path: Path) -> sqlite3.Connection:
    """A connection set up for the relay: WAL, synchronous=FULL, waits for locks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.executescript(SCHEMA)
    _check_columns(conn)
    return conn


def _columns(conn: sqlite3.Connection) -> dict[str, set[str]]:
    tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    # Table names come from sqlite_master, not from outside.
    return {t: {row[1] for row in conn.execute(f"PRAGMA table_info({t})")} for t in tables}


def _check_columns(conn: sqlite3.Connection) -> None:
    """Refuse a database whose tables lack columns this relay writes (another version made it):
    every outcome record would fail, and each delivery would be sent again and again."""
    expected = sqlite3.connect(":memory:")
    try:
        expected.executescript(SCHEMA)
        wanted = _columns(expected)
    finally:
        expected.close()
    found = _columns(conn)
    for table, columns in wanted.items():
        if missing := sorted(columns - found.get(table, set())):
            raise sqlite3.DatabaseError(
                f"table {table} has no column {', '.join(missing)}: the database was made by "
                "another version of the relay"
            )


def _write_batch(
    conn: sqlite3.Connection, runs: list[Callable[[sqlite3.Connection], Any]]
) -> list[Any]:
    return in_transaction(lambda c: [run(c) for run in runs], conn)


def _accept_one(conn: sqlite3.Connection, item: _Pending) -> bool:
    event, now = item.event, item.event.received_at
    row = conn.execute("SELECT received_at FROM events WHERE id = ?", (event.id,)).fetchone()
    if row is not None and row[0] > now - item.dedup_window:
        return False
    conn.execute(
        "INSERT INTO events (id, type, datasource, payload, received_at) VALUES (?, ?, ?, ?, ?)"
        # The row may be a purge tombstone whose window has passed: take the data back in full.
        " ON CONFLICT (id) DO UPDATE SET received_at = excluded.received_at,"
        " payload = excluded.payload, datasource = excluded.datasource",
        (event.id, event.type, event.datasource, event.canonical_json(), now),
    )
    conn.executemany(
        "INSERT INTO deliveries (event_id, sink, status, next_attempt_at, created_at, updated_at)"
        " VALUES (?, ?, 'pending', ?, ?, ?)",
        [(event.id, sink, now, now, now) for sink in item.sinks],
    )
    return True


_DUE_SQL = """
SELECT d.id, d.sink, d.attempts, e.id, e.payload, e.received_at
FROM deliveries d JOIN events e ON e.id = d.event_id
WHERE d.sink = ? AND d.status IN ('pending', 'retrying') AND d.next_attempt_at <= ?
ORDER BY d.next_attempt_at, d.id
LIMIT ?
"""


def _due(
    conn: sqlite3.Connection, now: float, capacity: dict[str, int], exclude: frozenset[int]
) -> list[Due]:
    found: list[Due] = []
    for sink, room in capacity.items():
        if room <= 0:
            continue
        rows = conn.execute(_DUE_SQL, (sink, now, room + len(exclude))).fetchall()
        picked = [r for r in rows if r[0] not in exclude][:room]
        found.extend(_due_from_row(r) for r in picked)
    return found


def _due_from_row(row: tuple[Any, ...]) -> Due:
    delivery_id, sink, attempts, event_id, payload, received_at = row
    event = Event(id=event_id, data=json.loads(payload), received_at=received_at)
    return Due(id=delivery_id, sink=sink, attempts=attempts, event=event)


_NEXT_DUE_SQL = """
SELECT MIN(next_attempt_at) FROM deliveries
WHERE sink = ? AND status IN ('pending', 'retrying')
"""


def _next_due_by_sink(conn: sqlite3.Connection, sinks: tuple[str, ...]) -> dict[str, float]:
    # One index lookup per sink: the worker asks this on every turn, so it must not scan the
    # backlog (a GROUP BY over 100,000 pending deliveries took longer than sending one).
    found = {}
    for sink in sinks:
        (at,) = conn.execute(_NEXT_DUE_SQL, (sink,)).fetchone()
        if at is not None:
            found[sink] = at
    return found


def _active_by_sink(conn: sqlite3.Connection) -> dict[str, tuple[int, float]]:
    """Per sink with work left: how many deliveries, and the earliest next attempt."""
    rows = conn.execute(
        "SELECT sink, COUNT(*), MIN(next_attempt_at) FROM deliveries"
        " WHERE status IN ('pending', 'retrying') GROUP BY sink"
    )
    return {sink: (n, at) for sink, n, at in rows}


_STATUS_FOR = {"delivered": "delivered", "retry": "retrying", "dead": "dead"}


def _record(conn: sqlite3.Connection, delivery_id: int, o: Outcome, now: float) -> None:
    conn.execute(
        "UPDATE deliveries SET status = ?, attempts = attempts + 1, updated_at = ?,"
        " next_attempt_at = COALESCE(?, next_attempt_at), last_error = ?, last_reason = ?,"
        " last_status = ? WHERE id = ?",
        (_STATUS_FOR[o.outcome], now, o.next_attempt_at, o.error, o.reason, o.status_code,
         delivery_id),
    )  # fmt: skip
    conn.execute(
        "INSERT INTO attempts (delivery_id, at, outcome, reason, status_code, duration, error)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (delivery_id, now, o.outcome, o.reason, o.status_code, o.duration, o.error),
    )


def _counts(conn: sqlite3.Connection) -> dict[str, int]:
    counts = dict.fromkeys(("pending", "retrying", "delivered", "dead"), 0)
    for status, n in conn.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status"):
        counts[status] = n
    return counts


def _stats(conn: sqlite3.Connection) -> Stats:
    (oldest,) = conn.execute(
        "SELECT MIN(created_at) FROM deliveries WHERE status IN ('pending', 'retrying')"
    ).fetchone()
    return Stats(_counts(conn), oldest)


def _take_write_lock(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        # A real write, rolled back: a file this process may only read still grants the lock
        # (WAL locks live in the -shm file), and fails only here.
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        conn.execute(f"PRAGMA user_version = {version}")
    finally:
        conn.execute("ROLLBACK")
