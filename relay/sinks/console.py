"""Console sink: prints what it would send. The shipped config uses it: no credentials needed."""

from __future__ import annotations

from typing import Literal

from relay.events import printable
from relay.sinks.base import Message, Part, Sink, SinkConfig


class ConsoleConfig(SinkConfig):
    type: Literal["console"] = "console"


class ConsoleSink(Sink):
    type = "console"
    config_model = ConsoleConfig
    parts = (Part("text", required=True, escape="terminal"),)

    async def send(self, message: Message) -> None:
        out = self.context.stdout
        text = printable(message.parts["text"], keep_newlines=True)
        out.write(f"--- {self.name} | event {message.event.id} ---\n{text}\n")
        out.flush()

    def describe(self) -> str:
        return "console (standard output)"
