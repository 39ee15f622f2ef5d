"""Sink types, by the ``type`` key of a ``[sinks.NAME]`` table.

Adding a sink type: its module here, its tests, one line in ``SINK_TYPES``, a README section.
"""

from __future__ import annotations

from collections.abc import Mapping

from relay.sinks.base import Message, Part, Sink, SinkConfig, SinkContext
from relay.sinks.console import ConsoleSink
from relay.sinks.email import EmailSink
from relay.sinks.slack import SlackSink
from relay.sinks.webhook import WebhookSink

SINK_TYPES: dict[str, type[Sink]] = {
    "console": ConsoleSink,
    "email": EmailSink,
    "slack": SlackSink,
    "webhook": WebhookSink,
}


def build_sinks(configs: Mapping[str, SinkConfig], context: SinkContext) -> dict[str, Sink]:
    """One sink object per ``[sinks.NAME]`` table."""
    return {name: SINK_TYPES[c.type](name, c, context) for name, c in configs.items()}


__all__ = ["SINK_TYPES", "Message", "Part", "Sink", "SinkConfig", "SinkContext", "build_sinks"]
