"""Prometheus metrics: what the relay counts, and the exposition served at ``/metrics``.

Each app has its own registry, so several relays (or tests) in one process never collide.
Counters and histograms move as things happen; the outbox and sink gauges are read at scrape
time: the outbox is queried on its own thread first, then the exposition is generated.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay import __version__
from relay.errors import StorageError
from relay.outbox import Outbox, Stats
from relay.pacing import SinkGate

log = logging.getLogger("relay.metrics")

# The contract's answers, so their series exist (at 0) from the start; others appear when seen.
REQUEST_OUTCOMES = (
    "accepted",
    "duplicate",
    "bad_request",
    "invalid_token",
    "too_large",
    "invalid_event",
    "unavailable",
    "forbidden",
    "too_many_requests",
    "unauthorized",
    "unsupported_media_type",
)
STATUSES = ("pending", "retrying", "delivered", "dead")
ATTEMPT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LATENCY_BUCKETS = (0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0)
_SLUG = re.compile(r"[a-z][a-z0-9_]{0,39}")


class Metrics:
    """The relay's instruments, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "relay_inbound_requests",
            "POSTs to the webhook path, by the answer given",
            ["outcome"],
            registry=r,
        )
        self.attempts = Counter(
            "relay_delivery_attempts", "Delivery attempts made", ["sink"], registry=r
        )
        self.deliveries = Counter(
            "relay_deliveries",
            "Outcomes of delivery attempts: delivered, retry (will be tried again) or dead",
            ["sink", "outcome", "reason"],
            registry=r,
        )
        self.attempt_seconds = Histogram(
            "relay_delivery_attempt_duration_seconds",
            "How long one attempt to send took, whatever its outcome",
            ["sink"],
            buckets=ATTEMPT_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "relay_delivery_latency_seconds",
            "From accepting an event to its delivery to the sink, retries included",
            ["sink"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._reloads = Counter(
            "relay_config_reloads", "Config reloads (SIGHUP), by result", ["outcome"], registry=r
        )
        self._reload_ok = Gauge(
            "relay_config_last_reload_successful",
            "1 if the last reload succeeded (or none was tried), 0 if it failed",
            registry=r,
        )
        self._reload_time = Gauge(
            "relay_config_last_reload_success_timestamp_seconds",
            "When the running config was loaded (start or last successful reload), UNIX seconds",
            registry=r,
        )
        Gauge(
            "relay_build_info", "Always 1; the version in a label", ["version"], registry=r
        ).labels(__version__).set(1)
        self._live = _LiveCollector()
        r.register(self._live)
        for outcome in REQUEST_OUTCOMES:
            self.requests.labels(outcome)
        for outcome in ("success", "failure"):
            self._reloads.labels(outcome)
        self._reload_ok.set(1)

    # -- events ----------------------------------------------------------------------------------

    def request(self, outcome: str) -> None:
        self.requests.labels(outcome).inc()

    def sinks_configured(self, names: Iterable[str]) -> None:
        """Start the per-sink attempt series at 0, so rates work from the first attempt."""
        for name in names:
            self.attempts.labels(name)

    def attempt(self, sink: str, outcome: str, reason: str | None, duration: float) -> None:
        """One attempt ended as ``outcome`` (delivered, retry or dead)."""
        self.attempts.labels(sink).inc()
        self.deliveries.labels(sink, outcome, reason or "").inc()
        self.attempt_seconds.labels(sink).observe(duration)

    def delivered(self, sink: str, latency: float) -> None:
        self.latency.labels(sink).observe(max(latency, 0.0))

    def config_loaded(self, now: float, *, reload: bool) -> None:
        if reload:
            self._reloads.labels("success").inc()
        self._reload_ok.set(1)
        self._reload_time.set(now)

    def reload_failed(self) -> None:
        self._reloads.labels("failure").inc()
        self._reload_ok.set(0)

    # -- scraping --------------------------------------------------------------------------------

    async def exposition(self, outbox: Outbox, gates: Mapping[str, SinkGate], now: float) -> bytes:
        """The text exposition, with the outbox and sinks as they are now."""
        try:
            stats: Stats | None = await outbox.stats()
        except StorageError as exc:
            log.warning("metrics: cannot read the outbox: %s", exc)
            stats = None
        sinks = {
            name: (gate.paused_until is not None, gate.in_flight) for name, gate in gates.items()
        }
        self._live.snapshot = _Snapshot(stats, now, sinks)
        return generate_latest(self.registry)


@dataclass(frozen=True)
class _Snapshot:
    stats: Stats | None = None
    now: float = 0.0
    sinks: Mapping[str, tuple[bool, int]] = field(default_factory=dict)


class _LiveCollector(Collector):
    """Gauges read at scrape time: outbox depth and age, and each sink's breaker and load."""

    def __init__(self) -> None:
        self.snapshot = _Snapshot()

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot
        if snap.stats is not None:
            yield from _outbox_families(snap.stats, snap.now)
        breaker = GaugeMetricFamily(
            "relay_sink_breaker_open",
            "1 while the sink is paused after repeated failures (or being probed)",
            labels=["sink"],
        )
        in_flight = GaugeMetricFamily(
            "relay_sink_in_flight", "Sends in flight to the sink", labels=["sink"]
        )
        for name, (paused, count) in sorted(snap.sinks.items()):
            breaker.add_metric([name], 1.0 if paused else 0.0)
            in_flight.add_metric([name], count)
        yield breaker
        yield in_flight


def _outbox_families(stats: Stats, now: float) -> Iterable[Metric]:
    depth = GaugeMetricFamily(
        "relay_outbox_deliveries", "Deliveries in the outbox, by status", labels=["status"]
    )
    for status in STATUSES:
        depth.add_metric([status], stats.by_status.get(status, 0))
    yield depth
    oldest = stats.oldest_active_created_at
    yield GaugeMetricFamily(
        "relay_outbox_oldest_pending_age_seconds",
        "Age of the oldest delivery still to send (pending or retrying); 0 when there is none",
        value=max(now - oldest, 0.0) if oldest is not None else 0.0,
    )


# -- HTTP --------------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def outcome_of(response: web.StreamResponse) -> str:
    """The outcome label of one of our JSON answers: its ``error``, else its ``status``."""
    body = response.body if isinstance(response, web.Response) else None
    if isinstance(body, bytes):
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            slug = data.get("error", data.get("status"))
            if isinstance(slug, str) and _SLUG.fullmatch(slug):
                return slug
    return f"http_{response.status}"


def request_counter(metrics: Metrics, path: str) -> Middleware:
    """Middleware counting POSTs to ``path`` by the answer they got; put it outermost."""

    @web.middleware
    async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST" or request.path != path:
            return await handler(request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # not turned into JSON inside: a redirect, say
            metrics.request(f"http_{exc.status}")
            raise
        except Exception:
            metrics.request("error")
            raise
        metrics.request(outcome_of(response))
        return response

    return count_requests


def exposition_response(body: bytes) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def start_listener(
    host: str, port: int, scrape: Callable[[], Awaitable[web.Response]]
) -> web.AppRunner:
    """Serve ``GET /metrics`` alone on ``host:port`` (``[metrics] port``)."""

    async def handle(_request: web.Request) -> web.Response:
        return await scrape()

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(exc.errno, f"[metrics] {host}:{port}: {exc.strerror or exc}") from exc
    log.info("metrics on http://%s:%d/metrics", host, port)
    return runner
