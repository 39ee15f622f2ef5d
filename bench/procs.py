"""Starting, watching and stopping the processes of a benchmark: the relay and the small apps.

Every child is stopped with SIGTERM, then SIGKILL if it lingers, and (on Linux) gets SIGTERM too
if the harness itself dies, so an interrupted run leaves nothing listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.load import LoadResult, LoadSpec, run_load

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
SECRET = "bench-secret-0123456789abcdefghi"  # noqa: S105 - 32 characters, a benchmark's own
RELAY_PATH = "/webhooks/dataslayer"
MAX_BODY = 1 << 20
READY_TIMEOUT = 15.0  # seconds for a child to answer /healthz
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Not Linux (no prctl): children are still stopped on every normal exit path.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def child_env(relay_source: Path | None = None) -> dict[str, str]:
    """The environment of every child: no proxies, the repository importable (the relay from
    ``relay_source`` when given: a folder holding ``relay/``), bytecode kept."""
    env = dict(os.environ)
    # With PYTHONDONTWRITEBYTECODE set (as in some sandboxes), an editable relay would compile
    # its modules from source at every start, which an installed relay never does.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # The relay's HTTP client honours proxy variables; benchmark traffic stays on 127.0.0.1.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        env.pop(name, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    # Ahead of the editable install's finder, so a source tree given here wins.
    paths = [str(relay_source) if relay_source else "", str(REPO), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    return env


@dataclass
class Child:
    """A running server process with its log file; ``url`` is its base URL."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    spawned_at: float

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])

    async def stop(self) -> int:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                print(
                    f"{self.name} ignored SIGTERM for {STOP_TIMEOUT:g} s; killed", file=sys.stderr
                )
        return self.proc.wait()


def spawn(
    name: str, argv: list[str], port: int, workdir: Path, relay_source: Path | None = None
) -> Child:
    """``python ARGV`` in ``workdir``, its output in ``NAME.log`` there."""
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        spawned_at = time.monotonic()
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            [sys.executable, *argv],
            cwd=workdir,
            env=child_env(relay_source),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    return Child(name, proc, port, log, spawned_at)


async def wait_ready(child: Child, within: float = READY_TIMEOUT) -> float:
    """Poll ``GET /healthz`` until it answers 200; seconds since the child was spawned."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                break
            try:
                async with session.get(child.url + "/healthz") as answer:
                    if answer.status == 200:
                        return time.monotonic() - child.spawned_at
            except aiohttp.ClientError:
                pass  # not listening yet
            await asyncio.sleep(0.002)
    await child.stop()
    raise RuntimeError(f"{child.name} did not become ready:\n{child.log_tail()}")


def spawn_app(kind: str, workdir: Path, *args: str) -> Child:
    """``python -m bench.apps KIND`` on a free port (not waited for: see ``running``)."""
    port = free_port()
    argv = ["-m", "bench.apps", kind, "--port", str(port), *args]
    return spawn(kind, argv, port, workdir)


async def running(stack: AsyncExitStack, *children: Child) -> None:
    """Wait until every child answers (concurrently: spawns are slow); ``stack`` stops them."""
    for child in children:
        stack.push_async_callback(child.stop)
    await asyncio.gather(*(wait_ready(child) for child in children))


# -- the relay ---------------------------------------------------------------------------------


def relay_config(workdir: Path, port: int, sink: str) -> Path:
    """A benchmark config: one sink (TOML ``[sinks.NAME]`` body given), routed everything."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            [server]
            host = "{HOST}"
            port = {port}
            path = "{RELAY_PATH}"
            max_body_bytes = {MAX_BODY}

            [dataslayer]
            secret = "{SECRET}"

            [storage]
            path = "relay.db"

            # Short backoffs and many attempts: a receiver that is down for a whole backlog run
            # must not make deliveries dead, and must be retried soon after it is back (the
            # sink's circuit breaker pauses it for at most max_backoff, too).
            [delivery]
            max_attempts = 1000
            initial_backoff = 0.05
            max_backoff = 0.25
            timeout = 10

            [sinks.bench]
            """
        )
        + textwrap.dedent(sink)
        + '\n[fallback]\nsinks = ["bench"]\n',
        encoding="utf-8",
    )
    return path


def webhook_sink(url: str) -> str:
    return f'type = "webhook"\nurl = "{url}"\n'


def slack_sink(url: str) -> str:
    return f'type = "slack"\nwebhook_url = "{url}"\n'


def spawn_relay(workdir: Path, sink: str, source: Path | None = None) -> Child:
    """``python -m relay serve`` with a benchmark config (not waited for: see ``running``)."""
    port = free_port()
    config = relay_config(workdir, port, sink)
    argv = ["-m", "relay", "serve", "-c", str(config)]
    return spawn("relay", argv, port, workdir, source)


def relay_url(relay: Child) -> str:
    return relay.url + RELAY_PATH


# -- memory ------------------------------------------------------------------------------------


def proc_status_kb(pid: int, key: str) -> int | None:
    """``VmRSS``, ``VmHWM``, ... of a process, in kB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds while running (an asyncio task)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []  # (monotonic, kB)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while (kb := proc_status_kb(self.pid, "VmRSS")) is not None:
            self.samples.append((time.monotonic(), kb))
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def peak_kb(self) -> int:
        return max((kb for _, kb in self.samples), default=0)


# -- the load generator ------------------------------------------------------------------------


class LoadPool:
    """One long-lived process for the load generator (spawned, so it shares nothing with us)."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
        # Start the process (and its imports) now, while the first servers start up.
        self._pool.submit(int)

    async def run(self, spec: LoadSpec) -> LoadResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, run_load, spec)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
