"""Shared fixtures. Proxies are cleared: slack-sdk ignores NO_PROXY, and tests talk to 127.0.0.1."""

from __future__ import annotations

import os

for _var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    os.environ[_var] = ""
