"""Start: seconds from spawning ``relay serve`` to its first 200 on ``GET /healthz``.

Bytecode is cached as in an installed relay (a first, untimed start writes it). Also times the
interpreter alone and the relay's imports alone, so a miss can be attributed.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Any

from bench.harness import Bench
from bench.procs import child_env, wait_ready, webhook_sink
from bench.report import row

# Nothing listens there and nothing is sent: a config needs a sink, this run needs no traffic.
UNUSED_SINK = webhook_sink("http://127.0.0.1:9/hook")


async def run(bench: Bench) -> dict[str, Any]:
    runs = bench.sizes.start_runs
    await _ready(bench, "start-untimed")
    ready = [await _ready(bench, f"start-{i}") for i in range(runs)]
    metrics = {
        "ready_median_s": round(statistics.median(ready), 4),
        "ready_min_s": round(min(ready), 4),
        "ready_max_s": round(max(ready), 4),
        "python_bare_s": round(_median_time(bench, ["-c", "pass"]), 4),
        "python_import_relay_s": round(_median_time(bench, ["-c", "import relay.cli"]), 4),
        "runs": runs,
    }
    median_ms, max_ms = metrics["ready_median_s"] * 1000, metrics["ready_max_s"] * 1000
    rows = [row(f"ready (median of {runs})", p50_ms=round(median_ms, 1), max_ms=round(max_ms, 1))]
    return {"metrics": metrics, "rows": rows, "series": {"ready_s": [round(r, 4) for r in ready]}}


async def _ready(bench: Bench, name: str) -> float:
    relay = bench.spawn_relay(bench.folder(name), UNUSED_SINK)
    try:
        return await wait_ready(relay)
    finally:
        await relay.stop()


def _median_time(bench: Bench, args: list[str]) -> float:
    env = child_env(bench.relay_source)  # the same as the relay's runs
    times = []
    for _ in range(bench.sizes.start_runs):
        began = time.monotonic()
        # In the scratch folder: "-c" imports from the working folder before PYTHONPATH.
        argv = [sys.executable, *args]
        subprocess.run(argv, check=True, timeout=30, env=env, cwd=bench.workdir)  # noqa: S603
        times.append(time.monotonic() - began)
    return statistics.median(times)
