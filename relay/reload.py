"""Reloading the config while running (SIGHUP), without dropping a request.

The new config and every template are validated first, exactly as ``relay check`` does; a bad
one changes nothing and each problem is logged. A good one swaps, in place, what routing,
verification, rendering and sending use. Sends in flight finish on the old sinks, which are
closed after. What only a restart can change (``[server]``, ``[storage] path``, ``[metrics]``,
``show_personal_data``) is named in a warning.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

import aiohttp
from pydantic import BaseModel

from relay.checks import all_warnings, load_checked
from relay.clock import Clock
from relay.config import Config
from relay.crypto import TokenVerifier
from relay.errors import ConfigError, Problem
from relay.ingest import Ingest
from relay.logs import setup_logging
from relay.metrics import Metrics
from relay.render import Renderer
from relay.routing import Router
from relay.sinks import Sink, SinkContext, build_sinks
from relay.worker import Worker

log = logging.getLogger("relay.reload")

# Keys a reload applies, per section; a change anywhere else waits for a restart.
RELOADABLE: Mapping[str, frozenset[str] | None] = {
    "dataslayer": frozenset(
        {"secret", "previous_secrets", "max_token_age", "dedup_window", "max_clock_skew"}
    ),
    "storage": frozenset({"retention"}),
    "delivery": None,  # None: every key
    "templates": None,
    "logging": frozenset({"level", "format"}),
}
RESTART_ONLY_SECTIONS = ("server", "storage", "dataslayer", "logging", "metrics")


class Reloader:
    """Holds the running config and swaps in a new one on ``reload()``."""

    def __init__(
        self,
        config: Config,
        *,
        http: aiohttp.ClientSession,
        stdout: TextIO,
        ingest: Ingest,
        worker: Worker,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self.config = config
        self._http, self._stdout = http, stdout
        self._ingest, self._worker = ingest, worker
        self._metrics, self._clock = metrics, clock
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        metrics.config_loaded(clock.now(), reload=False)

    def request_reload(self) -> None:
        """From a signal handler: reload in the background (one at a time, in order)."""
        self._spawn(self._reload_logged())

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except Exception:  # a bug must not go unnoticed in a background task: log it, keep running
            self._metrics.reload_failed()
            log.exception("reload failed unexpectedly; still running the previous config")

    async def reload(self) -> bool:
        """Load, validate and apply the config file again; False (nothing changed) if invalid."""
        async with self._lock:
            path = self.config.path
            log.info("reloading %s", path)
            try:
                config, renderer = await asyncio.to_thread(load_checked, path)
                sinks = self._build_sinks(config)
            except ConfigError as exc:
                self._refuse(exc)
                return False
            self._apply(config, renderer, sinks)
            self._metrics.config_loaded(self._clock.now(), reload=True)
            log.info(
                "reloaded %s: %d sinks (%s), %d routes",
                path,
                len(config.sinks),
                ", ".join(config.sinks) or "none",
                len(config.routes),
            )
            # As at start: what works but is probably a mistake (a file cut off mid-write can
            # leave a valid config with no routes, which stores events and sends them nowhere).
            for warning in all_warnings(config):
                log.warning("%s", warning)
            await self._worker.report_orphans()
            return True

    async def close(self) -> None:
        """At shutdown: finish retiring old sinks; a reload still validating is abandoned."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _refuse(self, exc: ConfigError) -> None:
        self._metrics.reload_failed()
        log.error(
            "reload of %s failed; still running the previous config. Problems:", self.config.path
        )
        for problem in exc.problems:
            log.error("  %s", problem)

    def _build_sinks(self, config: Config) -> dict[str, Sink]:
        context = SinkContext(http=self._http, timeout=config.delivery.timeout, stdout=self._stdout)
        try:
            return build_sinks(config.sinks, context)
        except (ValueError, OSError) as exc:  # validated already; a file may have gone since
            raise ConfigError([Problem("sinks", str(exc))]) from exc

    def _apply(self, config: Config, renderer: Renderer, sinks: dict[str, Sink]) -> None:
        for key in restart_only_changes(self.config, config):
            log.warning("%s changed: it applies after a restart, not on reload", key)
        ds = config.dataslayer
        verifier = TokenVerifier(ds.all_secrets, ds.max_token_age, ds.max_clock_skew)
        old_sinks = self._worker.reconfigure(
            sinks, renderer, config.delivery, config.storage.retention
        )
        self._ingest.reconfigure(verifier, Router(config.routes, config.fallback), ds.remember_for)
        self._worker.dedup_window = ds.remember_for
        if _logging_changed(self.config, config):
            lg = config.logging
            setup_logging(lg.level, lg.format, self.config.logging.show_personal_data)
        self.config = config
        self._spawn(self._retire(old_sinks))

    async def _retire(self, sinks: Mapping[str, Sink]) -> None:
        """Close the replaced sinks once the sends they had in flight are done."""
        try:
            await self._worker.settle()
        finally:
            for sink in sinks.values():
                await sink.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _logging_changed(old: Config, new: Config) -> bool:
    return (old.logging.level, old.logging.format) != (new.logging.level, new.logging.format)


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """TOML paths of changed keys that a reload does not apply."""
    changed = []
    for section in RESTART_ONLY_SECTIONS:
        reloadable = RELOADABLE.get(section, frozenset())
        if reloadable is None:
            continue
        for key in _changed_keys(getattr(old, section), getattr(new, section)):
            if key not in reloadable:
                changed.append(f"{section}.{key}")
    return changed


def _changed_keys(old: BaseModel, new: BaseModel) -> Iterator[str]:
    for key in type(old).model_fields:
        if getattr(old, key) != getattr(new, key):
            yield key
