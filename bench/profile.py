"""``python -m bench.profile [--phase ingest|drain|all] [--events N]``: where the relay's time goes.

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

from bench.harness import QUICK, Bench, ReceiverControl
from bench.procs import REPO, Child, relay_url, running, spawn_app, spawn_relay, webhook_sink

RATE_HZ = 250
PY_SPY_EXIT_TIMEOUT = 60.0

# (module, function names or None for any, step): the first matching rule wins. Function names
# cover both the old (server.py) and the new (inbound.py) layout of the HTTP handler.
_BODY = frozenset({"_read_body", "_token_from", "_token_from_json", "_token_from_form"})
_CLAIM = frozenset({"_due", "_due_from_row", "_active_by_sink", "_next_due_at"})
RELAY_RULES: tuple[tuple[str, frozenset[str] | None, str], ...] = (
    ("relay/inbound.py", _BODY, "body read + parse"),
    ("relay/server.py", _BODY | {"handle_webhook"}, "body read + parse"),
    ("relay/inbound.py", frozenset({"answer"}), "answer (JSON response)"),
    ("relay/server.py", frozenset({"answer"}), "answer (JSON response)"),
    ("relay/guard.py", None, "guard (client address, limits)"),
    ("relay/crypto.py", None, "decrypt (Fernet)"),
    ("relay/events.py", None, "event parse + id"),
    ("relay/routing.py", None, "route"),
    ("relay/outbox.py", frozenset({"_accept_one"}), "insert"),
    ("relay/outbox.py", _CLAIM, "worker claim (SQL)"),
    ("relay/outbox.py", frozenset({"_record"}), "record outcome (SQL + commit)"),
    ("relay/outbox.py", frozenset({"accept", "_flush"}), "group-commit glue"),
    ("relay/outbox.py", None, "outbox thread hand-off"),
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


def classify(frames: list[str]) -> str:
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
        step = _relay_step(frames[index])
        if step:
            return step
    below = frames[index + 1 :] if index is not None else frames
    if any(
        "aiohttp/web_" in f or "aiohttp/http" in f or "aiohttp/base_protocol" in f for f in below
    ):
        return "aiohttp server (HTTP in/out)"
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


def _relay_step(frame: str) -> str | None:
    name, path, line = _parse(frame)
    if path.endswith("relay/outbox.py") and name == "_accept_batch":
        text = linecache.getline(str(REPO / path), line)
        return "commit (fsync)" if "COMMIT" in text else "insert"
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


def summarise(raw: Iterable[str]) -> dict[str, collections.Counter[str]]:
    """Samples per step, per thread role, from py-spy's ``raw`` (collapsed stacks) output."""
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw:
        stack, _, n = line.rstrip().rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        head = next((f for f in frames if f.startswith("thread (")), "")
        frames = frames[frames.index(head) + 1 :] if head else frames
        counts[thread_role(head)][classify(frames)] += int(n)
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
        relay = spawn_relay(folder, webhook_sink(receiver.hook_url))
        await running(stack, receiver_app, relay)
        await bench.warm_up(relay_url(relay))
        what = await (_ingest if phase == "ingest" else _drain)(
            bench, binary, relay, receiver, events, out
        )
    with out.open(encoding="utf-8") as raw:
        return render(f"\n== {phase}: {what} ==", summarise(raw))


async def _ingest(
    bench: Bench, binary: str, relay: Child, receiver: ReceiverControl, events: int, out: Path
) -> str:
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
    stats = await receiver.wait_for(accepted.ok, bench.sizes.time_cap)
    stop_sampling(spy)
    seconds = stats["last_arrival"] - stats["up_at"]
    return f"{stats['received']:,} deliveries drained in {seconds:.1f} s"


def import_times(top: int = 12) -> str:
    """The slowest top-level imports of ``relay.cli`` by ``-X importtime`` (cumulative)."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import relay.cli"],
        capture_output=True, text=True, check=True, cwd=REPO, timeout=60,
    )  # fmt: skip
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


async def main_async(phases: list[str], events: int, keep: Path) -> int:
    binary = py_spy()
    if binary is None:
        print("py-spy is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="relay-profile-") as tmp:
        bench = Bench(QUICK, Path(tmp))
        try:
            for phase in phases:
                print(await profile_phase(bench, binary, phase, events, keep), flush=True)
        finally:
            bench.close()
    print(import_times())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--phase", choices=("ingest", "drain", "all"), default="all")
    parser.add_argument("--events", type=int, default=5_000, help="events per phase")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results",
        help="where the raw py-spy samples go",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        print("note: py-spy may need root (or ptrace permission) to attach", file=sys.stderr)
    phases = ["ingest", "drain"] if args.phase == "all" else [args.phase]
    return asyncio.run(main_async(phases, args.events, args.out))


if __name__ == "__main__":
    sys.exit(main())
