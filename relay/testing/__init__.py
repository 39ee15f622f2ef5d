"""Local stand-ins for the relay's receivers, for the relay's tests and for users' template tests.

- ``slack.FakeSlack``: answers like Slack's incoming webhooks and ``chat.postMessage``.
- ``smtp.FakeSMTP``: an aiosmtpd server (STARTTLS, implicit TLS, AUTH, scripted reply codes).
- ``webhook.FakeReceiver``: verifies Standard Webhooks signatures with ``standardwebhooks``.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self


class LocalServer:
    """A server on 127.0.0.1 used as ``async with``: ``start()`` on entry, ``close()`` on exit."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
