"""The benchmark harness runs end to end in its smoke mode (sizes tiny; no timing is asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = {"start", "ingest", "latency", "backlog", "naive"}


def _numbers(metrics: dict[str, object]) -> bool:
    return all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in metrics.values()
    )


def test_smoke_run_measures_every_scenario(tmp_path):
    """`python -m bench.run --smoke` exits 0 and writes a number for every metric of every
    scenario."""
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=55,  # under the suite's 60 s per-test limit, so a hang fails with its output
    )
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    scenarios = results["scenarios"]
    assert set(scenarios) == SCENARIOS
    for name, outcome in scenarios.items():
        assert "error" not in outcome, f"{name}: {outcome.get('error')}"
        assert outcome["metrics"], name
        assert _numbers(outcome["metrics"]), f"{name}: {outcome['metrics']}"
    assert {t["target"].split(":")[0] for t in results["targets"]} == SCENARIOS
