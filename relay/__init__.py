"""dataslayer-relay: receives Dataslayer's encrypted webhooks and relays them durably."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dataslayer-relay")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
