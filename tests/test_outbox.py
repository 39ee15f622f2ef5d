"""The outbox: durable accept with dedup, due deliveries per sink, recorded outcomes."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from relay.errors import StorageError
from relay.events import event_from_dict
from relay.outbox import Outbox, Outcome


def _event(n=1, at=1000.0):
    return event_from_dict({"type": "shared_connection", "n": n}, received_at=at)


async def test_accepted_event_and_deliveries_are_on_disk_before_accept_returns(tmp_path):
    """After accept() returns, another connection sees the event and one delivery per sink."""
    outbox = await Outbox.open(tmp_path / "relay.db")
    try:
        assert await outbox.accept(_event(), ["a", "b"], dedup_window=60)
        other = sqlite3.connect(tmp_path / "relay.db")
        rows = other.execute("SELECT sink, status FROM deliveries ORDER BY sink").fetchall()
        other.close()
        assert rows == [("a", "pending"), ("b", "pending")]
    finally:
        await outbox.close()


async def test_same_event_inside_the_window_is_a_duplicate(tmp_path):
    """The same event again inside dedup_window is refused; after it, accepted again."""
    outbox = await Outbox.open(tmp_path / "relay.db")
    try:
        assert await outbox.accept(_event(at=1000), ["a"], dedup_window=60)
        assert not await outbox.accept(_event(at=1059), ["a"], dedup_window=60)
        assert await outbox.accept(_event(at=1061), ["a"], dedup_window=60)
        assert (await outbox.counts())["pending"] == 2
    finally:
        await outbox.close()


async def test_concurrent_accepts_share_transactions_and_dedup_within_a_batch(tmp_path):
    """Many accepts at once all commit; identical events in one batch count once."""
    outbox = await Outbox.open(tmp_path / "relay.db")
    try:
        events = [_event(n) for n in range(50)] + [_event(7)]
        results = await asyncio.gather(*(outbox.accept(e, ["a"], 60) for e in events))
        assert results.count(True) == 50
        assert results[-1] is False
    finally:
        await outbox.close()


async def test_due_respects_time_capacity_and_exclusions(tmp_path):
    """due() returns only what is due now, at most capacity per sink, skipping in-flight ids."""
    outbox = await Outbox.open(tmp_path / "relay.db")
    try:
        for n in range(5):
            await outbox.accept(_event(n), ["a", "b"], 60)
        due = await outbox.due(1000.0, {"a": 2, "b": 0}, exclude=set())
        assert [d.sink for d in due] == ["a", "a"]
        again = await outbox.due(1000.0, {"a": 2}, exclude={d.id for d in due})
        assert not {d.id for d in again} & {d.id for d in due}
        assert await outbox.due(999.0, {"a": 5}, exclude=set()) == []
        assert due[0].event.data["type"] == "shared_connection"
    finally:
        await outbox.close()


async def test_outcomes_update_status_and_keep_every_attempt(tmp_path):
    """A retry moves next_attempt_at; delivered and dead leave the due list; attempts are kept."""
    path = tmp_path / "relay.db"
    outbox = await Outbox.open(path)
    try:
        await outbox.accept(_event(), ["a"], 60)
        (due,) = await outbox.due(1000.0, {"a": 1}, set())
        retry = Outcome("retry", 0.1, "server", 503, "HTTP 503", next_attempt_at=1010.0)
        await outbox.record(due.id, retry, now=1000.0)
        assert await outbox.due(1009.0, {"a": 1}, set()) == []
        assert await outbox.next_due_by_sink(["a"]) == {"a": 1010.0}
        await outbox.record(due.id, Outcome("delivered", 0.1), now=1010.0)
        assert await outbox.counts() == {"pending": 0, "retrying": 0, "delivered": 1, "dead": 0}
    finally:
        await outbox.close()
    conn = sqlite3.connect(path)
    attempts = conn.execute("SELECT outcome, status_code FROM attempts ORDER BY id").fetchall()
    conn.close()
    assert attempts == [("retry", 503), ("delivered", None)]


async def test_pending_deliveries_survive_reopening(tmp_path):
    """Deliveries stored before a restart are due after it."""
    path = tmp_path / "relay.db"
    outbox = await Outbox.open(path)
    await outbox.accept(_event(), ["a"], 60)
    await outbox.close()
    outbox = await Outbox.open(path)
    try:
        assert len(await outbox.due(1000.0, {"a": 4}, set())) == 1
    finally:
        await outbox.close()


async def test_a_second_outbox_on_the_same_file_is_refused_even_through_a_symlink(tmp_path):
    """Two relays on one database would double-send; another spelling of the path does not help."""
    from relay.errors import StorageError

    outbox = await Outbox.open(tmp_path / "relay.db")
    try:
        (tmp_path / "link.db").symlink_to(tmp_path / "relay.db")
        for other in (tmp_path / "link.db", tmp_path / "." / "relay.db"):
            try:
                second = await Outbox.open(other)
            except StorageError as exc:
                assert "another relay is already serving" in str(exc)
            else:
                await second.close()
                raise AssertionError(f"{other} opened beside a running outbox")
    finally:
        await outbox.close()


async def test_a_database_made_by_another_version_is_refused_at_open(tmp_path):
    """A table without a column this relay writes is refused with its name, not used until every
    outcome record fails."""
    path = tmp_path / "relay.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE events (id TEXT PRIMARY KEY, type TEXT, payload TEXT)")
    conn.close()
    with pytest.raises(StorageError, match="table events has no column datasource, received_at"):
        await Outbox.open(path)
