"""Running `relay serve` as a real subprocess, for crash and shutdown tests."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RelayProcess:
    """`python -m relay serve -c CONFIG`, with its output in a log file for post-mortems."""

    def __init__(self, config: Path, port: int) -> None:
        self.config = config
        self.port = port
        self.log = config.parent / "relay.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = await asyncio.to_thread(self._spawn)
        await self._wait_until_up()

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "HTTP_PROXY": "", "HTTPS_PROXY": ""}
        with self.log.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "relay", "serve", "-c", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip

    async def _wait_until_up(self) -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(f"{self.url}/healthz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
                await asyncio.sleep(0.05)
        raise AssertionError(f"relay did not start:\n{self.log.read_text()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, limit: float = 30.0) -> int:
        """The exit code, waiting at most ``limit`` seconds (a guard, not a measurement)."""
        assert self.proc is not None
        code = await asyncio.to_thread(self.proc.wait, limit)
        self.proc = None
        return code

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            await self.wait()
