"""The sink interface: what every sink type provides, and the pieces they share.

A sink turns rendered template parts into one message at its receiver. ``send()`` returns on
success and raises :class:`~relay.errors.RetryableError` or :class:`~relay.errors.PermanentError`
otherwise, so the worker always knows whether a retry can help.
"""

from __future__ import annotations

import builtins
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TextIO

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from relay.config_types import Float, Int
from relay.events import Event


class SinkConfig(BaseModel):
    """Keys every sink accepts; each sink type extends this with its own."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, allow_inf_nan=False
    )

    type: str
    template: str | None = Field(
        default=None, description="use templates/NAME/ instead of the event type's folder"
    )
    timeout: Float | None = Field(
        default=None, gt=0, le=3600, description="seconds per attempt; default [delivery].timeout"
    )
    concurrency: Int = Field(default=4, ge=1, le=256, description="sends in flight at once")
    rate: Float | None = Field(
        default=None, ge=0, le=10000, description="messages per second; unset or 0 = no limit"
    )


@dataclass(frozen=True)
class Part:
    """One template part a sink renders.

    ``escape`` names how values interpolated from the event are escaped (see relay.render):
    ``"slack"``, ``"slack_json"``, ``"html"``, ``"json"``, ``"header"`` or ``"none"``.
    ``json`` parts must render to valid JSON.
    """

    name: str
    required: bool
    escape: str
    json: bool = False


@dataclass(frozen=True)
class Message:
    """What a sink sends: the rendered parts of one delivery of one event."""

    event: Event
    sink: str
    parts: Mapping[str, str]
    delivery_id: int = 0
    attempt: int = 1

    @property
    def idempotency_key(self) -> str:
        """The same on every attempt of this event to this sink: receivers can drop repeats."""
        return f"{self.event.id}.{self.sink}"


@dataclass
class SinkContext:
    """What the relay lends to sinks: the shared HTTP session, default timeout, output stream."""

    http: aiohttp.ClientSession | None = None
    timeout: float = 15.0
    stdout: TextIO = field(default_factory=lambda: sys.stdout)


class Sink(ABC):
    """A configured destination. Subclasses set ``type``, ``config_model`` and ``parts``."""

    type: ClassVar[str]
    config_model: ClassVar[builtins.type[SinkConfig]]
    parts: ClassVar[tuple[Part, ...]]

    def __init__(self, name: str, config: Any, context: SinkContext) -> None:
        self.name = name
        self.config = config
        self.context = context

    @property
    def timeout(self) -> float:
        configured: float | None = self.config.timeout
        return configured if configured is not None else self.context.timeout

    @abstractmethod
    async def send(self, message: Message) -> None:
        """Deliver ``message``; raise RetryableError or PermanentError when it was not accepted."""

    @classmethod
    def refusal(cls, parts: Mapping[str, str]) -> tuple[str, str] | None:
        """``(part, why)`` when rendered ``parts`` are something the receiver is sure to refuse.

        ``send`` refuses them too; ``relay check`` runs this on every sample it renders, so a
        template that renders the wrong shape is found before an event needs it.
        """
        return None

    @classmethod
    def as_sent(cls, parts: Mapping[str, str]) -> dict[str, str]:
        """``parts`` as ``send`` would send them (after fitting a receiver's limits): what
        ``relay preview`` shows."""
        return dict(parts)

    async def close(self) -> None:  # noqa: B027 - most sinks hold nothing to release
        """Release what the sink holds (connections); called once at shutdown."""

    def describe(self) -> str:
        """Where this sink sends, without credentials, for logs and ``relay check``."""
        return self.type
