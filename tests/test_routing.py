"""Routing: every matching route fires, each sink at most once, fallback when none match."""

from __future__ import annotations

from relay.config import Route
from relay.events import event_from_dict
from relay.routing import Router


def _event(**fields):
    return event_from_dict({"type": "shared_connection", **fields}, received_at=0.0)


ROUTES = [
    Route(("google_*",), ("*",), ("slack", "crm")),
    Route(("GOOGLE_ADS", "facebook_ads"), ("shared_connection",), ("crm", "mail")),
    Route(("*",), ("other_type",), ("audit",)),
]


def test_every_matching_route_fires_and_each_sink_once():
    """google_ads matches two routes; crm is listed in both but appears once."""
    assert Router(ROUTES, ["fallback"]).sinks_for(_event(datasource="google_ads")) == [
        "slack",
        "crm",
        "mail",
    ]


def test_globs_are_case_insensitive():
    """Patterns and values match regardless of case."""
    assert Router(ROUTES, []).sinks_for(_event(datasource="Facebook_Ads")) == ["crm", "mail"]


def test_fallback_receives_events_no_route_matched():
    """An event no route matches goes to the fallback sinks."""
    assert Router(ROUTES, ["fallback"]).sinks_for(_event(datasource="tiktok_ads")) == ["fallback"]


def test_missing_datasource_only_matches_star():
    """An event without a datasource matches "*" routes, not named ones."""
    router = Router([Route(("*",), ("*",), ("all",)), Route(("ga4",), ("*",), ("ga",))], [])
    assert router.sinks_for(_event()) == ["all"]


def test_no_routes_and_no_fallback_means_nowhere():
    """With nothing configured, an event is routed to no sink."""
    assert Router([], []).sinks_for(_event(datasource="x")) == []
