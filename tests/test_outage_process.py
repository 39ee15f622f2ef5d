"""A real `relay serve` through a receiver outage, and `relay outbox` beside a busy relay."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict

import aiohttp

from relay.crypto import encrypt
from relay.testing.webhook import FakeReceiver, Reply
from tests.helpers import SECRET, eventually, write_config
from tests.helpers_process import RelayProcess, free_port

SIGNING = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
LOCKED = "database is locked"


def relay_config(tmp_path, receiver_url, port, delivery):
    body = f"""
    [server]
    port = {port}
    shutdown_timeout = 2
    [delivery]
    {delivery}
    [sinks.crm]
    type = "webhook"
    url = "{receiver_url}"
    signing_secret = "{SIGNING}"
    concurrency = 8
    [[routes]]
    sinks = ["crm"]
    """
    return write_config(tmp_path, body)


def token(n):
    event = {"type": "shared_connection", "datasource": "ga4", "n": n}
    return encrypt(SECRET, json.dumps(event).encode(), now=time.time())


async def post(session, url, n):
    """Post event ``n``; the id the relay accepted it under."""
    async with session.post(url, json={"encrypted_data": token(n)}) as response:
        assert response.status == 200, await response.text()
        answer = await response.json()
    assert answer["status"] == "accepted"
    return answer["id"]


def query(db, sql, *params):
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        return conn.execute(sql, params).fetchall()


def reasons(db):
    """How many attempts failed for each reason (None: delivered)."""
    return Counter(reason for (reason,) in query(db, "SELECT reason FROM attempts"))


def statuses(db):
    return Counter(status for (status,) in query(db, "SELECT status FROM deliveries"))


def event_id(request):
    return request.headers["webhook-id"].split(".")[0]


def delivered_everything(db, accepted):
    rows = query(db, "SELECT event_id, status FROM deliveries")
    return {e for e, s in rows if s == "delivered"} >= accepted and all(
        s == "delivered" for _, s in rows
    )


async def until(condition, db, relay, attempts=1000):
    """``eventually(condition)``; on failure, say what the outbox and the relay's log show."""
    try:
        await eventually(condition, attempts=attempts)
    except AssertionError:
        tail = "\n".join(relay.log.read_text().splitlines()[-30:])
        raise AssertionError(
            f"attempts {reasons(db)}, deliveries {statuses(db)}:\n{tail}"
        ) from None


async def test_outage_in_a_real_relay_then_everything_is_delivered(tmp_path):
    """Down, 500, too slow, then back: every accepted event arrives once, signed, with one id."""
    port, receiver_port = free_port(), free_port()
    url = f"http://127.0.0.1:{receiver_port}/hook"
    delivery = "initial_backoff = 0.1\nmax_backoff = 0.5\nmax_attempts = 10000\ntimeout = 0.5"
    relay = RelayProcess(relay_config(tmp_path, url, port, delivery), port)
    db = tmp_path / "relay.db"
    accepted: set[str] = set()
    phases: dict[str, FakeReceiver] = {}
    await relay.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            post_url = f"{relay.url}/webhooks/dataslayer"

            async def post_many(first, count):
                ids = await asyncio.gather(
                    *(post(session, post_url, n) for n in range(first, first + count))
                )
                accepted.update(ids)

            # Down: nobody listens on the receiver's port.
            await post_many(0, 30)
            await until(lambda: reasons(db)["connection"] >= 8, db, relay)

            # Up, but every answer is 500.
            async with FakeReceiver(
                [SIGNING], port=receiver_port, replies=[Reply(500)] * 10_000
            ) as failing:
                phases["server"] = failing
                await post_many(30, 5)
                await until(lambda: reasons(db)["server"] >= 3, db, relay)

            # Up, but slower than the relay's timeout.
            slow = [Reply(200, delay=5)] * 10_000
            async with FakeReceiver([SIGNING], port=receiver_port, replies=slow) as slow_receiver:
                phases["timeout"] = slow_receiver
                await post_many(35, 5)
                await until(lambda: reasons(db)["timeout"] >= 2, db, relay)

            # Recovered: answers 200 at once.
            async with FakeReceiver([SIGNING], port=receiver_port) as healthy:
                phases["ok"] = healthy
                await post_many(40, 5)
                await until(lambda: delivered_everything(db, accepted), db, relay, attempts=1500)
                assert relay.proc is not None and relay.proc.poll() is None, relay.log.read_text()
    finally:
        await relay.stop()

    assert len(accepted) == 45
    assert statuses(db) == {"delivered": 45}
    assert {event_id(r) for r in phases["ok"].requests} == accepted
    successes = query(
        db,
        "SELECT d.event_id, COUNT(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
        " WHERE a.outcome = 'delivered' GROUP BY d.event_id",
    )
    assert dict(successes) == dict.fromkeys(accepted, 1)
    webhook_ids = defaultdict(set)
    for receiver in phases.values():
        assert receiver.requests
        assert all(r.verified for r in receiver.requests)
        for request in receiver.requests:
            webhook_ids[event_id(request)].add(request.headers["webhook-id"])
    assert all(len(ids) == 1 for ids in webhook_ids.values())
    seen = reasons(db)
    assert seen["connection"] >= 8 and seen["server"] >= 3 and seen["timeout"] >= 2
    assert seen[None] == 45
    assert set(seen) == {"connection", "server", "timeout", None}


def outbox(config, *args):
    """``relay outbox ARGS -c CONFIG`` as a subprocess: exit code and everything it printed."""
    env = {**os.environ, "HTTP_PROXY": "", "HTTPS_PROXY": ""}
    done = subprocess.run(
        [sys.executable, "-m", "relay", "outbox", *args, "-c", str(config)],
        capture_output=True, text=True, env=env, timeout=20, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


async def test_outbox_commands_work_while_the_relay_is_busy(tmp_path):
    """list, show, retry --dead and purge beside a relay taking a stream of posts never fail."""
    port = free_port()
    delivery = "initial_backoff = 0.05\nmax_backoff = 0.5\nmax_attempts = 10000\ntimeout = 2"
    # The first answers are permanent failures (dead deliveries for retry --dead), then a few 503s.
    replies = [Reply(400, "no such customer")] * 5 + [Reply(503)] * 3
    async with FakeReceiver([SIGNING], replies=replies) as receiver:
        config = relay_config(tmp_path, receiver.url, port, delivery)
        relay = RelayProcess(config, port)
        db = tmp_path / "relay.db"
        accepted: list[str] = []
        admin_done = asyncio.Event()
        outputs: dict[str, list[str]] = defaultdict(list)

        async def stream(lane, lanes, cap):
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                for n in range(lane, cap, lanes):
                    if admin_done.is_set():
                        return
                    accepted.append(await post(session, f"{relay.url}/webhooks/dataslayer", n))
                    await asyncio.sleep(0.04)

        async def run(*args):
            code, out, err = await asyncio.to_thread(outbox, config, *args)
            assert code == 0, (args, out, err)
            assert LOCKED not in out + err and "Traceback" not in err, (args, out, err)
            outputs[args[0]].append(out.strip())
            return out

        async def admin(rounds):
            """Rounds of the four commands at once; how many posts were accepted during each."""
            during = []
            try:
                await eventually(lambda: accepted, attempts=500)
                for _ in range(rounds):
                    before = len(accepted)
                    listed, *_ = await asyncio.gather(
                        run("list", "--json"),
                        run("show", accepted[-1]),
                        run("retry", "--dead"),
                        run("purge", "--older-than", "7d"),
                    )
                    assert all(json.loads(line)["delivery"] for line in listed.splitlines())
                    during.append(len(accepted) - before)
            finally:
                admin_done.set()
            return during

        await relay.start()
        try:
            async with asyncio.TaskGroup() as group:
                rounds = group.create_task(admin(rounds=3))
                for lane in range(2):
                    group.create_task(stream(lane, lanes=2, cap=500))
            assert all(rounds.result()), rounds.result()  # posts went on during every round
            # Nothing left in flight: the dead ones are dead for good, until requeued once more.
            await until(lambda: not statuses(db).keys() & {"pending", "retrying"}, db, relay)
            await run("retry", "--dead")
            await until(lambda: delivered_everything(db, set(accepted)), db, relay, attempts=1500)
        finally:
            await relay.stop()

    assert len(accepted) == len(set(accepted)) >= 50
    assert statuses(db) == {"delivered": len(accepted)}
    assert {event_id(r) for r in receiver.requests} == set(accepted)
    assert all(r.verified for r in receiver.requests)
    assert any(out.startswith("requeued") for out in outputs["retry"])
    assert set(outputs["purge"]) == {"purged 0 events"}
    assert LOCKED not in relay.log.read_text()
