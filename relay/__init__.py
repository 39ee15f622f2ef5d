"""dataslayer-relay: receives Dataslayer's encrypted webhooks and relays them durably."""

# The one place the version is written: pyproject.toml reads it from here. A literal rather than
# importlib.metadata, whose import and lookup cost every start some 30-40 ms.
__version__ = "0.1.0"
