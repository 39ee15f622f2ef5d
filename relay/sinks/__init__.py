"""Sink types, by the ``type`` key of a ``[sinks.NAME]`` table.

Adding a sink type: its module here, its tests, one line in ``SINK_TYPES``, a README section.
A type's module is imported the first time a config uses it, so the relay does not pay for
slack-sdk or aiosmtplib at start when no sink needs them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from relay.sinks.base import Message, Part, Sink, SinkConfig, SinkContext


class _SinkTypes(Mapping[str, type[Sink]]):
    """``type`` -> sink class, importing each class's module on first use."""

    def __init__(self, paths: dict[str, str]) -> None:
        self._paths = paths
        self._loaded: dict[str, type[Sink]] = {}

    def __getitem__(self, kind: str) -> type[Sink]:
        if kind not in self._loaded:
            module, _, name = self._paths[kind].partition(":")
            self._loaded[kind] = getattr(importlib.import_module(module), name)
        return self._loaded[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


SINK_TYPES: Mapping[str, type[Sink]] = _SinkTypes(
    {
        "console": "relay.sinks.console:ConsoleSink",
        "email": "relay.sinks.email:EmailSink",
        "slack": "relay.sinks.slack:SlackSink",
        "webhook": "relay.sinks.webhook:WebhookSink",
    }
)


def build_sinks(configs: Mapping[str, SinkConfig], context: SinkContext) -> dict[str, Sink]:
    """One sink object per ``[sinks.NAME]`` table."""
    return {name: SINK_TYPES[c.type](name, c, context) for name, c in configs.items()}


__all__ = ["SINK_TYPES", "Message", "Part", "Sink", "SinkConfig", "SinkContext", "build_sinks"]
