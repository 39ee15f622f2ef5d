"""``python -m bench.run [--quick | --smoke] [--only ingest,latency,...] [--out DIR]``.

Runs the scenarios of issue 7 against ``relay serve`` started as a subprocess, prints a table,
and writes ``results.json`` and (with matplotlib) ``latency.png`` to ``--out``
(default ``bench/results``). See docs/performance.md for the method and the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench import plot, report
from bench.harness import FULL, QUICK, SMOKE, Bench, Sizes
from bench.scenarios import SCENARIOS

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[2])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller runs (a few minutes)")
    size.add_argument("--smoke", action="store_true", help="tiny runs that prove the harness works")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results go")
    parser.add_argument(
        "--relay-src",
        type=Path,
        help="run the relay from this folder (holding relay/), e.g. another commit's"
        " `git archive`; default: this checkout",
    )
    parser.add_argument(
        "--sink-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a TOML line added to the relay's sink, e.g. concurrency=32 (repeatable)",
    )
    return parser


def _selected(only: str | None) -> list[str]:
    if not only:
        return list(SCENARIOS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(
            f"unknown scenario(s): {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    return [n for n in SCENARIOS if n in names]


def _mode(args: argparse.Namespace) -> tuple[str, Sizes]:
    if args.smoke:
        return "smoke", SMOKE
    if args.quick:
        return "quick", QUICK
    return "full", FULL


async def _run_all(names: list[str], bench: Bench) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    async with bench:
        for name in names:
            began = time.monotonic()
            print(f"running {name} ...", file=sys.stderr, flush=True)
            try:
                results[name] = await SCENARIOS[name](bench)
            except Exception as exc:  # one broken scenario must not hide the others' numbers
                traceback.print_exc()
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            results[name]["seconds"] = round(time.monotonic() - began, 2)
    return results


def _rounded(values: tuple[float, ...]) -> list[float]:
    return [round(v, 2) for v in values]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = _selected(args.only)
    mode, sizes = _mode(args)
    args.out.mkdir(parents=True, exist_ok=True)
    source = args.relay_src.resolve() if args.relay_src else None
    # Taken before the run: the checkout may change while it runs.
    revision = str(source) if source else report.revision()
    began, load_before = time.monotonic(), os.getloadavg()
    settings = tuple(args.sink_setting)
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        bench = Bench(sizes, Path(tmp), source, settings)
        results = asyncio.run(_run_all(names, bench))
    document = {
        "mode": mode,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.monotonic() - began, 1),
        "relay": revision,
        "sink_settings": list(settings),
        "machine": report.machine(),
        # Other work on the machine skews every number: worth a look before trusting a run.
        "loadavg_before": _rounded(load_before),
        "loadavg_after": _rounded(os.getloadavg()),
        "sizes": dataclasses.asdict(sizes),
        "targets": report.verdicts(results),
        "scenarios": results,
    }
    report.write_json(args.out / "results.json", document)
    print(report.table(results))
    print(f"\nwrote {args.out / 'results.json'}")
    print(plot.plot(results, args.out / "latency.png"))
    failed = [name for name, r in results.items() if "error" in r]
    if failed:
        print(f"scenarios that failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
