"""Start: seconds from spawning ``relay serve`` to its first 200 on ``GET /healthz``.

Also times the interpreter alone and the relay's imports alone, so a miss can be attributed.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Any

from bench.harness import Bench
from bench.procs import spawn_relay, wait_ready, webhook_sink
from bench.report import row

# Nothing listens there and nothing is sent: a config needs a sink, this run needs no traffic.
UNUSED_SINK = webhook_sink("http://127.0.0.1:9/hook")


async def run(bench: Bench) -> dict[str, Any]:
    ready = []
    for i in range(bench.sizes.start_runs):
        relay = spawn_relay(bench.folder(f"start-{i}"), UNUSED_SINK)
        try:
            ready.append(await wait_ready(relay))
        finally:
            await relay.stop()
    runs = bench.sizes.start_runs
    return {
        "metrics": {
            "ready_median_s": round(statistics.median(ready), 4),
            "ready_min_s": round(min(ready), 4),
            "ready_max_s": round(max(ready), 4),
            "python_bare_s": round(_median_time([sys.executable, "-c", "pass"], runs), 4),
            "python_import_relay_s": round(
                _median_time([sys.executable, "-c", "import relay.cli"], runs), 4
            ),
            "runs": runs,
        },
        "rows": [
            row(
                f"ready (median of {runs})",
                p50_ms=round(statistics.median(ready) * 1000, 1),
                max_ms=round(max(ready) * 1000, 1),
            )
        ],
        "series": {"ready_s": [round(r, 4) for r in ready]},
    }


def _median_time(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        began = time.monotonic()
        subprocess.run(argv, check=True, timeout=30)  # noqa: S603 - our own interpreter
        times.append(time.monotonic() - began)
    return statistics.median(times)
