"""What ``relay outbox`` reads from config.toml, leniently: the database, dedup memory, sink names.

The operator's shell may lack the server's secrets, and the config may have a mistake that does
not concern the outbox; neither should stop someone from looking at or repairing the outbox.
Only the keys used here are checked; ``relay check`` validates the rest.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.config_env import expand_env
from relay.config_sections import remembered_for
from relay.crypto import DEFAULT_MAX_CLOCK_SKEW
from relay.errors import ConfigError, Problem

DEFAULT_DB = "relay.db"
DEFAULT_DEDUP_WINDOW = 86400.0


@dataclass(frozen=True)
class OutboxSettings:
    """The database to open, how long purged events are remembered (``dedup_window`` plus
    ``max_clock_skew``, as the server remembers them), and the sinks configured.

    ``sinks`` is None when no config was read, so nothing can be said about them.
    """

    db: Path
    remember_for: float = DEFAULT_DEDUP_WINDOW + DEFAULT_MAX_CLOCK_SKEW
    sinks: frozenset[str] | None = None

    def knows(self, sink: str) -> bool:
        """False only when the config was read and has no sink of that name."""
        return self.sinks is None or sink in self.sinks


def outbox_settings(
    config: Path, environ: Mapping[str, str], *, db: Path | None = None, config_given: bool = True
) -> OutboxSettings:
    """Settings from ``config``; ``db`` overrides ``[storage].path``.

    With ``db`` and no config file (one not named explicitly), the defaults do. Raises
    ConfigError when the file cannot be read or a key used here is wrong.
    """
    if db is not None and not config_given and not config.exists():
        return OutboxSettings(db)
    data, unset = _read(config, environ)
    ds = _table(data, "dataslayer")
    window = remembered_for(
        _seconds(ds, "dedup_window", DEFAULT_DEDUP_WINDOW),
        _seconds(ds, "max_clock_skew", DEFAULT_MAX_CLOCK_SKEW),
    )
    sinks = frozenset(_table(data, "sinks"))
    if db is None:
        db = _db_path(config, _table(data, "storage").get("path", DEFAULT_DB), unset)
    return OutboxSettings(db, window, sinks)


def _read(path: Path, environ: Mapping[str, str]) -> tuple[dict[str, Any], list[Problem]]:
    """The TOML with ``${VARS}`` expanded, and the problems expanding (unset variables...)."""
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8-sig"))  # a BOM is fine, as in serve
    except FileNotFoundError:
        raise _error("", "no such file (give -c FILE, or name the database with --db)") from None
    except OSError as exc:
        raise _error("", f"cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise _error("", f"not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise _error("", "not UTF-8 text") from None
    problems: list[Problem] = []
    return expand_env(raw, environ, problems), problems


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    table = data.get(name)
    return table if isinstance(table, dict) else {}


def _db_path(config: Path, value: Any, unset: list[Problem]) -> Path:
    for problem in unset:
        if problem.path == "storage.path":
            raise _error(problem.path, f"{problem.message} (or name the database with --db)")
    if not isinstance(value, str) or not value:
        raise _error("storage.path", "must name the database file")
    return config.resolve().parent / value


def _seconds(table: dict[str, Any], key: str, default: float) -> float:
    value = table.get(key)
    if value is None:
        return default
    try:
        seconds = float(value) if isinstance(value, int | float | str) else math.nan
    except ValueError:
        seconds = math.nan
    if isinstance(value, bool) or not 0 <= seconds < math.inf:
        raise _error(f"dataslayer.{key}", "must be a number of seconds")
    return seconds


def _error(path: str, message: str) -> ConfigError:
    return ConfigError([Problem(path, message)])
