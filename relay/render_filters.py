"""Escaping for each place a rendered value lands, and the filters templates can use.

Each escape kind is a ``finalize`` function: Jinja applies it to the value of every ``{{ ... }}``
and never to literal template text, so authors keep ``<!here>`` and links while event values
cannot inject them. ``Markup`` values (``|safe``, ``|tojson``, macro output) pass through as-is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from markupsafe import Markup
from markupsafe import escape as escape_html

from relay.events import printable

Escaper = Callable[[Any], str]

_SLACK_CONTROL = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
# Everything str.splitlines() treats as a line break: any of them could split a mail header.
_LINE_BREAKS = re.compile("[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]")
_NUMBER = re.compile(r"\s*-?\d+(\.\d+)?\s*")

DEFAULT_DATETIME_FORMAT = "%Y-%m-%d %H:%M %Z"

DATASOURCE_NAMES: dict[str, str] = {
    "google_ads": "Google Ads",
    "adwords": "Google Ads",
    "facebook_ads": "Facebook Ads",
    "meta_ads": "Meta Ads",
    "facebook_insights": "Facebook Insights",
    "facebook_pages": "Facebook Pages",
    "instagram": "Instagram",
    "instagram_insights": "Instagram Insights",
    "ga4": "Google Analytics 4",
    "google_analytics_4": "Google Analytics 4",
    "google_analytics": "Google Analytics",
    "search_console": "Google Search Console",
    "google_search_console": "Google Search Console",
    "google_sheets": "Google Sheets",
    "google_my_business": "Google Business Profile",
    "google_business_profile": "Google Business Profile",
    "google_merchant_center": "Google Merchant Center",
    "display_video_360": "Display & Video 360",
    "dv360": "Display & Video 360",
    "campaign_manager": "Campaign Manager 360",
    "search_ads_360": "Search Ads 360",
    "youtube": "YouTube",
    "linkedin_ads": "LinkedIn Ads",
    "linkedin_pages": "LinkedIn Pages",
    "tiktok_ads": "TikTok Ads",
    "bing_ads": "Microsoft Advertising",
    "microsoft_ads": "Microsoft Advertising",
    "pinterest_ads": "Pinterest Ads",
    "twitter_ads": "X (Twitter) Ads",
    "x_ads": "X (Twitter) Ads",
    "snapchat_ads": "Snapchat Ads",
    "amazon_ads": "Amazon Ads",
    "amazon_seller_central": "Amazon Seller Central",
    "criteo": "Criteo",
    "taboola": "Taboola",
    "outbrain": "Outbrain",
    "shopify": "Shopify",
    "woocommerce": "WooCommerce",
    "hubspot": "HubSpot",
    "salesforce": "Salesforce",
    "mailchimp": "Mailchimp",
    "klaviyo": "Klaviyo",
    "stripe": "Stripe",
    "semrush": "Semrush",
    "ahrefs": "Ahrefs",
    "apple_search_ads": "Apple Search Ads",
}


def escape_slack(text: str) -> str:
    """Escape Slack's control characters (``& < >``) so text cannot ping, link or format."""
    return text.translate(_SLACK_CONTROL)


def escape_json_string(text: str) -> str:
    """JSON string escaping without the surrounding quotes: the value sits inside quotes."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def remove_line_breaks(text: str) -> str:
    """Replace every kind of line break with a space, so a value cannot add a mail header."""
    return _LINE_BREAKS.sub(" ", text)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _json_value(value: Any) -> str:
    if isinstance(value, str):
        return escape_json_string(value)
    return json.dumps(value, ensure_ascii=False, default=str)


# How a value becomes text in each kind. JSON writes None as ``null`` (a JSON value, not
# "None"); every other kind writes it as nothing.
_VALUE_ESCAPERS: dict[str, Escaper] = {
    "slack": lambda v: escape_slack(_text(v)),
    "slack_json": lambda v: escape_json_string(escape_slack(_text(v))),
    "json": _json_value,
    "html": lambda v: str(escape_html(_text(v))),
    "header": lambda v: remove_line_breaks(_text(v)),
    # Terminal output: a value's control characters, line breaks included, become visible
    # escapes, so event data cannot print a line that looks like the relay's own log.
    "terminal": lambda v: printable(_text(v)),
    "none": _text,
}

# How already-serialised JSON (from |tojson) is made safe in each kind. It is a complete JSON
# value, so it is never JSON-escaped again; ``& < >`` only occur inside its strings, so Slack
# escaping keeps it valid JSON.
_JSON_TEXT_ESCAPERS: dict[str, Callable[[str], str]] = {
    "slack": escape_slack,
    "slack_json": escape_slack,
    "json": str,
    "html": lambda s: str(escape_html(s)),
    "header": remove_line_breaks,
    "terminal": printable,
    "none": str,
}

ESCAPE_KINDS: tuple[str, ...] = tuple(_VALUE_ESCAPERS)


def make_finalize(kind: str) -> Escaper:
    """The ``finalize`` function for one escape kind."""
    escaper = _VALUE_ESCAPERS[kind]

    def finalize(value: Any) -> str:
        if isinstance(value, Markup):
            return str(value)
        return escaper(value)

    return finalize


def make_tojson(kind: str) -> Callable[..., Markup]:
    """A ``tojson`` filter giving a complete JSON value, made safe for the kind's output."""
    make_safe = _JSON_TEXT_ESCAPERS[kind]

    def tojson(value: Any, indent: int | None = None) -> Markup:
        text = json.dumps(value, ensure_ascii=False, indent=indent, default=str)
        return Markup(make_safe(text))  # noqa: S704 - made safe for its kind just above

    return tojson


def json_text(value: Any) -> str:
    """``value|json_text``: compact JSON as ordinary text, escaped like any other value.

    Unlike ``tojson`` (a complete JSON value, inserted as-is), this suits a spot inside a string:
    a JSON string in Block Kit, a line of text, a mail header.
    """
    return json.dumps(value, ensure_ascii=False, default=str)


def load_timezone(name: str) -> tzinfo:
    """ZoneInfo for an IANA name, or ValueError saying what is wrong."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown timezone {name!r}: use an IANA name such as 'UTC' or 'Europe/Madrid'"
        ) from exc


def _timestamp(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return float(value)
    return None


def make_datetime_filter(default_tz: tzinfo) -> Callable[..., str]:
    """``value|datetime(fmt=None, tz=None)``: UNIX seconds as text in the configured timezone.

    ``fmt="iso"`` gives ISO 8601. None or "" gives ""; anything that is not a time is shown as-is.
    """

    def datetime_filter(value: Any, fmt: str | None = None, tz: str | None = None) -> str:
        if value is None or value == "":
            return ""
        seconds = _timestamp(value)
        if seconds is None:
            return str(value)
        zone = load_timezone(tz) if tz else default_tz
        try:
            moment = datetime.fromtimestamp(seconds, zone)
        except (OverflowError, OSError, ValueError):
            return str(value)
        if fmt == "iso":
            return moment.isoformat(timespec="seconds")
        return moment.strftime(fmt or DEFAULT_DATETIME_FORMAT)

    return datetime_filter


def datasource_name(value: Any) -> str:
    """A readable name for a Dataslayer data source id: ``google_ads`` -> ``Google Ads``."""
    if value is None:
        return ""
    key = str(value).strip()
    known = DATASOURCE_NAMES.get(key.lower().replace("-", "_"))
    if known:
        return known
    return key.replace("_", " ").replace("-", " ").title()
