"""``python -m bench.profile [--phase ingest|drain|all]``: where the relay's time goes.

Runs the relay as in the benchmark, samples it with py-spy (``pip install py-spy``, part of the
``bench`` extra) during a closed-loop ingest and during a backlog drain, and attributes every
sample to a step of the hot path: the innermost relay frame decides (so aiohttp's client code
under the webhook sink counts as "send"), logging anywhere in the stack counts as logging, and a
thread blocked in select or on its work queue counts as idle. Prints, per thread, the share of
wall time in each step. Also prints ``-X importtime``'s largest imports, for start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import linecache
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from bench.harness import QUICK, Bench, ReceiverControl
from bench.procs import (
    REPO,
    Child,
    child_env,
    relay_url,
    running,
    spawn_app,
    webhook_sink,
)

RATE_HZ = 250
DRAIN_SAMPLE_SECONDS = 60.0  # a large backlog is sampled for this long, not drained whole
PY_SPY_EXIT_TIMEOUT = 60.0

# (module, function names or None for any, step): the first matching rule wins. Function names
# cover both the old (server.py) and the new (inbound.py) layout of the HTTP handler.
_BODY = frozenset({"_read_body", "_token_from", "_token_from_json", "_token_from_form"})
_CLAIM = frozenset({"_due", "_due_from_row", "_next_due_at"})
RELAY_RULES: tuple[tuple[str, frozenset[str] | None, str], ...] = (
    ("relay/inbound.py", _BODY, "body read + parse"),
    ("relay/server.py", _BODY | {"handle_webhook"}, "body read + parse"),
    ("relay/inbound.py", frozenset({"answer"}), "answer (JSON response)"),
    ("relay/server.py", frozenset({"answer"}), "answer (JSON response)"),
    ("relay/guard.py", None, "guard (client address, limits)"),
    ("relay/crypto.py", None, "decrypt (Fernet)"),
    ("relay/events.py", None, "event parse + id"),
    ("relay/routing.py", None, "route"),
    ("relay/outbox", frozenset({"_accept_one", "_accept_batch"}), "insert"),
    ("relay/outbox", _CLAIM, "worker claim (SQL)"),
    ("relay/outbox", frozenset({"_active_by_sink", "_next_due_by_sink"}), "worker next-due (SQL)"),
    ("relay/outbox", frozenset({"_record"}), "record outcome (SQL)"),
    (
        "relay/outbox",
        frozenset({"accept", "_flush", "_write", "_write_batch"}),
        "group-commit glue",
    ),
    ("relay/outbox", None, "outbox thread hand-off"),
    ("relay/render", None, "render (Jinja)"),
    ("relay/sinks/", None, "send (sink + aiohttp client)"),
    ("relay/worker.py", None, "worker loop"),
    ("relay/pacing.py", None, "worker loop"),
    ("relay/metrics.py", None, "metrics"),
)
# Frames every stack of the relay passes through: they say nothing about the step.
ENTRY_MODULES = ("relay/cli.py", "relay/__main__.py")
# Where a thread waits: the event loop in select(), a pool thread for work, a lock or event.
IDLE_FRAMES = frozenset(
    {
        ("select", "selectors.py"),
        ("_worker", "concurrent/futures/thread.py"),
        ("wait", "threading.py"),
    }
)


def classify(frames: list[str], root: Path = REPO) -> str:
    """The hot-path step one sampled stack (outermost first) belongs to.

    The innermost relay frame decides: a rule names its step; a relay frame no rule names is
    "other relay code" unless it is only waiting on aiohttp or asyncio code under it.
    """
    if any("(logging/" in f or "relay/logs.py" in f for f in frames):
        return "logging"
    if frames and _is_idle(frames[-1]):
        return "idle"
    index = _innermost_relay_frame(frames)
    if index is not None:
        step = _relay_step(frames[index], root)
        if step:
            return step
    below = frames[index + 1 :] if index is not None else frames
    if any(
        "aiohttp/web_" in f or "aiohttp/http" in f or "aiohttp/base_protocol" in f for f in below
    ):
        return "aiohttp HTTP protocol (in and out)"
    if any("asyncio/" in f for f in below):
        return "event loop"
    if index is not None:
        path = _parse(frames[index])[1]
        return f"other relay code ({path[path.index('relay/') :]})"
    return "other"


def _innermost_relay_frame(frames: list[str]) -> int | None:
    for index in range(len(frames) - 1, -1, -1):
        path = _parse(frames[index])[1]
        if "relay/" in path and not path.endswith(ENTRY_MODULES):
            return index
    return None


def _parse(frame: str) -> tuple[str, str, int]:
    """``Class.function (path/file.py:123)`` -> (function, path, line)."""
    function, _, location = frame.rpartition(" (")
    path, _, line = location.rstrip(")").rpartition(":")
    return function.rpartition(".")[2], path, int(line) if line.isdigit() else 0


def _is_idle(frame: str) -> bool:
    name, path, _ = _parse(frame)
    return any(name == n and path.endswith(p) for n, p in IDLE_FRAMES)


def _relay_step(frame: str, root: Path) -> str | None:
    name, path, line = _parse(frame)
    if "relay/outbox" in path:
        # Which statement a transaction helper is in says more than its name.
        text = linecache.getline(str(root / path), line)
        if "COMMIT" in text:
            return "commit (fsync)"
        if "BEGIN" in text:
            return "begin (write lock)"
    for fragment, names, step in RELAY_RULES:
        if fragment in path and (names is None or name in names):
            return step
    return None


def thread_role(head: str) -> str:
    name = head.partition(": ")[2]
    if name == "MainThread":
        return "event loop thread"
    if name.startswith("outbox"):
        return "outbox (SQLite) thread"
    return "other threads"


def summarise(raw: Iterable[str], root: Path = REPO) -> dict[str, collections.Counter[str]]:
    """Samples per step, per thread role, from py-spy's ``raw`` (collapsed stacks) output."""
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw:
        stack, _, n = line.rstrip().rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        head = next((f for f in frames if f.startswith("thread (")), "")
        frames = frames[frames.index(head) + 1 :] if head else frames
        counts[thread_role(head)][classify(frames, root)] += int(n)
    return counts


def render(title: str, counts: dict[str, collections.Counter[str]]) -> str:
    roles = [r for r in ("event loop thread", "outbox (SQLite) thread") if r in counts]
    steps = sorted(
        {s for r in roles for s in counts[r]},
        key=lambda s: (s == "idle", -sum(counts[r][s] for r in roles)),
    )
    lines = [title, f"{'step':34}" + "".join(f"{r:>26}" for r in roles)]
    for step in steps:
        cells = "".join(
            f"{100 * counts[r][step] / max(1, sum(counts[r].values())):25.1f}%" for r in roles
        )
        lines.append(f"{step:34}{cells}")
    return "\n".join(lines)


# -- running it --------------------------------------------------------------------------------


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start_sampling(binary: str, pid: int, out: Path) -> subprocess.Popen[bytes]:
    argv = [binary, "record", "--pid", str(pid), "--format", "raw", "--threads", "--idle",
            "--rate", str(RATE_HZ), "--output", str(out)]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603


def stop_sampling(proc: subprocess.Popen[bytes]) -> None:
    """py-spy writes its output when interrupted, as after Ctrl-C."""
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=PY_SPY_EXIT_TIMEOUT)


async def profile_phase(bench: Bench, binary: str, phase: str, events: int, keep: Path) -> str:
    folder = bench.folder(f"profile-{phase}")
    out = keep / f"py-spy-{phase}.txt"
    async with AsyncExitStack() as stack:
        receiver_app = spawn_app("receiver", folder)
        receiver = ReceiverControl(receiver_app.url)
        relay = bench.spawn_relay(folder, webhook_sink(receiver.hook_url))
        await running(stack, receiver_app, relay)
        await bench.warm_up(relay_url(relay))
        # Counted from zero: the warm-up's deliveries are not part of what is measured.
        await receiver.wait_for(bench.sizes.warmup, DRAIN_SAMPLE_SECONDS)
        await receiver.reset()
        what = await (_ingest if phase == "ingest" else _drain)(
            bench, binary, relay, receiver, events, out
        )
    with out.open(encoding="utf-8") as raw:
        return render(f"\n== {phase}: {what} ==", summarise(raw, bench.relay_source or REPO))


async def _ingest(
    bench: Bench, binary: str, relay: Child, receiver: ReceiverControl, events: int, out: Path
) -> str:
    # As in the ingest scenario's ratio rounds: the receiver is down, so the sink's breaker keeps
    # the worker nearly idle and the samples are about the ingest path.
    await receiver.set_up(False)
    spy = start_sampling(binary, relay.pid, out)
    result = await bench.load(relay_url(relay), events, bench.sizes.ingest_concurrency)
    stop_sampling(spy)
    return (
        f"{result.ok:,} events in {result.wall:.1f} s, {bench.sizes.ingest_concurrency} concurrent"
    )


async def _drain(
    bench: Bench, binary: str, relay: Child, receiver: ReceiverControl, events: int, out: Path
) -> str:
    await receiver.set_up(False)
    accepted = await bench.load(relay_url(relay), events, bench.sizes.backlog_concurrency)
    spy = start_sampling(binary, relay.pid, out)
    await receiver.set_up(True)
    stats = await receiver.wait_for(accepted.ok, DRAIN_SAMPLE_SECONDS)
    stop_sampling(spy)
    seconds = stats["last_arrival"] - stats["up_at"]
    return f"{stats['received']:,} of a {accepted.ok:,}-event backlog delivered in {seconds:.1f} s"


def import_times(relay_source: Path | None, top: int = 12) -> str:
    """The slowest imports of ``relay.cli`` by ``-X importtime`` (cumulative), bytecode cached
    as in an installed relay (a first, untimed import writes it)."""
    argv = [sys.executable, "-X", "importtime", "-c", "import relay.cli"]
    for _ in range(2):
        run = subprocess.run(  # noqa: S603 - our own interpreter
            argv,
            capture_output=True,
            text=True,
            check=True,
            cwd=relay_source or REPO,  # "-c" imports from the working folder first
            timeout=60,
            env=child_env(relay_source),
        )
    rows = []
    for line in run.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    total = next((us for us, name in rows if name.strip() == "relay.cli"), 0)
    lines = [f"\n== start-up: importing relay.cli took {total / 1e6:.3f} s; largest imports =="]
    for us, name in sorted(rows, reverse=True)[1 : top + 1]:
        lines.append(f"{us / 1e3:9.1f} ms  {name}")
    return "\n".join(lines)


async def main_async(
    phases: list[str], sizes: dict[str, int], keep: Path | None, bench_args: tuple[Any, ...]
) -> int:
    binary = py_spy()
    if binary is None:
        print("py-spy is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="relay-profile-") as tmp:
        async with Bench(QUICK, Path(tmp), *bench_args) as bench:
            for phase in phases:
                samples = keep or Path(tmp)
                report = await profile_phase(bench, binary, phase, sizes[phase], samples)
                print(report, flush=True)
    print(import_times(bench_args[0]))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--phase", choices=("ingest", "drain", "all"), default="all")
    parser.add_argument(
        "--events", type=int, default=10_000, help="events sent while sampling ingest"
    )
    parser.add_argument(
        "--backlog", type=int, default=30_000, help="events accepted before sampling the drain"
    )
    parser.add_argument("--keep", type=Path, help="keep py-spy's raw samples in this folder")
    parser.add_argument("--relay-src", type=Path, help="as for bench.run")
    parser.add_argument("--sink-setting", action="append", default=[], help="as for bench.run")
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        print("note: py-spy may need root (or ptrace permission) to attach", file=sys.stderr)
    phases = ["ingest", "drain"] if args.phase == "all" else [args.phase]
    sizes = {"ingest": args.events, "drain": args.backlog}
    source = args.relay_src.resolve() if args.relay_src else None
    bench_args = (source, tuple(args.sink_setting))
    return asyncio.run(main_async(phases, sizes, args.keep, bench_args))


if __name__ == "__main__":
    sys.exit(main())
