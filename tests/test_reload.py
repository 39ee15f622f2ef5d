"""Reloading the config (SIGHUP): a good one changes routing in place, a bad one changes nothing."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.clock import FakeClock
from relay.config import load_config
from relay.crypto import encrypt
from relay.server import OUTBOX, RELOADER, WORKER, create_app
from relay.testing.webhook import FakeReceiver, Reply
from tests.helpers import SECRET, VECTOR_NOW, eventually, write_config
from tests.helpers_process import RelayProcess, free_port

PATH = "/webhooks/dataslayer"


def body_for(a: FakeReceiver, b: FakeReceiver, route_to: str, extra: str = "") -> str:
    return f"""
    {extra}
    [sinks.a]
    type = "webhook"
    url = "{a.url}"
    [sinks.b]
    type = "webhook"
    url = "{b.url}"
    [[routes]]
    sinks = ["{route_to}"]
    """


def token(n: int, now: float = VECTOR_NOW) -> str:
    event = {"type": "shared_connection", "datasource": "google_ads", "n": n}
    return encrypt(SECRET, json.dumps(event).encode(), now=now)


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


@pytest.fixture
async def receivers():
    async with FakeReceiver() as a, FakeReceiver() as b:
        yield a, b


@pytest.fixture
def clock():
    return FakeClock(VECTOR_NOW)


@pytest.fixture
async def relay(tmp_path, receivers, clock, aiohttp_client):
    """A relay routing everything to sink "a"; the test drives its worker."""
    config = load_config(write_config(tmp_path, body_for(*receivers, "a")), environ={})
    return await aiohttp_client(create_app(config, clock=clock, run_worker=False))


async def deliver(client, n: int) -> None:
    response = await client.post(PATH, json={"encrypted_data": token(n)})
    assert response.status == 200
    await client.app[WORKER].drain()


async def scrape(client) -> str:
    return await (await client.get("/metrics")).text()


async def test_a_good_config_changes_routing_in_place(tmp_path, relay, receivers, clock):
    """After a reload routing to "b", the next event goes to b; the reload is counted and timed."""
    a, b = receivers
    await deliver(relay, 1)
    write_config(tmp_path, body_for(a, b, "b"))
    clock.advance(60)
    assert await relay.app[RELOADER].reload() is True
    await deliver(relay, 2)
    assert (len(a.requests), len(b.requests)) == (1, 1)
    text = await scrape(relay)
    assert metric(text, "relay_config_reloads_total", outcome="success") == 1
    assert metric(text, "relay_config_last_reload_successful") == 1
    assert metric(text, "relay_config_last_reload_success_timestamp_seconds") == clock.now()
    assert relay.app[RELOADER].config.routes[0].sinks == ("b",)


async def test_a_bad_config_keeps_the_old_one_and_logs_each_problem(
    tmp_path, relay, receivers, caplog
):
    """An unknown key and an unknown sink: reload refused, both named, events still go to a."""
    a, b = receivers
    caplog.set_level(logging.INFO, logger="relay")
    bad = body_for(a, b, "c").replace('type = "webhook"\n    url', 'type = "webhook"\n    urll', 1)
    write_config(tmp_path, bad)
    assert await relay.app[RELOADER].reload() is False
    errors = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert "still running the previous config" in errors
    assert "sinks.a.urll" in errors
    assert "routes[0].sinks[0]" in errors
    await deliver(relay, 1)
    assert (len(a.requests), len(b.requests)) == (1, 0)
    text = await scrape(relay)
    assert metric(text, "relay_config_reloads_total", outcome="failure") == 1
    assert metric(text, "relay_config_last_reload_successful") == 0


async def test_a_broken_template_keeps_the_old_config(tmp_path, relay, receivers, caplog):
    """A template that does not compile fails the reload, named with its file; nothing changes."""
    a, b = receivers
    folder = tmp_path / "templates" / "shared_connection"
    folder.mkdir(parents=True)
    (folder / "webhook.body.j2").write_text("{{ event | tojson ", encoding="utf-8")
    write_config(tmp_path, body_for(a, b, "b"))
    assert await relay.app[RELOADER].reload() is False
    assert "shared_connection/webhook.body.j2" in caplog.text
    await deliver(relay, 1)
    assert (len(a.requests), len(b.requests)) == (1, 0)


async def test_edited_templates_apply_after_a_reload(tmp_path, receivers, clock, aiohttp_client):
    """A template changed on disk is used from the reload on; before it, the old one is."""
    a, b = receivers
    template = tmp_path / "templates" / "shared_connection" / "webhook.body.j2"
    template.parent.mkdir(parents=True)
    template.write_text('{"version": 1}', encoding="utf-8")
    config = load_config(write_config(tmp_path, body_for(a, b, "a")), environ={})
    client = await aiohttp_client(create_app(config, clock=clock, run_worker=False))
    template.write_text('{"version": 2}', encoding="utf-8")
    await deliver(client, 1)
    assert await client.app[RELOADER].reload() is True
    await deliver(client, 2)
    assert [json.loads(r.body) for r in a.requests] == [{"version": 1}, {"version": 2}]


async def test_changes_that_need_a_restart_are_named(tmp_path, relay, receivers, caplog):
    """[server] port and [storage] path changes are applied only by a restart, and said so."""
    extra = '[server]\nport = 9999\n[storage]\npath = "other.db"\n'
    write_config(tmp_path, body_for(*receivers, "a", extra))
    assert await relay.app[RELOADER].reload() is True
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "server.port changed: it applies after a restart, not on reload" in warnings
    assert "storage.path changed: it applies after a restart, not on reload" in warnings


async def test_a_reload_logs_the_warnings_check_would_print(tmp_path, relay, receivers, caplog):
    """A config cut off before its routes is valid: the reload applies it, and warns that events
    will be stored but sent nowhere, as relay check and a start do."""
    a, _ = receivers
    write_config(tmp_path, f'[sinks.a]\ntype = "webhook"\nurl = "{a.url}"\n')
    assert await relay.app[RELOADER].reload() is True
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "routes: no routes and no fallback; events are stored but sent nowhere" in warnings


async def test_a_send_in_flight_finishes_on_the_old_sink(tmp_path, relay, receivers, clock):
    """A slow send that started before the reload completes and is recorded as delivered."""
    a, b = receivers
    a.reply(Reply(200, delay=0.3))
    response = await relay.post(PATH, json={"encrypted_data": token(1)})
    assert response.status == 200
    drain = asyncio.create_task(relay.app[WORKER].drain())
    await a.wait_for(1)
    write_config(tmp_path, body_for(a, b, "b"))
    assert await relay.app[RELOADER].reload() is True
    await drain
    counts = await relay.app[OUTBOX].counts()
    assert counts["delivered"] == 1


async def test_a_removed_sink_keeps_its_deliveries_pending(tmp_path, relay, receivers, caplog):
    """Deliveries waiting for a sink the new config removed stay pending, with a warning."""
    _, b = receivers
    response = await relay.post(PATH, json={"encrypted_data": token(1)})
    assert response.status == 200
    write_config(tmp_path, body_for(b, b, "b").replace("[sinks.a]", "[sinks.c]"))
    assert await relay.app[RELOADER].reload() is True
    await relay.app[WORKER].drain()
    assert (await relay.app[OUTBOX].counts())["pending"] == 1
    assert "1 pending delivery for sinks no longer configured: a (1)" in caplog.text


async def test_an_unchanged_sink_keeps_its_pause_a_changed_one_starts_afresh(
    tmp_path, relay, receivers
):
    """The breaker of a sink whose config did not change survives a reload; an edited one resets."""
    a, b = receivers
    a.reply(*[Reply(500)] * 5)
    for n in range(5):
        assert (await relay.post(PATH, json={"encrypted_data": token(n)})).status == 200
    await relay.app[WORKER].drain()
    assert relay.app[WORKER].gates["a"].paused_until is not None

    write_config(tmp_path, body_for(a, b, "b"))  # sink a unchanged
    assert await relay.app[RELOADER].reload() is True
    assert relay.app[WORKER].gates["a"].paused_until is not None

    edited = body_for(a, b, "b").replace(f'url = "{a.url}"', f'url = "{a.url}"\n    timeout = 3')
    write_config(tmp_path, edited)
    assert await relay.app[RELOADER].reload() is True
    assert relay.app[WORKER].gates["a"].paused_until is None


# -- a real `relay serve` and a real SIGHUP ----------------------------------------------------


async def post_now(session: aiohttp.ClientSession, url: str, n: int) -> None:
    async with session.post(url, json={"encrypted_data": token(n, time.time())}) as response:
        assert response.status == 200, await response.text()


async def reloads(session: aiohttp.ClientSession, relay: RelayProcess, outcome: str) -> float:
    async with session.get(f"{relay.url}/metrics") as response:
        return metric(await response.text(), "relay_config_reloads_total", outcome=outcome)


async def test_sighup_reloads_a_running_relay_and_refuses_a_bad_config(tmp_path, receivers):
    """SIGHUP with a good config routes to b; with a bad one the relay goes on routing to b."""
    a, b = receivers
    port = free_port()
    server = f"[server]\nport = {port}\n"
    path = write_config(tmp_path, body_for(a, b, "a", server))
    relay = RelayProcess(path, port)
    await relay.start()
    try:
        async with aiohttp.ClientSession() as session:
            url = relay.url + PATH
            await post_now(session, url, 1)
            await a.wait_for(1)

            write_config(tmp_path, body_for(a, b, "b", server))
            relay.signal(signal.SIGHUP)
            await eventually(lambda: reloads(session, relay, "success"))
            await post_now(session, url, 2)
            await b.wait_for(1)

            write_config(tmp_path, body_for(a, b, "nowhere", server))
            relay.signal(signal.SIGHUP)
            await eventually(lambda: reloads(session, relay, "failure"))
            await post_now(session, url, 3)
            await b.wait_for(2)
            async with session.get(f"{relay.url}/readyz") as response:
                assert response.status == 200
        assert len(a.requests) == 1
        output = relay.log.read_text()
        assert "still running the previous config" in output
        assert 'routes[0].sinks[0]: unknown sink "nowhere"' in output
    finally:
        await relay.stop()
