"""The shipped deployment files agree with the relay, and the relay fits the host it runs on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from relay.checks import template_problems
from relay.config import load_config
from relay.server import names_a_proxy
from tests.helpers import SECRET

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
UNIT = (ROOT / "deploy" / "dataslayer-relay.service").read_text(encoding="utf-8")


def docker_config():
    return load_config(
        ROOT / "deploy" / "config.docker.toml", environ={"DATASLAYER_SECRET": SECRET}
    )


def test_the_container_config_is_valid_and_listens_on_every_interface():
    """config.docker.toml passes the checks, binds 0.0.0.0 and keeps the database in the volume."""
    config = docker_config()
    assert template_problems(config) == []
    assert config.server.host == "0.0.0.0"
    assert config.storage.path == Path("/var/lib/relay/relay.db")
    assert config.logging.format == "json"
    assert config.metrics.enabled


def test_the_image_runs_that_config_and_checks_health_on_its_port():
    """The image copies the config to $RELAY_CONFIG and probes /healthz on the config's port."""
    copied = re.search(r"COPY deploy/config.docker.toml (\S+)", DOCKERFILE)
    assert copied is not None
    assert f"RELAY_CONFIG={copied.group(1)}" in DOCKERFILE
    assert f"http://127.0.0.1:{docker_config().server.port}/healthz" in DOCKERFILE
    assert 'VOLUME ["/var/lib/relay"]' in DOCKERFILE
    assert re.search(r"^USER relay$", DOCKERFILE, re.MULTILINE)


def test_the_systemd_unit_reloads_with_sighup_and_may_write_only_its_state():
    """The unit serves the config it checks, reloads with SIGHUP and is confined to its folder."""
    config = "-c /etc/dataslayer-relay/config.toml"
    assert f"ExecStart=/opt/dataslayer-relay/bin/relay serve {config}" in UNIT
    assert f"ExecReload=/opt/dataslayer-relay/bin/relay check {config}" in UNIT
    assert "ExecReload=/bin/kill -HUP $MAINPID" in UNIT
    for line in ("ProtectSystem=strict", "NoNewPrivileges=yes", "Restart=on-failure"):
        assert line in UNIT.splitlines()
    assert "ReadWritePaths=/var/lib/dataslayer-relay" in UNIT


@pytest.mark.parametrize(
    ("proxies", "expected"),
    [
        ({}, False),
        ({"no": "127.0.0.1,localhost"}, False),  # NO_PROXY alone: nothing to go through
        ({"http": "http://proxy.internal:3128"}, True),
        ({"https": "http://proxy.internal:3128", "no": "localhost"}, True),
        ({"all": "socks5://proxy.internal:1080"}, True),
        ({"http": ""}, False),
    ],
)
def test_the_http_client_trusts_the_environment_only_when_it_names_a_proxy(proxies, expected):
    """Outgoing sends look proxies up per request only when HTTP(S)_PROXY or ALL_PROXY names
    one; NO_PROXY alone (set by many hosts) must not slow every send."""
    assert names_a_proxy(proxies) is expected
