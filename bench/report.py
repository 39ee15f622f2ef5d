"""What a run shows: the table on stdout, ``results.json``, and the latency-over-time plot."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

Results = dict[str, dict[str, Any]]
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Target:
    """One target of issue 7: ``metric`` of ``scenario`` compared with ``limit``."""

    label: str
    scenario: str
    metric: str
    op: str  # "<=", "<" or ">="
    limit: float
    unit: str

    def met(self, value: float) -> bool:
        if self.op == "<=":
            return value <= self.limit
        if self.op == "<":
            return value < self.limit
        return value >= self.limit


TARGETS = (
    Target("ingest: relay / bare handler", "ingest", "ratio", ">=", 0.80, "x"),
    Target("latency: POST->arrival p50", "latency", "arrival_p50_ms", "<=", 5.0, "ms"),
    Target("latency: POST->arrival p99", "latency", "arrival_p99_ms", "<=", 25.0, "ms"),
    Target("backlog: drain rate", "backlog", "drain_per_s", ">=", 2000.0, "/s"),
    Target("backlog: peak RSS", "backlog", "peak_rss_mb", "<", 150.0, "MB"),
    Target("start: ready (median)", "start", "ready_median_s", "<", 0.5, "s"),
    Target("naive: relay answer growth", "naive", "relay_growth", "<=", 2.0, "x"),
    Target("naive: naive answer growth", "naive", "naive_growth", ">=", 2.0, "x"),
)


def verdicts(results: Results) -> list[dict[str, Any]]:
    """Each target that was measured: value, met, and the miss (or margin) in its unit and %."""
    rows = []
    for t in TARGETS:
        value = results.get(t.scenario, {}).get("metrics", {}).get(t.metric)
        if value is None:
            continue
        gap = value - t.limit
        rows.append(
            {
                "target": t.label,
                "measured": value,
                "limit": f"{t.op} {t.limit:g} {t.unit}",
                "met": t.met(value),
                "by": round(gap, 3),
                "by_pct": round(100 * gap / t.limit, 1),
            }
        )
    return rows


def revision() -> str:
    """The relay's git commit, with "+dirty" when the work tree differs from it."""

    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO, timeout=10)  # noqa: S603, S607
        return run.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "relay")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "aiohttp": aiohttp.__version__,
        "sqlite": sqlite3.sqlite_version,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


# -- the table ---------------------------------------------------------------------------------


ROW_KEYS = ("what", "per_s", "p50_ms", "p99_ms", "max_ms", "rss_mb")
ROW_HEADERS = ("what", "events/s", "p50 ms", "p99 ms", "max ms", "peak RSS MB")


def row(what: str, per_s: float | None = None, **values: float | None) -> dict[str, Any]:
    """One line of the table: ``p50_ms``, ``p99_ms``, ``max_ms``, ``rss_mb`` as known."""
    unknown = set(values) - set(ROW_KEYS)
    if unknown:
        raise TypeError(f"unknown row keys: {sorted(unknown)}")
    return {"what": what, "per_s": per_s, **values}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _grid(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table(results: Results) -> str:
    rows = [
        [name, *(row.get(key) for key in ROW_KEYS)]
        for name, result in results.items()
        for row in result.get("rows", [])
    ]
    measured = _grid(["scenario", *ROW_HEADERS], rows)
    checks = _grid(
        ["target", "limit", "measured", "verdict"],
        [[v["target"], v["limit"], v["measured"], _verdict(v)] for v in verdicts(results)],
    )
    return f"{measured}\n\n{checks}"


def _verdict(v: dict[str, Any]) -> str:
    word = "met" if v["met"] else "MISSED"
    return f"{word} (by {abs(v['by']):g}, {abs(v['by_pct']):g}%)"
