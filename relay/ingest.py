"""From a token to a stored event: verify, decrypt, parse, route, dedup and commit.

The HTTP layer (relay.server) only decodes the request and maps errors to answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from relay.clock import Clock
from relay.crypto import TokenVerifier
from relay.events import parse_event
from relay.outbox import Outbox
from relay.routing import Router

log = logging.getLogger("relay.ingest")


@dataclass(frozen=True)
class Receipt:
    status: str  # accepted | duplicate
    id: str


class Ingest:
    def __init__(
        self,
        verifier: TokenVerifier,
        router: Router,
        outbox: Outbox,
        clock: Clock,
        dedup_window: float,
        on_stored: Callable[[], None] = lambda: None,
        show_personal_data: bool = False,
    ) -> None:
        self._verifier = verifier
        self._router = router
        self._outbox = outbox
        self._clock = clock
        self._dedup_window = dedup_window
        self._on_stored = on_stored
        self._show_personal_data = show_personal_data

    def reconfigure(self, verifier: TokenVerifier, router: Router, dedup_window: float) -> None:
        """Verify, route and dedup with these from the next request on (a config reload)."""
        self._verifier, self._router, self._dedup_window = verifier, router, dedup_window

    async def receive(self, token: str) -> Receipt:
        """Store the event in ``token``; raise TokenError, EventError or StorageError if not."""
        now = self._clock.now()
        verified = self._verifier.verify(token, now)
        event = parse_event(verified.plaintext, received_at=now)
        sinks = self._router.sinks_for(event)
        accepted = await self._outbox.accept(event, sinks, self._dedup_window)
        described = event.describe(self._show_personal_data)
        about = {"event_id": event.id}
        if not accepted:
            log.info("duplicate %s; nothing new to send", described, extra=about)
            return Receipt("duplicate", event.id)
        self._on_stored()
        if verified.key_index:
            log.info(
                "event %s was made with previous_secrets[%d]",
                event.id,
                verified.key_index - 1,
                extra=about,
            )
        if sinks:
            log.info("accepted %s -> %s", described, ", ".join(sinks), extra=about)
        else:
            log.warning("accepted %s, but no route or fallback matches it", described, extra=about)
        return Receipt("accepted", event.id)
