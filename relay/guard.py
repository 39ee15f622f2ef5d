"""Who may post: the client's real address, the allow-list, optional auth, and a limit on failures.

The receiver is a public URL. These checks run before any body is read, and every request that
fails (bad body, bad token, bad credentials) counts against its client address; past the limit
the address gets 429 until its minute is over.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections import OrderedDict
from collections.abc import Sequence

from relay.clock import Clock

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

WINDOW = 60.0  # seconds over which failures are counted
MAX_TRACKED = 10_000  # client addresses remembered at once; the oldest are forgotten first


def parse_networks(values: Sequence[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (or single addresses) -> networks; ValueError names a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f'"{value}" is not an IP address or CIDR (e.g. "10.0.0.0/8")'
            ) from None
    return tuple(networks)


def _address(text: str | None) -> IPAddress | None:
    try:
        return ipaddress.ip_address((text or "").strip())
    except ValueError:
        return None


def _within(address: IPAddress | None, networks: Sequence[IPNetwork]) -> bool:
    return address is not None and any(address in net for net in networks)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]
) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy.

    Behind trusted proxies the client is the right-most X-Forwarded-For entry that is not itself
    a trusted proxy; entries further left were written by the client and prove nothing.
    """
    address = _address(peer)
    if not forwarded_for or not _within(address, trusted):
        return str(address) if address is not None else (peer or "unknown")
    for hop in reversed(forwarded_for.split(",")):
        hop_address = _address(hop)
        if hop_address is None:
            break  # garbage in the chain: stop trusting it here
        if not _within(hop_address, trusted):
            return str(hop_address)
    return str(address)


def allowed(client: str, allow: Sequence[IPNetwork]) -> bool:
    """True when no allow-list is configured or ``client`` is inside it."""
    return not allow or _within(_address(client), allow)


def check_basic(header: str | None, username: str, password: str) -> bool:
    """Constant-time check of an ``Authorization: Basic`` header."""
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, _, given = decoded.partition(":")
    same_user = hmac.compare_digest(user.encode(), username.encode())
    return hmac.compare_digest(given.encode(), password.encode()) and same_user


def check_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a shared header value."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class FailureLimiter:
    """Counts failed requests per client address in fixed one-minute windows."""

    def __init__(self, limit: int, clock: Clock) -> None:
        self._limit = limit
        self._clock = clock
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may post again, or None when it may now."""
        if not self._limit:
            return None
        started, count = self._windows.get(client, (0.0, 0))
        left = started + WINDOW - self._clock.now()
        return left if count >= self._limit and left > 0 else None

    def failed(self, client: str) -> bool:
        """Count a failure; True when it is the one that reaches the limit (429s from now)."""
        if not self._limit:
            return False
        now = self._clock.now()
        started, count = self._windows.pop(client, (now, 0))
        if now - started >= WINDOW:
            started, count = now, 0
        self._windows[client] = (started, count + 1)
        while len(self._windows) > MAX_TRACKED:
            self._windows.popitem(last=False)
        return count + 1 == self._limit
