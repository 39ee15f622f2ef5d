"""Test helpers: the shared vectors, config files written to tmp_path, a running relay."""

from __future__ import annotations

import asyncio
import inspect
import json
import textwrap
from pathlib import Path
from typing import Any

# A verbatim copy of shared/vectors (made with the sender's npm library): a clone is complete.
VECTORS_PATH = Path(__file__).resolve().parent / "vectors" / "dataslayer-fernet.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
SECRET: str = VECTORS["secret"]
BY_NAME: dict[str, dict[str, Any]] = {v["name"]: v for v in VECTORS["vectors"]}
VECTOR_NOW = BY_NAME["basic"]["timestamp"] + 5


def write_config(tmp_path: Path, body: str, secret: str = SECRET) -> Path:
    """A config file with the vectors' secret and ``body`` (dedented) appended."""
    path = tmp_path / "config.toml"
    head = f'[dataslayer]\nsecret = "{secret}"\n'
    path.write_text(head + textwrap.dedent(body), encoding="utf-8")
    return path


async def eventually(condition, *, attempts: int = 1000, step: float = 0.01) -> None:
    """Wait until ``condition()`` (sync or async) is true; fail after ``attempts`` looks."""
    for _ in range(attempts):
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(step)
    raise AssertionError(f"condition never became true: {condition}")
