"""The small servers the benchmark runs next to the relay, each in its own process.

``python -m bench.apps KIND --port N [...]`` serves one of:

- ``receiver``: the webhook sink's destination; records when each event arrived, and can be told
  to be down (503) or up through ``/control/*``.
- ``bare``: the ingest baseline: reads the body and answers 200, nothing else.
- ``slack``: a Slack that takes ``--per-message`` seconds per message, one message at a time (a
  channel is rate limited, so its throughput, not only its latency, is bounded).
- ``naive``: the receiver from Dataslayer's docs: decrypts in the handler, posts to Slack, then
  answers.

Every app answers ``GET /healthz`` so the harness can wait for it the same way as for the relay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from cryptography.fernet import Fernet

from relay.crypto import fernet_key

HOOK_PATH = "/hook"
HOST = "127.0.0.1"


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


# -- receiver ----------------------------------------------------------------------------------


class Receiver:
    """Arrival times by ``bench_seq`` (the first arrival of each; later ones count as repeats)."""

    def __init__(self) -> None:
        self.up = True
        self.up_at: float | None = None
        self.arrivals: dict[int, float] = {}
        self.requests = 0
        self.refused = 0

    async def hook(self, request: web.Request) -> web.Response:
        # Taken before the body is read: the relay's send is complete once headers arrived.
        now = time.monotonic()
        body = await request.read()
        if not self.up:
            self.refused += 1
            return web.Response(status=503, text="down")
        self.requests += 1
        seq = json.loads(body)["data"]["bench_seq"]
        self.arrivals.setdefault(seq, now)
        return web.Response(text="ok")

    async def set_state(self, request: web.Request) -> web.Response:
        self.up = bool((await request.json())["up"])
        if self.up:
            self.up_at = time.monotonic()
        return await self.stats(request)

    async def stats(self, _request: web.Request) -> web.Response:
        last = max(self.arrivals.values(), default=None)
        return web.json_response(
            {
                "up": self.up,
                "up_at": self.up_at,
                "received": len(self.arrivals),
                "requests": self.requests,
                "refused": self.refused,
                "last_arrival": last,
            }
        )

    async def arrivals_json(self, _request: web.Request) -> web.Response:
        return web.json_response({"arrivals": list(self.arrivals.items())})

    async def reset(self, request: web.Request) -> web.Response:
        self.up, self.up_at, self.requests, self.refused = True, None, 0, 0
        self.arrivals.clear()
        return await self.stats(request)


def receiver_app(_args: argparse.Namespace) -> web.Application:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post(HOOK_PATH, receiver.hook)
    app.router.add_post("/control/state", receiver.set_state)
    app.router.add_get("/control/stats", receiver.stats)
    app.router.add_get("/control/arrivals", receiver.arrivals_json)
    app.router.add_post("/control/reset", receiver.reset)
    return app


# -- bare --------------------------------------------------------------------------------------


async def bare_handler(request: web.Request) -> web.Response:
    await request.read()
    return web.Response()


def bare_app(args: argparse.Namespace) -> web.Application:
    # Same body limit as the relay's benchmark config, so both read bodies under the same rules.
    app = web.Application(client_max_size=args.max_body + 1)
    app.router.add_post(args.path, bare_handler)
    return app


# -- slow Slack --------------------------------------------------------------------------------


def slack_app(args: argparse.Namespace) -> web.Application:
    channel = asyncio.Lock()

    async def post(request: web.Request) -> web.Response:
        await request.read()
        async with channel:
            await asyncio.sleep(args.per_message)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", post)
    return app


# -- naive receiver ----------------------------------------------------------------------------


SLACK_SESSION = web.AppKey("slack_session", aiohttp.ClientSession)


async def _slack_session(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        app[SLACK_SESSION] = session
        yield


def naive_app(args: argparse.Namespace) -> web.Application:
    """Dataslayer's documented receiver, made as generous as asyncio allows (no worker limit)."""
    fernet = Fernet(fernet_key(args.secret))

    async def hook(request: web.Request) -> web.Response:
        token = (await request.json())["encrypted_data"]
        event = json.loads(fernet.decrypt(token.encode("ascii")))
        text = f"{event.get('email')} connected {event.get('datasource')}"
        session = request.app[SLACK_SESSION]
        async with session.post(args.slack_url, json={"text": text}) as answer:
            await answer.read()
            posted = answer.status == 200
        return web.json_response({"posted": posted}, status=200 if posted else 502)

    app = web.Application()
    app.cleanup_ctx.append(_slack_session)
    app.router.add_post(HOOK_PATH, hook)
    return app


APPS: dict[str, Callable[[argparse.Namespace], web.Application]] = {
    "receiver": receiver_app,
    "bare": bare_app,
    "slack": slack_app,
    "naive": naive_app,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.apps")
    parser.add_argument("kind", choices=sorted(APPS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default=HOOK_PATH, help="bare: the path to answer")
    parser.add_argument("--max-body", type=int, default=1 << 20, help="bare: body size limit")
    parser.add_argument("--per-message", type=float, default=0.1, help="slack: seconds each")
    parser.add_argument("--secret", help="naive: the Dataslayer secret")
    parser.add_argument("--slack-url", help="naive: where to post")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    app = APPS[args.kind](args)
    app.router.add_get("/healthz", healthz)
    # Run exactly as the relay runs itself (web.run_app, no access log), so the bare baseline
    # and the relay differ only in what their handlers do.
    web.run_app(app, host=HOST, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
