"""A real webhook receiver for tests: an aiohttp app on 127.0.0.1 that checks signatures.

Signatures are verified with the independent ``standardwebhooks`` package, so a test proves
the relay interoperates rather than agreeing with itself::

    async with FakeReceiver(secrets=["whsec_..."]) as receiver:
        receiver.reply(Reply(503, headers={"Retry-After": "7"}), Reply(200))
        ...                                 # WebhookConfig(url=receiver.url, ...)
        [first, second] = await receiver.wait_for(2)
        assert second.verified
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from relay.testing import LocalServer

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Reply:
    """One scripted answer: status, body, headers, and seconds to wait before answering."""

    status: int = 200
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0

    @classmethod
    def redirect(cls, location: str, status: int = 301) -> Reply:
        return cls(status, headers={"Location": location})


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as it arrived.

    ``verified`` is True when every secret the receiver knows verifies the request (a real
    receiver needs one; requiring all lets a test check that each rotated key signed), False when
    one does not, and None when the receiver has no secrets.
    """

    method: str
    path: str
    query: str
    headers: CIMultiDictProxy[str]
    body: bytes
    verified: bool | None


class FakeReceiver(LocalServer):
    """Records every request to any path and answers from a script (default: 200 ``ok``).

    ``port`` 0 picks a free port; a fixed one lets a test bring a receiver "back up" at the
    same URL after it was down.
    """

    def __init__(
        self,
        secrets: Iterable[str] = (),
        *,
        path: str = "/hook",
        replies: Iterable[Reply] = (),
        port: int = 0,
    ) -> None:
        self.requests: list[ReceivedRequest] = []
        self._webhooks = [Webhook(s) for s in secrets]
        self._path = path
        self._replies: deque[Reply] = deque(replies)
        self._arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port = port

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._port}{self._path}"

    def reply(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order; then 200 again."""
        self._replies.extend(replies)

    async def wait_for(self, count: int, within: float = 5.0) -> list[ReceivedRequest]:
        """The first ``count`` requests, once that many arrived within ``within`` seconds.

        Raises TimeoutError when fewer arrive in time.
        """
        async with asyncio.timeout(within):
            while len(self.requests) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.requests[:count]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Cancelling a handler whose client went away keeps shutdown fast after slow replies.
        # No access log: webhook URLs often carry tokens, and tests search logs for secrets.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, self._port)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            ReceivedRequest(
                request.method,
                request.path,
                request.query_string,
                request.headers,
                body,
                self._verify(body, request.headers),
            )
        )
        self._arrived.set()
        reply = self._replies.popleft() if self._replies else Reply(200, "ok")
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return web.Response(
            status=reply.status, text=reply.body, headers=CIMultiDict(reply.headers)
        )

    def _verify(self, body: bytes, headers: Mapping[str, str]) -> bool | None:
        if not self._webhooks:
            return None
        plain = {name: value for name, value in headers.items()}
        try:
            for webhook in self._webhooks:
                webhook.verify(body, plain, json_parse=False)
        except (WebhookVerificationError, ValueError):
            return False
        return True
