"""HTTP in: the aiohttp app, its inbound webhook handler, and the lifecycle of its resources.

``create_app(config)`` returns the app; storage, the HTTP session, sinks and the worker live in
``cleanup_ctx`` so they start with the app and stop with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TextIO

import aiohttp
from aiohttp import web

from relay.checks import escape_kinds
from relay.clock import Clock, SystemClock
from relay.config import Config
from relay.crypto import TokenVerifier
from relay.health import Subject, failed_checks
from relay.inbound import CONFIG, GATE, INGEST, STATE, Gate, State, answer, handle_webhook
from relay.ingest import Ingest
from relay.metrics import Metrics, exposition_response, request_counter, start_listener
from relay.outbox import Outbox
from relay.reload import Reloader
from relay.render import Renderer
from relay.routing import Router
from relay.sinks import Sink, SinkContext, build_sinks
from relay.worker import Worker

log = logging.getLogger("relay.server")

CLOCK = web.AppKey("clock", Clock)
STDOUT = web.AppKey("stdout", TextIO)
RUN_WORKER = web.AppKey("run_worker", bool)
RENDERER = web.AppKey("renderer", Renderer)
OUTBOX = web.AppKey("outbox", Outbox)
SINKS = web.AppKey("sinks", dict[str, Sink])
WORKER = web.AppKey("worker", Worker)
METRICS = web.AppKey("metrics", Metrics)
RELOADER = web.AppKey("reloader", Reloader)  # holds the running config once reloaded
WORKER_TASK: web.AppKey[asyncio.Task[None] | None] = web.AppKey("worker_task")


def create_app(
    config: Config,
    *,
    clock: Clock | None = None,
    stdout: TextIO | None = None,
    run_worker: bool = True,
    renderer: Renderer | None = None,
) -> web.Application:
    """The relay as an aiohttp app; with ``run_worker=False`` tests call ``app[WORKER].drain()``.

    ``renderer``: one whose templates were already checked (``relay serve`` checks them before
    it starts), so they are not compiled a second time.
    """
    # aiohttp refuses a body whose size reaches client_max_size, so allow exactly max_body_bytes.
    app = web.Application(
        client_max_size=config.server.max_body_bytes + 1, middlewares=[json_errors]
    )
    app[CONFIG] = config
    app[CLOCK] = clock or SystemClock()
    app[STDOUT] = stdout or sys.stdout
    app[RUN_WORKER] = run_worker
    if renderer is None:
        renderer = Renderer(config.templates.dir, config.templates.timezone)
        renderer.compile_all(escape_kinds(config))  # read them now; later edits need a reload
    app[RENDERER] = renderer
    app[STATE] = State()
    app[GATE] = Gate.from_config(config, app[CLOCK])
    app.on_shutdown.append(begin_shutdown)
    app.cleanup_ctx.append(_storage)
    app.cleanup_ctx.append(_delivery)
    app.router.add_post(config.server.path, handle_webhook)
    app.router.add_get("/healthz", handle_health)
    _observability(app, config)
    return app


def _observability(app: web.Application, config: Config) -> None:
    """Readiness, and metrics: counted from the outermost middleware, served here or apart."""
    app[METRICS] = Metrics()
    app.middlewares.insert(0, request_counter(app[METRICS], config.server.path))
    app.router.add_get("/readyz", handle_ready)
    if config.metrics.enabled and config.metrics.port is None:
        app.router.add_get("/metrics", handle_metrics)
    elif config.metrics.enabled:
        app.cleanup_ctx.append(_metrics_listener)


async def _storage(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    outbox = await Outbox.open(config.storage.path)
    app[OUTBOX] = outbox
    yield
    await outbox.close()


def names_a_proxy(proxies: Mapping[str, str]) -> bool:
    """Whether the environment (``urllib.request.getproxies()``) names a proxy to go through.

    With trust_env aiohttp looks proxies up in a thread on every request (3-4x slower sends), so
    the relay trusts the environment only when it names a proxy. NO_PROXY alone names none.
    """
    return any(scheme != "no" and url for scheme, url in proxies.items())


async def _delivery(app: web.Application) -> AsyncIterator[None]:
    config, clock = app[CONFIG], app[CLOCK]
    connector = aiohttp.TCPConnector(limit=100, limit_per_host=20)
    use_proxies = names_a_proxy(urllib.request.getproxies())
    async with aiohttp.ClientSession(connector=connector, trust_env=use_proxies) as http:
        context = SinkContext(http=http, timeout=config.delivery.timeout, stdout=app[STDOUT])
        sinks = build_sinks(config.sinks, context)
        worker = Worker(
            app[OUTBOX],
            sinks,
            app[RENDERER],
            config.delivery,
            clock,
            retention=config.storage.retention,
            metrics=app[METRICS],
            dedup_window=config.dataslayer.remember_for,
        )
        app[SINKS], app[WORKER] = sinks, worker
        app[INGEST] = Ingest(
            TokenVerifier(
                config.dataslayer.all_secrets,
                config.dataslayer.max_token_age,
                config.dataslayer.max_clock_skew,
            ),
            Router(config.routes, config.fallback),
            app[OUTBOX],
            clock,
            config.dataslayer.remember_for,
            on_stored=worker.notify,
            show_personal_data=config.logging.show_personal_data,
        )
        app[RELOADER] = Reloader(
            config,
            http=http,
            stdout=app[STDOUT],
            ingest=app[INGEST],
            worker=worker,
            metrics=app[METRICS],
            clock=clock,
        )
        task = asyncio.create_task(worker.run()) if app[RUN_WORKER] else None
        app[WORKER_TASK] = task
        yield
        await worker.stop(config.server.shutdown_timeout)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await app[RELOADER].close()
        for sink in worker.sinks.values():  # the current ones: a reload may have replaced them
            await sink.close()


async def begin_shutdown(app: web.Application) -> None:
    """From now on, new posts get 503 so the sender retries elsewhere or later."""
    app[STATE].closing = True


async def handle_health(request: web.Request) -> web.Response:
    return answer(200, status="ok")


async def handle_ready(request: web.Request) -> web.Response:
    app = request.app
    subject = Subject(
        outbox=app.get(OUTBOX),
        worker_task=app.get(WORKER_TASK),
        worker_expected=app[RUN_WORKER],
        config_loaded=RELOADER in app,
        closing=app[STATE].closing,
    )
    failed = await failed_checks(subject)
    if failed:
        return answer(503, status="not_ready", failed=failed)
    return answer(200, status="ready")


async def handle_metrics(request: web.Request) -> web.Response:
    return await _scrape(request.app)


async def _scrape(app: web.Application) -> web.Response:
    body = await app[METRICS].exposition(app[OUTBOX], app[WORKER].gates, app[CLOCK].now())
    return exposition_response(body)


async def _metrics_listener(app: web.Application) -> AsyncIterator[None]:
    m = app[CONFIG].metrics
    assert m.port is not None
    runner = await start_listener(m.host, m.port, lambda: _scrape(app))
    yield
    await runner.cleanup()


async def serve(
    config: Config, announce: Callable[[], None], renderer: Renderer | None = None
) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully; a second signal exits at once.

    Graceful: stop accepting (new posts get 503), give sends in flight
    ``[server].shutdown_timeout`` seconds, leave the rest pending for the next start.
    """
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload asked for while starting: not a kill
    app = create_app(config, renderer=renderer)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.server.host, config.server.port).start()
        announce()
        await _wait_for_signal(app)
        # Still listening while sends in flight finish: new posts get 503 (with Retry-After),
        # /readyz says not ready, /healthz stays up; only then do the sockets close.
        await app[WORKER].stop(config.server.shutdown_timeout)
    finally:
        await runner.cleanup()
    log.info("stopped; what was not delivered stays pending for the next start")


async def _wait_for_signal(app: web.Application) -> None:
    stop = asyncio.Event()
    deadline = app[CONFIG].server.shutdown_timeout

    def on_signal(name: str) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now; unfinished sends stay pending", name)
            os._exit(1)
        log.info("%s: shutting down; waiting up to %.0f s for sends in flight", name, deadline)
        app[STATE].closing = True
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    loop.add_signal_handler(signal.SIGHUP, app[RELOADER].request_reload)
    await stop.wait()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, ...) answered as JSON, like every other answer."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        slug = (exc.reason or "error").lower().replace(" ", "_")
        # Keep what the error says in its headers: 405's Allow, as HTTP requires.
        kept = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return answer(exc.status, headers=kept or None, error=slug)
