"""One module per target of issue 7; each ``run(bench)`` returns ``{"metrics": ..., ...}``.

``metrics`` holds only numbers (the smoke test checks that); ``series`` holds what the plot draws.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bench.harness import Bench
from bench.scenarios import backlog, ingest, latency, naive, start

Scenario = Callable[[Bench], Awaitable[dict[str, Any]]]

# In the order they run: the short ones first, so a broken setup shows up early.
SCENARIOS: dict[str, Scenario] = {
    "start": start.run,
    "ingest": ingest.run,
    "latency": latency.run,
    "backlog": backlog.run,
    "naive": naive.run,
}
