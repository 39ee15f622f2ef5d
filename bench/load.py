"""The load generator; ``run_load(spec)`` runs in a process of its own (see ``procs.LoadPool``).

Tokens are made before the clock starts, so encryption never limits the rate. Each event carries
``bench_seq`` (distinct, so the relay's dedup never short-circuits it) and the generator records
when it sent each one; receivers record arrivals by the same number. Both use time.monotonic(),
which on Linux is CLOCK_MONOTONIC, one clock for every process on the machine.

Two shapes, both bounded in count and in time:
- closed loop (``rate`` None): ``concurrency`` senders, each sending its next request when the
  previous one was answered: the most the server can take.
- open loop (``rate`` set): one request every 1/rate seconds whatever the answers, as independent
  senders behave; a slow server then shows as growing latency, not as a lower send rate.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp

from relay.crypto import encrypt

REQUEST_TIMEOUT = 30.0  # seconds for one request; a bounded run must not wait forever
FAILED = -1  # status recorded for a request that got no HTTP answer (timeout, reset)
_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class LoadSpec:
    url: str
    secret: str
    run: str  # makes events unique across runs sharing one relay
    first_seq: int
    count: int
    concurrency: int  # closed loop: senders; open loop: most requests in flight
    time_cap: float  # seconds: no request is started after this
    rate: float | None = None  # requests per second: open loop; None: closed loop
    datasource: str = "google_ads"


@dataclass
class LoadResult:
    """One row per request started: its seq, when it was sent, how long the answer took."""

    seqs: list[int] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    duplicates: int = 0
    started: float = 0.0
    finished: float = 0.0
    cpu_seconds: float = 0.0  # the generator's own CPU time: near the wall time = saturated
    max_lag: float = 0.0  # open loop: how far behind schedule the generator ever sent

    @property
    def ok(self) -> int:
        return sum(1 for s in self.status if s == 200)

    @property
    def wall(self) -> float:
        return self.finished - self.started


def run_load(spec: LoadSpec) -> LoadResult:
    """Make the tokens, then send them; the process-pool entry point."""
    bodies = make_bodies(spec)
    return asyncio.run(_send_all(spec, bodies))


def make_bodies(spec: LoadSpec) -> list[bytes]:
    created = int(time.time())
    bodies = []
    for seq in range(spec.first_seq, spec.first_seq + spec.count):
        event = {
            "type": "shared_connection",
            "datasource": spec.datasource,
            "email": f"bench+{seq}@example.com",
            "created": created,
            "bench_run": spec.run,
            "bench_seq": seq,
        }
        token = encrypt(spec.secret, json.dumps(event).encode("utf-8"))
        bodies.append(json.dumps({"encrypted_data": token}).encode("ascii"))
    return bodies


async def _send_all(spec: LoadSpec, bodies: list[bytes]) -> LoadResult:
    result = LoadResult()
    connector = aiohttp.TCPConnector(limit=spec.concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cpu = time.process_time()
        result.started = time.monotonic()
        if spec.rate is None:
            await _closed_loop(session, spec, bodies, result)
        else:
            await _open_loop(session, spec, bodies, result)
        result.finished = time.monotonic()
        result.cpu_seconds = time.process_time() - cpu
    return result


async def _post(
    session: aiohttp.ClientSession, url: str, seq: int, body: bytes, result: LoadResult
) -> None:
    sent = time.monotonic()
    try:
        async with session.post(url, data=body, headers=_HEADERS) as answer:
            text = await answer.read()
            status = answer.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        status, text = FAILED, b""
    result.seqs.append(seq)
    result.sent.append(sent)
    result.latency.append(time.monotonic() - sent)
    result.status.append(status)
    if b'"duplicate"' in text:
        result.duplicates += 1


async def _closed_loop(
    session: aiohttp.ClientSession, spec: LoadSpec, bodies: list[bytes], result: LoadResult
) -> None:
    deadline = time.monotonic() + spec.time_cap
    work = iter(enumerate(bodies, start=spec.first_seq))

    async def sender() -> None:
        for seq, body in work:
            if time.monotonic() > deadline:
                return
            await _post(session, spec.url, seq, body, result)

    await asyncio.gather(*(sender() for _ in range(spec.concurrency)))


async def _open_loop(
    session: aiohttp.ClientSession, spec: LoadSpec, bodies: list[bytes], result: LoadResult
) -> None:
    assert spec.rate is not None
    start = time.monotonic()
    tasks: set[asyncio.Task[None]] = set()
    for i, body in enumerate(bodies):
        due = start + i / spec.rate
        if due - start > spec.time_cap:
            break
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        result.max_lag = max(result.max_lag, time.monotonic() - due)
        task = asyncio.create_task(_post(session, spec.url, spec.first_seq + i, body, result))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 1)
