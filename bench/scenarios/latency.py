"""Latency: POST to arrival at a local webhook receiver at a steady (open-loop) 200 events/s."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from bench.harness import Bench
from bench.load import LoadResult
from bench.procs import RssSampler, relay_url, running, webhook_sink
from bench.report import row
from bench.stats import latency_ms

MAX_IN_FLIGHT = 256  # connections the open loop may use: far above what 200/s needs
ARRIVAL_GRACE = 120.0  # seconds to wait for the last deliveries after the last answer


async def run(bench: Bench) -> dict[str, Any]:
    s = bench.sizes
    folder = bench.folder("latency")
    async with AsyncExitStack() as stack:
        receiver = await bench.receiver()
        relay = bench.spawn_relay(folder, webhook_sink(receiver.hook_url))
        await running(stack, relay)
        sampler = RssSampler(relay.pid).start()
        stack.push_async_callback(sampler.stop)
        url = relay_url(relay)
        await bench.warm_up(url)
        # The warm-up's deliveries must not queue ahead of the measured ones, nor be counted.
        await receiver.wait_for(bench.sizes.warmup, ARRIVAL_GRACE)
        await receiver.reset()
        count = round(s.latency_rate * s.latency_seconds)
        result = await bench.load(url, count, MAX_IN_FLIGHT, rate=s.latency_rate)
        await receiver.wait_for(result.ok, ARRIVAL_GRACE)
        arrivals = await receiver.arrivals()
    return _summarise(result, arrivals, sampler.peak_kb)


def _summarise(result: LoadResult, arrivals: dict[int, float], rss_kb: int) -> dict[str, Any]:
    samples = [
        (sent - result.started, arrivals[seq] - sent, answer)
        for seq, sent, answer, status in zip(
            result.seqs, result.sent, result.latency, result.status, strict=True
        )
        if status == 200 and seq in arrivals
    ]
    to_arrival = [sample[1] for sample in samples]
    metrics: dict[str, Any] = {
        "sent": len(result.seqs),
        "accepted": result.ok - result.duplicates,
        # Percentiles cover the arrived ones: any missing were the slowest.
        "arrived": len(samples),
        "achieved_rate": round(len(result.seqs) / result.wall, 1),
        "generator_max_lag_ms": round(result.max_lag * 1000, 3),
        "relay_peak_rss_mb": round(rss_kb / 1024, 1),
    }
    metrics.update({f"arrival_{k}": v for k, v in latency_ms(to_arrival).items()})
    metrics.update({f"answer_{k}": v for k, v in latency_ms(result.latency).items()})
    series = {
        "t_s": [round(t, 4) for t, _, _ in samples],
        "arrival_ms": [round(a * 1000, 3) for _, a, _ in samples],
        "answer_ms": [round(b * 1000, 3) for _, _, b in samples],
    }
    rows = [
        _row(metrics, "arrival", "POST -> arrival", rss_mb=metrics["relay_peak_rss_mb"]),
        _row(metrics, "answer", "POST answer"),
    ]
    return {"metrics": metrics, "rows": rows, "series": series}


def _row(metrics: dict[str, Any], name: str, what: str, **extra: float) -> dict[str, Any]:
    values = {k: metrics[f"{name}_{k}"] for k in ("p50_ms", "p99_ms", "max_ms")}
    return row(what, metrics["achieved_rate"], **values, **extra)
