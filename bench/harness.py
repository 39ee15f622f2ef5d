"""What every scenario shares: the run's sizes, a scratch folder, the load process, and clients
for the receiver's control endpoints."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.load import LoadResult, LoadSpec
from bench.procs import SECRET, Child, LoadPool, running, spawn_app, spawn_relay


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does; one set per mode (full, --quick, --smoke)."""

    ingest_requests: int  # per round and per server
    ingest_rounds: int
    ingest_concurrency: int
    latency_seconds: float
    latency_rate: float
    backlog_events: int
    backlog_concurrency: int
    start_runs: int
    naive_rates: tuple[float, ...]
    naive_step_seconds: float
    warmup: int  # requests sent before a measured run, not counted
    time_cap: float  # seconds: the longest any single load run may take
    drain_cap: float  # seconds: the longest the backlog may take to drain


FULL = Sizes(
    ingest_requests=20_000,
    ingest_rounds=3,
    ingest_concurrency=64,
    latency_seconds=30.0,
    latency_rate=200.0,
    backlog_events=100_000,
    backlog_concurrency=32,
    start_runs=9,
    naive_rates=(2, 5, 10, 15, 20),
    naive_step_seconds=5.0,
    warmup=500,
    time_cap=600.0,
    drain_cap=900.0,
)
QUICK = Sizes(
    ingest_requests=5_000,
    ingest_rounds=2,
    ingest_concurrency=64,
    latency_seconds=10.0,
    latency_rate=200.0,
    backlog_events=10_000,
    backlog_concurrency=32,
    start_runs=5,
    naive_rates=(5, 10, 20),
    naive_step_seconds=3.0,
    warmup=200,
    time_cap=120.0,
    drain_cap=300.0,
)
SMOKE = Sizes(
    ingest_requests=40,
    ingest_rounds=1,
    ingest_concurrency=8,
    latency_seconds=0.25,
    latency_rate=200.0,
    backlog_events=40,
    backlog_concurrency=8,
    start_runs=1,
    naive_rates=(10, 30),
    naive_step_seconds=0.2,
    warmup=10,
    time_cap=30.0,
    drain_cap=30.0,
)


class Bench:
    """Per-run context, used as ``async with Bench(sizes, workdir) as bench``: ``sizes``, a fresh
    folder per scenario (``folder()``), ``load()`` in the load process, the shared webhook
    receiver (``receiver()``), and event numbers unique across the whole run."""

    def __init__(
        self,
        sizes: Sizes,
        workdir: Path,
        relay_source: Path | None = None,
        sink_settings: tuple[str, ...] = (),
    ) -> None:
        self.sizes = sizes
        self.workdir = workdir
        self.relay_source = relay_source  # None: the checkout's relay
        self.sink_settings = sink_settings  # TOML lines added to the relay's sink
        self.run_id = uuid.uuid4().hex[:12]
        self._pool = LoadPool()
        self._next_seq = 0
        self._folders = itertools.count()
        self._stack = AsyncExitStack()
        self._receiver: ReceiverControl | None = None

    async def __aenter__(self) -> Bench:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self._stack.aclose()
        finally:
            self._pool.close()

    async def receiver(self) -> ReceiverControl:
        """The webhook receiver, up and with nothing recorded; one process for every scenario."""
        if self._receiver is None:
            child = spawn_app("receiver", self.workdir)
            await running(self._stack, child)
            self._receiver = ReceiverControl(child.url)
        await self._receiver.reset()
        return self._receiver

    def spawn_relay(self, folder: Path, sink: str) -> Child:
        """The relay (from ``relay_source``) with ``sink`` and the run's ``sink_settings``."""
        extra = "".join(f"{line}\n" for line in self.sink_settings)
        return spawn_relay(folder, sink + extra, self.relay_source)

    def folder(self, name: str) -> Path:
        path = self.workdir / f"{next(self._folders):02d}-{name}"
        path.mkdir(parents=True)
        return path

    async def load(
        self, url: str, count: int, concurrency: int, rate: float | None = None
    ) -> LoadResult:
        spec = LoadSpec(
            url=url,
            secret=SECRET,
            run=self.run_id,
            first_seq=self._next_seq,
            count=count,
            concurrency=concurrency,
            time_cap=self.sizes.time_cap,
            rate=rate,
        )
        self._next_seq += count
        return await self._pool.run(spec)

    async def warm_up(self, url: str) -> None:
        """Connections made, caches filled and code paths run once before anything is timed."""
        await self.load(url, self.sizes.warmup, concurrency=8)


class ReceiverControl:
    """The receiver app's ``/control/*`` endpoints."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.hook_url = base_url + "/hook"

    async def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.base_url + path, json=body) as answer,
        ):
            answer.raise_for_status()
            data: dict[str, Any] = await answer.json()
            return data

    async def set_up(self, up: bool) -> dict[str, Any]:
        return await self._call("POST", "/control/state", {"up": up})

    async def stats(self) -> dict[str, Any]:
        return await self._call("GET", "/control/stats")

    async def reset(self) -> dict[str, Any]:
        return await self._call("POST", "/control/reset")

    async def arrivals(self) -> dict[int, float]:
        data = await self._call("GET", "/control/arrivals")
        return {int(seq): at for seq, at in data["arrivals"]}

    async def wait_for(self, count: int, within: float, poll: float = 0.1) -> dict[str, Any]:
        """Stats once ``count`` distinct events arrived, or when ``within`` seconds ran out."""
        deadline = time.monotonic() + within
        stats = await self.stats()
        while stats["received"] < count and time.monotonic() < deadline:
            await asyncio.sleep(poll)
            stats = await self.stats()
        return stats
