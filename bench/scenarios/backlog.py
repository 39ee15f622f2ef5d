"""Backlog: events accepted while the receiver is down, then drained once it is back.

The relay's RSS is sampled every 100 ms from its spawn to the end of the drain; VmHWM (the
kernel's own peak) is read before it stops, so a spike between samples is not missed.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from bench.harness import Bench
from bench.procs import (
    RssSampler,
    proc_status_kb,
    relay_url,
    running,
    webhook_sink,
)
from bench.report import row


async def run(bench: Bench) -> dict[str, Any]:
    s = bench.sizes
    folder = bench.folder("backlog")
    async with AsyncExitStack() as stack:
        receiver = await bench.receiver()
        await receiver.set_up(False)
        relay = bench.spawn_relay(folder, webhook_sink(receiver.hook_url))
        sampler = RssSampler(relay.pid).start()
        stack.push_async_callback(sampler.stop)
        await running(stack, relay)
        accept = await bench.load(relay_url(relay), s.backlog_events, s.backlog_concurrency)
        accepted = accept.ok - accept.duplicates
        before = await receiver.set_up(True)
        after = await receiver.wait_for(accepted, s.drain_cap)
        hwm_kb = proc_status_kb(relay.pid, "VmHWM") or 0
        await sampler.stop()
    drain_s = (after["last_arrival"] or after["up_at"]) - after["up_at"]
    metrics = {
        "events": s.backlog_events,
        "accepted": accepted,
        "accept_events_per_s": round(accepted / accept.wall, 1),
        "attempts_refused_while_down": before["refused"],
        "drained": after["received"],
        "complete": int(after["received"] >= accepted),
        "drain_seconds": round(drain_s, 3),
        "drain_per_s": round(after["received"] / drain_s, 1) if drain_s > 0 else 0.0,
        "rss_sampled_peak_mb": round(sampler.peak_kb / 1024, 1),
        "vmhwm_mb": round(hwm_kb / 1024, 1),
        "peak_rss_mb": round(max(sampler.peak_kb, hwm_kb) / 1024, 1),
    }
    start = relay.spawned_at
    series = {
        "rss_t_s": [round(t - start, 2) for t, _ in sampler.samples],
        "rss_mb": [round(kb / 1024, 1) for _, kb in sampler.samples],
        "accept_end_s": round(accept.finished - start, 2),
        "up_at_s": round(after["up_at"] - start, 2),
    }
    rows = [
        row(f"accept {accepted:,} (sink down)", metrics["accept_events_per_s"]),
        row(f"drain {after['received']:,}", metrics["drain_per_s"], rss_mb=metrics["peak_rss_mb"]),
    ]
    return {"metrics": metrics, "rows": rows, "series": series}
