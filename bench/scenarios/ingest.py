"""Ingest: accepted events/s with durable storage vs a bare aiohttp handler, side by side.

Both servers get the same closed-loop load (same concurrency, same number of requests) in
alternating rounds, so drift on a shared machine hits both alike; the medians are compared.
The relay's receiver is down during those rounds: its sink's circuit breaker then keeps the
worker nearly idle, so the ratio measures the ingest path (decrypt, store, commit) and the bare
rounds never compete with deliveries left over from a relay round. One more relay round with the
receiver up shows what concurrent deliveries cost.
"""

from __future__ import annotations

import statistics
from contextlib import AsyncExitStack
from typing import Any

from bench.harness import Bench
from bench.load import LoadResult
from bench.procs import (
    MAX_BODY,
    RELAY_PATH,
    RssSampler,
    relay_url,
    running,
    spawn_app,
    webhook_sink,
)
from bench.report import row
from bench.stats import latency_ms


async def run(bench: Bench) -> dict[str, Any]:
    s = bench.sizes
    folder = bench.folder("ingest")
    async with AsyncExitStack() as stack:
        receiver = await bench.receiver()
        await receiver.set_up(False)
        relay = bench.spawn_relay(folder, webhook_sink(receiver.hook_url))
        bare = spawn_app("bare", folder, "--path", RELAY_PATH, "--max-body", str(MAX_BODY))
        await running(stack, relay, bare)
        sampler = RssSampler(relay.pid).start()
        stack.push_async_callback(sampler.stop)
        targets = {"bare": bare.url + RELAY_PATH, "relay": relay_url(relay)}
        runs = await _rounds(bench, targets)
        await receiver.set_up(True)
        delivering = await bench.load(targets["relay"], s.ingest_requests, s.ingest_concurrency)
    return _summarise(bench, runs, delivering, sampler.peak_kb)


async def _rounds(bench: Bench, targets: dict[str, str]) -> dict[str, list[LoadResult]]:
    s = bench.sizes
    for url in targets.values():
        await bench.warm_up(url)
    runs: dict[str, list[LoadResult]] = {name: [] for name in targets}
    for _ in range(s.ingest_rounds):
        for name, url in targets.items():
            runs[name].append(await bench.load(url, s.ingest_requests, s.ingest_concurrency))
    return runs


def _rate(result: LoadResult) -> float:
    """Accepted (200, not a duplicate) requests per second of the run."""
    return (result.ok - result.duplicates) / result.wall


def _summarise(
    bench: Bench, runs: dict[str, list[LoadResult]], delivering: LoadResult, rss_kb: int
) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for name, results in runs.items():
        latencies = [x for r in results for x in r.latency]
        metrics[f"{name}_events_per_s"] = round(statistics.median(map(_rate, results)), 1)
        metrics[f"{name}_failed"] = sum(len(r.status) - r.ok for r in results)
        # Near 1.0 means the generator, not the server, set the pace of that run.
        metrics[f"{name}_generator_cpu"] = round(max(r.cpu_seconds / r.wall for r in results), 3)
        metrics.update({f"{name}_answer_{k}": v for k, v in latency_ms(latencies).items()})
    metrics["ratio"] = round(metrics["relay_events_per_s"] / metrics["bare_events_per_s"], 3)
    metrics["relay_duplicates"] = sum(r.duplicates for r in runs["relay"])
    metrics["delivering_events_per_s"] = round(_rate(delivering), 1)
    metrics["delivering_ratio"] = round(
        metrics["delivering_events_per_s"] / metrics["bare_events_per_s"], 3
    )
    delivering_answer = latency_ms(delivering.latency)
    metrics.update({f"delivering_answer_{k}": v for k, v in delivering_answer.items()})
    metrics["relay_peak_rss_mb"] = round(rss_kb / 1024, 1)
    metrics["requests_per_round"] = bench.sizes.ingest_requests
    metrics["rounds"] = bench.sizes.ingest_rounds
    metrics["concurrency"] = bench.sizes.ingest_concurrency
    rows = [
        _row(metrics, "bare", "bare handler"),
        _row(metrics, "relay", "relay, durable"),
        _row(metrics, "delivering", "relay, + deliveries", rss_mb=metrics["relay_peak_rss_mb"]),
    ]
    rounds = {name: [round(_rate(r), 1) for r in results] for name, results in runs.items()}
    return {"metrics": metrics, "rows": rows, "series": {"events_per_s_by_round": rounds}}


def _row(metrics: dict[str, Any], name: str, what: str, **extra: float) -> dict[str, Any]:
    answer = {k: metrics[f"{name}_answer_{k}"] for k in ("p50_ms", "p99_ms", "max_ms")}
    return row(what, metrics[f"{name}_events_per_s"], **answer, **extra)
