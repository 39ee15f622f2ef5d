"""relay outbox list/show/retry/purge over a database with pending, dead and delivered entries."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from datetime import UTC, datetime

import pytest

from relay.admin import parse_duration
from relay.cli import main
from relay.clock import FakeClock
from relay.config import DeliveryConfig, load_config
from relay.crypto import encrypt
from relay.events import event_from_dict
from relay.outbox import Outbox, Outcome
from relay.render import Renderer
from relay.server import OUTBOX, STATE, WORKER, create_app
from relay.testing.webhook import FakeReceiver, Reply
from relay.worker import Worker
from tests.helpers import SECRET, write_config

DAY = 86400
PERMANENT = "permanent failure after 1 attempt"


@pytest.fixture
async def receiver():
    async with FakeReceiver() as fake:
        yield fake


@pytest.fixture
async def relay(tmp_path, receiver, aiohttp_client):
    """Events received three days ago: one dead, one delivered, one retrying, one never tried."""
    client = await start_relay(tmp_path, receiver, aiohttp_client, age=3 * DAY)
    receiver.reply(Reply(400, "no such customer"), Reply(200), Reply(503))
    client.ids = []
    for email in ("dead@example.com", "ok@example.com", "later@example.com"):
        client.ids.append(await post(client, email))
        await client.app[WORKER].drain()
    client.ids.append(await post(client, "waiting@example.com"))  # pending: the worker never ran
    return client


@pytest.fixture
async def recent(tmp_path, receiver, aiohttp_client):
    """A relay whose clock runs half an hour behind, with a one-hour dedup window."""
    extra = "[dataslayer]\nmax_token_age = 3600\ndedup_window = 3600\n"
    return await start_relay(tmp_path, receiver, aiohttp_client, age=1800, dataslayer=extra)


async def start_relay(tmp_path, receiver, aiohttp_client, *, age, dataslayer=""):
    body = f"""
    [storage]
    retention = {2 * DAY}
    [sinks.crm]
    type = "webhook"
    url = "{receiver.url}"
    [[routes]]
    sinks = ["crm"]
    """
    path = write_config(tmp_path, body)
    if dataslayer:  # write_config opens with [dataslayer]: add keys to that table
        text = path.read_text(encoding="utf-8").replace("[dataslayer]\n", dataslayer, 1)
        path.write_text(text, encoding="utf-8")
    clock = FakeClock(time.time() - age)
    client = await aiohttp_client(
        create_app(load_config(path, environ={}), clock=clock, run_worker=False)
    )
    client.config_path, client.clock, client.db = str(path), clock, tmp_path / "relay.db"
    return client


async def post(client, email, expect="accepted", **fields):
    event = {"type": "shared_connection", "datasource": "ga4", "email": email, **fields}
    token = encrypt(SECRET, json.dumps(event).encode(), now=client.clock.now())
    response = await client.post("/webhooks/dataslayer", json={"encrypted_data": token})
    assert response.status == 200
    answer = await response.json()
    assert answer["status"] == expect
    return answer["id"]


def rows(db, sql, *params):
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def run(capsys, relay, *args):
    code = main(["outbox", *args, "-c", relay.config_path])
    out = capsys.readouterr()
    return code, out.out, out.err


async def test_list_shows_every_delivery_and_filters(relay, capsys):
    """list shows each delivery's status; --status, --sink and --since narrow it."""
    code, out, _ = run(capsys, relay, "list")
    assert code == 0
    for status in ("dead", "delivered", "retrying", "pending"):
        assert status in out
    _, out, _ = run(capsys, relay, "list", "--status", "dead")
    assert relay.ids[0][:12] in out
    assert relay.ids[1][:12] not in out
    _, out, _ = run(capsys, relay, "list", "--since", "1d")
    assert out.strip() == "no deliveries match"
    _, out, _ = run(capsys, relay, "list", "--sink", "crm", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["status"] for r in rows) == ["dead", "delivered", "pending", "retrying"]
    assert "later@example.com" not in out


async def test_list_of_pending_shows_the_delivery_never_attempted(relay, capsys):
    """list --status pending shows only the delivery never attempted: no tries, due now."""
    code, out, _ = run(capsys, relay, "list", "--status", "pending")
    assert code == 0
    header, line = out.strip().splitlines()
    assert header.split()[:5] == ["ID", "EVENT", "SINK", "STATUS", "TRIES"]
    _, event, sink, status, tries, _, _, due = line.split()
    assert (event, sink, status, tries, due) == (relay.ids[3][:12], "crm", "pending", "0", "now")
    _, out, _ = run(capsys, relay, "list", "--status", "pending", "--json")
    [row] = [json.loads(line) for line in out.splitlines()]
    assert (row["event"], row["status"], row["attempts"]) == (relay.ids[3], "pending", 0)
    assert (row["last_reason"], row["last_status"], row["last_error"]) == (None, None, None)
    _, out, _ = run(capsys, relay, "show", relay.ids[3])
    delivery_line = out.strip().splitlines()[-1]
    assert delivery_line.endswith("-> crm: pending, 0 attempt(s), next now")


async def test_show_masks_personal_data_unless_asked(relay, capsys):
    """show prints the event masked, and each attempt with its outcome and status code."""
    code, out, _ = run(capsys, relay, "show", relay.ids[0][:10])
    assert code == 0
    assert '"d***@example.com"' in out
    assert "dead@example.com" not in out
    assert "dead" in out
    assert "client 400" in out
    assert "no such customer" in out
    _, out, _ = run(capsys, relay, "show", relay.ids[0], "--show-personal-data", "--json")
    detail = json.loads(out)
    assert detail["event"]["email"] == "dead@example.com"
    assert detail["deliveries"][0]["history"][0]["status_code"] == 400


async def test_show_gives_each_attempt_its_time_outcome_reason_code_and_duration(relay, capsys):
    """show prints each attempt's UTC time, outcome, reason, status code, duration and error."""
    when = datetime.fromtimestamp(relay.clock.now(), UTC).strftime("%Y-%m-%d %H:%M")
    attempt = re.compile(r"^  (\S+ \S+)  (\S+) +(\S+) (\d+) \((\d+) ms\): (.*)$", re.MULTILINE)
    for ref, outcome, reason, code, error in [
        (relay.ids[0], "dead", "client", 400, f"HTTP 400: no such customer ({PERMANENT})"),
        (relay.ids[2], "retry", "server", 503, "HTTP 503"),
    ]:
        _, out, _ = run(capsys, relay, "show", ref)
        [shown] = attempt.findall(out)
        _, detail, _ = run(capsys, relay, "show", ref, "--json")
        [history] = json.loads(detail)["deliveries"][0]["history"]
        assert history["at"] == relay.clock.now()
        assert (history["outcome"], history["reason"]) == (outcome, reason)
        assert (history["status_code"], history["error"]) == (code, error)
        assert history["duration"] > 0
        took = f"{history['duration'] * 1000:.0f}"
        assert shown == (when, outcome, reason, str(code), took, error)


async def test_unknown_ids_are_clear_errors(relay, capsys):
    """A missing or malformed id is one line on stderr and exit 1, no traceback."""
    code, _, err = run(capsys, relay, "show", "ffffffffff")
    assert (code, err.strip()) == (1, "no event ffffffffff")
    code, _, err = run(capsys, relay, "retry", "xyz")
    assert code == 1
    assert "not an event id" in err


async def test_retrying_dead_deliveries_delivers_them(relay, receiver, capsys):
    """retry --dead requeues the dead delivery, and the worker then delivers it."""
    code, out, _ = run(capsys, relay, "retry", "--dead")
    assert (code, out.strip()) == (0, "requeued 1 delivery")
    before = len(receiver.requests)
    await relay.app[WORKER].drain()
    assert sent_to(receiver, since=before) == {"dead@example.com", "waiting@example.com"}
    counts = await relay.app[OUTBOX].counts()
    assert (counts["dead"], counts["delivered"], counts["retrying"]) == (0, 3, 1)


def sent_to(receiver, since):
    """The event emails of the requests the receiver got from index ``since`` on."""
    return {json.loads(r.body)["data"]["email"] for r in receiver.requests[since:]}


async def test_retry_by_event_id_makes_a_retrying_delivery_due_now(relay, receiver, capsys):
    """retry EVENT_ID sends a delivery that was waiting for its backoff right away."""
    run(capsys, relay, "retry", relay.ids[2])
    before = len(receiver.requests)
    await relay.app[WORKER].drain()  # the fixture's never-attempted delivery goes too
    assert sent_to(receiver, since=before) == {"later@example.com", "waiting@example.com"}


async def test_purge_deletes_old_events_but_never_pending_ones(relay, capsys):
    """purge --older-than removes delivered and dead events, keeps the one still retrying."""
    code, out, _ = run(capsys, relay, "purge", "--older-than", "2d")
    assert (code, out.strip()) == (0, "purged 2 events")
    assert await relay.app[OUTBOX].counts() == {
        "pending": 1, "retrying": 1, "delivered": 0, "dead": 0,
    }  # fmt: skip


async def test_retention_deletes_delivered_events_and_keeps_dead_ones(relay):
    """After [storage].retention a delivered event is deleted; dead and pending ones stay."""
    relay.clock.advance(2 * DAY + 1)
    assert await relay.app[WORKER].cleanup() == 1
    counts = await relay.app[OUTBOX].counts()
    assert (counts["delivered"], counts["dead"], counts["retrying"], counts["pending"]) == (
        0, 1, 1, 1,
    )  # fmt: skip


async def test_purge_forgets_events_older_than_the_dedup_window(relay, capsys):
    """Events purged after their dedup window ended leave no row behind."""
    run(capsys, relay, "purge", "--older-than", "2d")
    assert sorted(rows(relay.db, "SELECT id FROM events")) == sorted(
        [(relay.ids[2],), (relay.ids[3],)]
    )


async def test_a_purged_event_is_still_refused_as_a_replay_inside_the_dedup_window(
    recent, receiver, capsys
):
    """purge keeps a tombstone without personal data, so a replayed token is not delivered again."""
    event_id = await post(recent, "ana@example.com")
    await recent.app[WORKER].drain()
    code, out, _ = run(capsys, recent, "purge", "--older-than", "0")
    assert (code, out.strip()) == (0, "purged 1 event")
    assert rows(recent.db, "SELECT payload, datasource FROM events") == [("{}", None)]
    assert rows(recent.db, "SELECT COUNT(*) FROM deliveries") == [(0,)]
    recent.clock.advance(60)
    assert await post(recent, "ana@example.com", expect="duplicate") == event_id
    await recent.app[WORKER].drain()
    assert len(receiver.requests) == 1
    _, out, _ = run(capsys, recent, "purge", "--older-than", "0")
    assert out.strip() == "purged 0 events"


async def test_show_says_an_event_was_purged(recent, capsys):
    """show of a tombstone says the event was purged, in the table and in --json."""
    event_id = await post(recent, "ana@example.com")
    await recent.app[WORKER].drain()
    run(capsys, recent, "purge", "--older-than", "0")
    code, out, _ = run(capsys, recent, "show", event_id)
    assert code == 0
    assert "purged" in out
    assert "ana" not in out
    _, out, _ = run(capsys, recent, "show", event_id, "--json")
    assert json.loads(out)["purged"] is True


async def test_a_tombstone_past_its_window_takes_the_event_back_in_full(recent, receiver, capsys):
    """Once the dedup window has passed, the same event is accepted and sent with all its data."""
    await post(recent, "ana@example.com")
    await recent.app[WORKER].drain()
    run(capsys, recent, "purge", "--older-than", "0")
    recent.clock.advance(2 * 3600)
    await post(recent, "ana@example.com")
    await recent.app[WORKER].drain()
    first, second = receiver.requests
    assert json.loads(second.body)["data"] == json.loads(first.body)["data"]


async def test_retention_keeps_a_tombstone_until_the_dedup_window_ends(tmp_path):
    """The retention sweep tombstones events still inside dedup_window and deletes them after it."""
    outbox = await Outbox.open(tmp_path / "relay.db")
    try:
        event = event_from_dict({"type": "shared_connection", "email": "a@x.io"}, received_at=0)
        assert await outbox.accept(event, ["a"], dedup_window=DAY)
        [due] = await outbox.due(0, {"a": 1}, exclude=set())
        await outbox.record(due.id, Outcome("delivered", 0.1), now=1)
        clock = FakeClock(3601)
        worker = Worker(
            outbox, {}, Renderer(None), DeliveryConfig(), clock, retention=3600, dedup_window=DAY
        )
        assert await worker.cleanup() == 1
        assert rows(tmp_path / "relay.db", "SELECT payload FROM events") == [("{}",)]
        again = event_from_dict(event.data, received_at=3602)
        assert not await outbox.accept(again, ["a"], dedup_window=DAY)
        clock.set(DAY + 1)
        assert await worker.cleanup() == 0
        assert rows(tmp_path / "relay.db", "SELECT COUNT(*) FROM events") == [(0,)]
    finally:
        await outbox.close()


async def test_purge_of_a_sink_deletes_its_deliveries_even_pending_ones(relay, capsys):
    """purge --sink deletes that sink's deliveries of any status, then events left with nothing."""
    conn = sqlite3.connect(relay.db)
    conn.execute(
        "INSERT INTO deliveries (event_id, sink, status, next_attempt_at, created_at, updated_at)"
        " VALUES (?, 'archive', 'delivered', 0, 0, 0)",
        (relay.ids[1],),
    )
    conn.commit()
    conn.close()
    code, out, _ = run(capsys, relay, "purge", "--sink", "crm", "--older-than", "2d")
    assert (code, out.strip()) == (0, "purged 4 deliveries to crm and 3 events")
    assert rows(relay.db, "SELECT event_id, sink FROM deliveries") == [(relay.ids[1], "archive")]
    assert rows(relay.db, "SELECT id FROM events") == [(relay.ids[1],)]


async def test_purge_of_a_sink_keeps_newer_deliveries(relay, capsys):
    """purge --sink leaves deliveries of events younger than --older-than alone."""
    code, out, _ = run(capsys, relay, "purge", "--sink", "crm", "--older-than", "4d")
    assert (code, out.strip()) == (0, "purged 0 deliveries to crm and 0 events")
    assert rows(relay.db, "SELECT COUNT(*) FROM deliveries") == [(4,)]


async def test_retrying_for_a_sink_no_longer_configured_warns_but_requeues(relay, tmp_path, capsys):
    """retry of a delivery to a sink missing from the config warns on stderr and requeues it."""
    other = tmp_path / "other.toml"
    other.write_text(f'[dataslayer]\nsecret = "{SECRET}"\n[sinks.new]\ntype = "console"\n')
    code = main(["outbox", "retry", "--dead", "-c", str(other)])
    out = capsys.readouterr()
    assert (code, out.out.strip()) == (0, "requeued 1 delivery")
    assert "sink crm is not configured; the delivery waits until it is" in out.err
    assert rows(relay.db, "SELECT status FROM deliveries WHERE status = 'dead'") == []


async def test_outbox_commands_work_without_the_secret_or_a_valid_config(
    relay, tmp_path, capsys, monkeypatch
):
    """Outbox commands read only the storage path, dedup window and sink names, leniently."""
    monkeypatch.delenv("DATASLAYER_SECRET", raising=False)
    ops = tmp_path / "ops.toml"
    ops.write_text(
        '[dataslayer]\nsecret = "${DATASLAYER_SECRET}"\n[server]\nprot = 80\n'
        '[sinks.crm]\ntype = "webhok"\n'
    )
    assert main(["outbox", "list", "-c", str(ops), "--status", "dead"]) == 0
    assert relay.ids[0][:12] in capsys.readouterr().out
    assert main(["outbox", "retry", "--dead", "-c", str(ops)]) == 0
    out = capsys.readouterr()
    assert (out.out.strip(), out.err) == ("requeued 1 delivery", "")


async def test_db_option_names_the_database_without_a_config(relay, tmp_path, capsys, monkeypatch):
    """--db works with no config file at all."""
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["outbox", "show", relay.ids[0], "--db", str(relay.db)]) == 0
    assert "d***@example.com" in capsys.readouterr().out


async def test_an_unreadable_config_is_a_clear_error(tmp_path, capsys):
    """A config that is not TOML is one clear line and exit 1."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[storage\npath = 1\n")
    assert main(["outbox", "list", "-c", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "not valid TOML" in err
    assert "Traceback" not in err


async def test_show_masks_every_email_in_the_event_and_the_errors(relay, receiver, capsys):
    """Without --show-personal-data every address is masked: in any field and in every error."""
    await relay.app[WORKER].drain()  # the fixture's pending delivery, so the 400 is this one's
    receiver.reply(Reply(400, "unknown owner boss@example.com"))
    event_id = await post(
        relay, "ana@example.com", owner={"contact": "boss@example.com"}, cc=["cc eve@example.com"]
    )
    await relay.app[WORKER].drain()
    for extra in ([], ["--json"]):
        code, out, _ = run(capsys, relay, "show", event_id, *extra)
        assert code == 0
        for address in ("ana@example.com", "boss@example.com", "eve@example.com"):
            assert address not in out
        assert "b***@example.com" in out
    _, out, _ = run(capsys, relay, "show", event_id, "--json", "--show-personal-data")
    assert "boss@example.com" in out


async def test_retrying_a_missing_delivery_is_an_error(relay, capsys):
    """retry of a delivery id that does not exist says so and exits 1."""
    code, _, err = run(capsys, relay, "retry", "99999")
    assert (code, err.strip()) == (1, "no delivery 99999")


async def test_retrying_a_delivered_delivery_says_nothing_was_requeued(relay, capsys):
    """retry of deliveries that are all delivered says nothing was requeued, and exits 0."""
    code, out, _ = run(capsys, relay, "retry", relay.ids[1])
    assert code == 0
    assert out.strip() == "nothing to requeue: the delivery is already delivered"


async def test_list_of_an_unknown_sink_matches_nothing_and_says_so(relay, capsys):
    """list --sink of a name not in the config finds nothing, and says the name is unknown."""
    code, out, _ = run(capsys, relay, "list", "--sink", "nosuch")
    assert code == 0
    assert out.startswith("no deliveries match")
    assert "sink nosuch is not in the config" in out


@pytest.mark.parametrize(
    ("sink", "hint"),
    [("crn", ' (did you mean "crm"?)'), ("nosuch", "; the config's sinks: crm")],
    ids=["close", "far"],
)
@pytest.mark.parametrize(
    "action", [["retry", "--dead"], ["purge", "--older-than", "1d"]], ids=["retry", "purge"]
)
async def test_retry_or_purge_of_a_sink_neither_config_nor_database_knows_fails(
    relay, capsys, action, sink, hint
):
    """retry and purge --sink of a name unknown to the config and the database exit 1 untouched."""
    before = rows(relay.db, "SELECT id, status FROM deliveries ORDER BY id")
    code, out, err = run(capsys, relay, *action, "--sink", sink)
    assert (code, out) == (1, "")
    assert err == f'no sink named "{sink}" in the config or the database{hint}\n'
    assert rows(relay.db, "SELECT id, status FROM deliveries ORDER BY id") == before


async def test_a_removed_sinks_deliveries_can_still_be_retried_and_purged_by_name(
    relay, tmp_path, capsys
):
    """--sink of a sink gone from the config but still in the database works and exits 0."""
    other = tmp_path / "other.toml"
    other.write_text(f'[dataslayer]\nsecret = "{SECRET}"\n[sinks.new]\ntype = "console"\n')
    outbox = ["outbox", "-c", str(other)]
    assert main([*outbox, "retry", "--dead", "--sink", "crm"]) == 0
    assert capsys.readouterr().out == "requeued 1 delivery\n"
    assert main([*outbox, "retry", "--dead", "--sink", "crm"]) == 0
    assert capsys.readouterr().out == "no deliveries match (sink crm is not in the config)\n"
    assert main([*outbox, "purge", "--older-than", "4d", "--sink", "crm"]) == 0
    assert capsys.readouterr().out == (
        "purged 0 deliveries to crm and 0 events (sink crm is not in the config)\n"
    )


async def test_posts_during_shutdown_get_503(relay):
    """Once shutdown began, new posts are refused with 503 and Retry-After."""
    relay.app[STATE].closing = True
    response = await relay.post("/webhooks/dataslayer", json={"encrypted_data": "x"})
    assert response.status == 503
    assert response.headers["Retry-After"] == "5"


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("30s", 30), ("15m", 900), ("7d", 604800)]
)
def test_durations_read_like_people_write_them(text, seconds):
    """--since and --older-than take 30s, 15m, 1h, 7d, 2w."""
    assert parse_duration(text) == seconds


async def test_list_masks_addresses_quoted_in_errors(relay, receiver, capsys):
    """A receiver's error that quotes the client's email shows it masked in outbox list."""
    await relay.app[WORKER].drain()  # the fixture's pending delivery, so the 400 is this one's
    receiver.reply(Reply(400, "unknown customer quoted@example.com"))
    await post(relay, "quoted@example.com")
    await relay.app[WORKER].drain()
    code, out, _ = run(capsys, relay, "list", "--json")
    assert code == 0
    assert "q***@example.com" in out
    assert "quoted@example.com" not in out


def test_outbox_commands_read_a_config_saved_with_a_byte_order_mark(tmp_path, capsys):
    """relay outbox reads a config with a UTF-8 BOM as serve does."""
    config = write_config(tmp_path, '[sinks.out]\ntype = "console"\n')
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
    assert main(["outbox", "list", "-c", str(config)]) == 1  # no database yet: said plainly
    assert "no database at" in capsys.readouterr().err


async def test_list_json_with_no_match_prints_nothing(relay, capsys):
    """--json output is one object per line: no match is no line at all, not a blank one."""
    code, out, _ = run(capsys, relay, "list", "--json", "--since", "1s")
    assert (code, out) == (0, "")
