"""config.toml, parsed once and strictly into frozen objects.

Loading expands ``${VAR}`` / ``${VAR:-default}``, applies defaults, validates every section and
every sink with its own type's model, and raises one ConfigError listing every problem, each
named by its TOML path. Relative paths resolve against the config file's folder.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from relay.config_env import expand_env, follows_from
from relay.config_errors import problems_from_validation, suggest
from relay.config_sections import (
    AuthConfig,
    DataslayerConfig,
    DeliveryConfig,
    LoggingConfig,
    MetricsConfig,
    ServerConfig,
    StorageConfig,
    TemplatesConfig,
    _RawConfig,
)
from relay.errors import ConfigError, Problem
from relay.guard import parse_networks
from relay.sinks import SINK_TYPES, SinkConfig

# Shipped in config.toml so a fresh checkout runs; the relay warns loudly while it is in use.
DEMO_SECRET = "relay-demo-secret-change-me-0000"  # noqa: S105 - public on purpose, warned about
CONFIG_ENV = "RELAY_CONFIG"

__all__ = [
    "CONFIG_ENV",
    "DEMO_SECRET",
    "AuthConfig",
    "Config",
    "DataslayerConfig",
    "DeliveryConfig",
    "LoggingConfig",
    "MetricsConfig",
    "Route",
    "ServerConfig",
    "StorageConfig",
    "TemplatesConfig",
    "config_warnings",
    "default_config_path",
    "load_config",
]


@dataclass(frozen=True)
class Route:
    datasource: tuple[str, ...]
    type: tuple[str, ...]
    sinks: tuple[str, ...]


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    path: Path
    server: ServerConfig
    dataslayer: DataslayerConfig
    storage: StorageConfig
    delivery: DeliveryConfig
    templates: TemplatesConfig
    logging: LoggingConfig
    metrics: MetricsConfig
    sinks: Mapping[str, SinkConfig]
    routes: tuple[Route, ...]
    fallback: tuple[str, ...]

    @property
    def uses_demo_secret(self) -> bool:
        return DEMO_SECRET in self.dataslayer.all_secrets


def default_config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or "config.toml")


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate ``path``; raise ConfigError listing every problem."""
    path = Path(path)
    raw = _read_toml(path)
    problems: list[Problem] = []
    expanded = expand_env(raw, os.environ if environ is None else environ, problems)
    unset = list(problems)
    problems.clear()
    config = _validate(expanded, path.resolve(), problems)
    if unset or problems or config is None:
        raise ConfigError(unset + [p for p in problems if not follows_from(p, unset)])
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        # utf-8-sig: a byte order mark (Windows editors write one) is not a TOML error.
        return tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError([Problem("", f"config file not found: {path}")]) from None
    except OSError as exc:
        raise ConfigError([Problem("", f"cannot read {path}: {exc.strerror}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem("", f"{path} is not valid TOML: {exc}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem("", f"{path} is not UTF-8 text")]) from None


def _validate(data: dict[str, Any], path: Path, problems: list[Problem]) -> Config | None:
    try:
        raw = _RawConfig.model_validate(data)
    except ValidationError as exc:
        problems.extend(problems_from_validation(exc, _RawConfig))
        _validate_sinks(data.get("sinks"), problems)
        _check_sink_references(data, problems)
        return None
    sinks = _validate_sinks(raw.sinks, problems)
    _check_sink_references(data, problems)
    _check_replay_window(raw.dataslayer, problems)
    _check_demo_secret(raw, problems)
    _check_ports(raw, problems)
    sinks = {name: _resolve_paths(sink, path.parent) for name, sink in sinks.items()}
    _check_files(sinks, problems)
    if problems:
        return None
    return _build(raw, sinks, path)


def _check_files(sinks: Mapping[str, SinkConfig], problems: list[Problem]) -> None:
    """Files a sink names (e.g. tls_ca_file) must exist now, not fail at the first send."""
    for name, sink in sinks.items():
        for key, value in sink:
            if isinstance(value, Path) and not value.is_file():
                problems.append(Problem(f"sinks.{name}.{key}", f"no such file: {value}"))


def _validate_sinks(raw_sinks: Any, problems: list[Problem]) -> dict[str, SinkConfig]:
    sinks: dict[str, SinkConfig] = {}
    if not isinstance(raw_sinks, dict):
        return sinks
    for name, table in raw_sinks.items():
        if not isinstance(table, dict):
            continue  # already reported by the top-level model
        sink = _validate_sink(name, table, problems)
        if sink is not None:
            sinks[name] = sink
    return sinks


def _validate_sink(name: str, table: dict[str, Any], problems: list[Problem]) -> SinkConfig | None:
    path = f"sinks.{name}"
    kind = table.get("type")
    if not isinstance(kind, str) or kind not in SINK_TYPES:
        known = ", ".join(sorted(SINK_TYPES))
        if kind is None:
            problems.append(Problem(f"{path}.type", f"missing; one of: {known}"))
        else:
            hint = suggest(str(kind), SINK_TYPES)
            problems.append(
                Problem(f"{path}.type", f'unknown sink type "{kind}"{hint}; one of: {known}')
            )
        return None
    model = SINK_TYPES[kind].config_model
    try:
        return model.model_validate(table)
    except ValidationError as exc:
        problems.extend(problems_from_validation(exc, model, prefix=path))
        return None


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _check_sink_references(data: dict[str, Any], problems: list[Problem]) -> None:
    """Route and fallback sink names must name sinks; checked on the raw tables so that these
    problems are listed together with any others, not in a second pass."""
    sinks = _table(data, "sinks")
    routes = data.get("routes")
    routes = routes if isinstance(routes, list) else []
    fallback = _table(data, "fallback")
    lists = [
        (f"routes[{i}].sinks", r.get("sinks")) for i, r in enumerate(routes) if isinstance(r, dict)
    ]
    lists.append(("fallback.sinks", fallback.get("sinks")))
    for path, names in lists:
        for j, name in enumerate(names if isinstance(names, list) else []):
            if isinstance(name, str) and name not in sinks:
                hint = suggest(name, sinks)
                problems.append(Problem(f"{path}[{j}]", f'unknown sink "{name}"{hint}'))


def _check_ports(raw: _RawConfig, problems: list[Problem]) -> None:
    if raw.metrics.port is not None and raw.metrics.port == raw.server.port:
        problems.append(
            Problem(
                "metrics.port",
                f"{raw.metrics.port} is also server.port; leave metrics.port unset to serve "
                "/metrics on the webhook server, or choose another port",
            )
        )


def _check_demo_secret(raw: _RawConfig, problems: list[Problem]) -> None:
    """The demo secret is public: fine for trying the relay on this machine, not for listening
    where anyone else can post."""
    ds = raw.dataslayer
    if DEMO_SECRET not in [ds.secret.reveal(), *(s.reveal() for s in ds.previous_secrets)]:
        return
    if not _is_loopback(raw.server.host):
        problems.append(
            Problem(
                "dataslayer.secret",
                f"the public demo secret cannot be used while listening on {raw.server.host}; "
                "set DATASLAYER_SECRET to the secret from Dataslayer's Developers page "
                '(or listen on "127.0.0.1" to try the relay out)',
            )
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_replay_window(ds: DataslayerConfig, problems: list[Problem]) -> None:
    """A token must expire before its event is forgotten, or a captured one could be replayed."""
    if ds.max_token_age and ds.dedup_window < ds.max_token_age:
        problems.append(
            Problem(
                "dataslayer.dedup_window",
                f"{ds.dedup_window} is shorter than max_token_age ({ds.max_token_age}): a captured "
                "token could be replayed once its event is forgotten; make dedup_window at least "
                "max_token_age",
            )
        )


def _build(raw: _RawConfig, sinks: dict[str, SinkConfig], path: Path) -> Config:
    folder = path.parent
    return Config(
        path=path,
        server=raw.server,
        dataslayer=raw.dataslayer,
        storage=raw.storage.model_copy(update={"path": folder / raw.storage.path}),
        delivery=raw.delivery,
        templates=raw.templates.model_copy(update={"dir": folder / raw.templates.dir}),
        logging=raw.logging,
        metrics=raw.metrics,
        sinks=sinks,
        routes=tuple(
            Route(_as_tuple(r.datasource), _as_tuple(r.type), tuple(dict.fromkeys(r.sinks)))
            for r in raw.routes
        ),
        fallback=tuple(dict.fromkeys(raw.fallback.sinks)),
    )


def _resolve_paths(sink: SinkConfig, folder: Path) -> SinkConfig:
    """Relative paths in a sink's keys (e.g. ``tls_ca_file``) are relative to the config file."""
    update = {
        name: folder / value
        for name, value in sink
        if isinstance(value, Path) and not value.is_absolute()
    }
    return sink.model_copy(update=update) if update else sink


def _as_tuple(patterns: list[str]) -> tuple[str, ...]:
    return tuple(patterns)


def _route_warnings(config: Config) -> list[str]:
    """Route patterns that cannot match what Dataslayer sends: its ids have no spaces."""
    found = []
    for i, route in enumerate(config.routes):
        for key in ("datasource", "type"):
            for pattern in getattr(route, key):
                why = _pattern_problem(pattern)
                if why:
                    found.append(f"routes[{i}].{key}: {json.dumps(pattern)} {why}")
    return found


def _pattern_problem(pattern: str) -> str | None:
    if pattern != pattern.strip():
        return f"has a leading or trailing space, so it never matches {json.dumps(pattern.strip())}"
    if any(ch.isspace() for ch in pattern):
        example = "_".join(pattern.lower().split())
        return f'has a space; Dataslayer sends ids without them (did you mean "{example}"?)'
    if "[" in pattern and "]" not in pattern[pattern.index("[") :]:
        return 'has an unclosed "[", which matches only a literal "["'
    return None


def _access_warnings(config: Config) -> list[str]:
    found = []
    ds = config.dataslayer
    if ds.secret in ds.previous_secrets:
        found.append("dataslayer.previous_secrets: holds the current secret too; remove it")
    if any(net.prefixlen == 0 for net in parse_networks(config.server.trusted_proxies)):
        found.append(
            "server.trusted_proxies: trusts every address, so any client can choose the address "
            "the failure limit and allow_ips see (X-Forwarded-For); list only your proxies"
        )
    return found


def config_warnings(config: Config) -> list[str]:
    """Things that work but are probably not what the user wants."""
    warnings = _access_warnings(config) + _route_warnings(config)
    if config.uses_demo_secret:
        warnings.append(
            "dataslayer.secret: the demo secret is in use; anyone who has read this project's "
            "README can send you events. Set DATASLAYER_SECRET to the secret from Dataslayer's "
            "Developers page"
        )
    ds = config.dataslayer
    if ds.max_token_age == 0:
        warnings.append(
            "dataslayer.max_token_age: 0 (no limit) lets a captured token be replayed once "
            "dedup_window has forgotten its event; set a limit"
        )
    if not config.templates.dir.is_dir():
        what = "is not a folder" if config.templates.dir.exists() else "does not exist"
        warnings.append(
            f"templates.dir: {config.templates.dir} {what}; only the built-in templates are used"
        )
    if not config.routes and not config.fallback:
        warnings.append("routes: no routes and no fallback; events are stored but sent nowhere")
    for name, sink in config.sinks.items():
        extra = getattr(sink, "warnings", None)
        for text in extra() if callable(extra) else []:
            warnings.append(f"sinks.{name}: {text}")
    return warnings
