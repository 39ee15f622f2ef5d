"""Which sinks an event goes to: every matching route fires, a sink gets an event at most once."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from relay.config import Route
from relay.events import Event


class Router:
    def __init__(self, routes: Sequence[Route], fallback: Sequence[str]) -> None:
        self._routes = tuple(routes)
        self._fallback = tuple(fallback)

    def sinks_for(self, event: Event) -> list[str]:
        """Sink names for ``event``, in route order, without repeats; the fallback if none match."""
        return self.matched(event) or list(self._fallback)

    def matched(self, event: Event) -> list[str]:
        """Sink names the routes give ``event`` (without the fallback), in order, no repeats."""
        matched: dict[str, None] = {}
        for route in self._routes:
            if _matches(route.datasource, event.datasource) and _matches(route.type, event.type):
                matched.update(dict.fromkeys(route.sinks))
        return list(matched)


def _matches(patterns: Sequence[str], value: str | None) -> bool:
    """Shell-style globs, case-insensitive; a missing value only matches "*"."""
    text = (value or "").lower()
    return any(fnmatch.fnmatchcase(text, pattern.lower()) for pattern in patterns)
