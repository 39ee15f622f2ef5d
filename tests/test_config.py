"""config.toml: strict, every problem at once, each named by its TOML path."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import DEMO_SECRET, config_warnings, load_config
from relay.errors import ConfigError
from tests.helpers import SECRET, write_config

ROOT = Path(__file__).resolve().parents[1]


def _problems(tmp_path, body, environ=None, secret=SECRET):
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, body, secret=secret), environ=environ or {})
    return [str(p) for p in info.value.problems]


def test_shipped_config_loads_without_any_environment():
    """The shipped config.toml runs on a fresh machine: console sink, demo secret."""
    config = load_config(ROOT / "config.toml", environ={})
    assert config.dataslayer.secret.reveal() == DEMO_SECRET
    assert config.uses_demo_secret
    assert {s.type for s in config.sinks.values()} == {"console"}
    assert any("demo secret" in w for w in config_warnings(config))


def test_defaults_are_applied_and_paths_resolve_against_the_config_folder(tmp_path):
    """A minimal config gets the documented defaults; relative paths are next to the file."""
    config = load_config(write_config(tmp_path, ""), environ={})
    assert config.server.port == 8080
    assert config.server.path == "/webhooks/dataslayer"
    assert config.server.max_body_bytes == 65536
    assert config.delivery.max_attempts == 10
    assert config.storage.path == tmp_path / "relay.db"
    assert config.templates.dir == tmp_path / "templates"


def test_misspelt_key_names_its_path_and_suggests_the_right_one(tmp_path):
    """A typo in a sink key is one problem naming sinks.NAME.KEY with a did-you-mean."""
    body = """
    [sinks.team-slack]
    type = "slack"
    token = "xoxb-1"
    chanel = "#x"
    """
    problems = _problems(tmp_path, body)
    assert 'sinks.team-slack.chanel: unknown key (did you mean "channel"?)' in problems


def test_misspelt_section_key_is_reported(tmp_path):
    """Unknown keys in a section name the section and suggest the key."""
    problems = _problems(tmp_path, "[server]\nprot = 9000\n")
    assert problems == ['server.prot: unknown key (did you mean "port"?)']


def test_wrong_type_names_the_path_and_the_type(tmp_path):
    """A string where a number belongs names the key and what was found."""
    problems = _problems(tmp_path, '[delivery]\nmax_attempts = "many"\n')
    assert len(problems) == 1
    assert problems[0].startswith("delivery.max_attempts: input should be a valid integer")


def test_unknown_sink_in_a_route_names_the_route(tmp_path):
    """A route naming a sink that does not exist points at the route entry."""
    body = """
    [sinks.stdout]
    type = "console"
    [[routes]]
    sinks = ["stdout", "stdot"]
    [fallback]
    sinks = ["nope"]
    """
    problems = _problems(tmp_path, body)
    assert 'routes[0].sinks[1]: unknown sink "stdot" (did you mean "stdout"?)' in problems
    assert 'fallback.sinks[0]: unknown sink "nope"' in problems


def test_unset_variable_names_the_key_and_the_variable(tmp_path):
    """${NAME} without a default and without the variable is an error naming both."""
    body = """
    [sinks.s]
    type = "slack"
    webhook_url = "${SLACK_WEBHOOK_URL}"
    """
    problems = _problems(tmp_path, body)
    assert problems == ["sinks.s.webhook_url: environment variable SLACK_WEBHOOK_URL is not set"]


def test_variables_expand_with_defaults_and_dollar_escapes(tmp_path):
    """${X} reads the environment, ${X:-d} defaults, $$ is a literal dollar."""
    body = """
    [server]
    host = "${HOST:-0.0.0.0}"
    path = "/hook/${ID}/$$x"
    """
    config = load_config(write_config(tmp_path, body), environ={"ID": "42"})
    assert config.server.host == "0.0.0.0"
    assert config.server.path == "/hook/42/$x"


def test_every_problem_is_reported_at_once(tmp_path):
    """Several mistakes give several problems in one error."""
    body = """
    [server]
    port = "x"
    [sinks.a]
    type = "slak"
    [[routes]]
    sinks = []
    """
    problems = _problems(tmp_path, body)
    assert any(p.startswith("server.port:") for p in problems)
    assert any(
        p.startswith('sinks.a.type: unknown sink type "slak" (did you mean "slack"?)')
        for p in problems
    )
    assert any(p.startswith("routes[0].sinks:") for p in problems)


def test_each_bad_previous_secret_is_named_by_its_place(tmp_path):
    """previous_secrets problems name the item: dataslayer.previous_secrets[1]."""
    problems = _problems(tmp_path, f'previous_secrets = ["{"b" * 32}", "x"]\n')
    assert problems == [
        "dataslayer.previous_secrets[1]: is 1 byte long; expected the 32-character secret from "
        "Dataslayer's Developers page, or a 44-character base64 Fernet key"
    ]


def test_bad_secret_is_an_error_that_does_not_print_it(tmp_path):
    """A secret of the wrong length is refused at load, and the message omits it."""
    problems = _problems(tmp_path, "", secret="too-short-secret")
    assert len(problems) == 1
    assert problems[0].startswith("dataslayer.secret: is 16 bytes long")
    assert "too-short-secret" not in problems[0]


def test_missing_secret_is_required(tmp_path):
    """A config without [dataslayer].secret says it is missing."""
    path = tmp_path / "config.toml"
    path.write_text("[server]\nport = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert [str(p) for p in info.value.problems] == ["dataslayer: missing (required)"]


def test_invalid_toml_and_missing_file_are_clear(tmp_path):
    """Syntax errors give the line; a missing file says so."""
    path = tmp_path / "config.toml"
    path.write_text("[server\n")
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 1"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", environ={})


def test_unknown_timezone_is_an_error(tmp_path):
    """An unknown timezone names the key and shows an example."""
    problems = _problems(tmp_path, '[templates]\ntimezone = "Mars/Olympus"\n')
    assert problems == [
        'templates.timezone: unknown timezone "Mars/Olympus" '
        '(use an IANA name like "Europe/Madrid")'
    ]


def test_secrets_never_show_in_reprs(tmp_path):
    """The config object's repr shows <secret>, never the value."""
    body = """
    [sinks.s]
    type = "slack"
    webhook_url = "https://hooks.slack.com/services/T/B/very-secret-path"
    """
    config = load_config(write_config(tmp_path, body), environ={})
    text = repr(config)
    assert SECRET not in text
    assert "very-secret-path" not in text
    assert "<secret>" in text


def test_route_patterns_accept_a_string_or_a_list(tmp_path):
    """datasource and type take one pattern or several; sinks are deduplicated."""
    body = """
    [sinks.a]
    type = "console"
    [[routes]]
    datasource = "google_*"
    type = ["shared_connection", "x"]
    sinks = ["a", "a"]
    """
    route = load_config(write_config(tmp_path, body), environ={}).routes[0]
    assert route.datasource == ("google_*",)
    assert route.type == ("shared_connection", "x")
    assert route.sinks == ("a",)


def test_relative_paths_in_sinks_resolve_against_the_config_folder(tmp_path):
    """A sink's relative tls_ca_file is next to the config file, not the working directory."""
    body = """
    [sinks.mail]
    type = "email"
    host = "127.0.0.1"
    from = "Relay <relay@example.com>"
    to = ["ops@example.com"]
    tls_ca_file = "certs/ca.pem"
    """
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    config = load_config(write_config(tmp_path, body), environ={})
    assert config.sinks["mail"].tls_ca_file == tmp_path / "certs" / "ca.pem"


def test_email_port_and_security_mismatch_is_a_warning(tmp_path):
    """Port 465 with starttls is valid but warned about, under the sink's path."""
    body = """
    [sinks.mail]
    type = "email"
    host = "smtp.example.com"
    port = 465
    from = "relay@example.com"
    to = "ops@example.com"
    """
    config = load_config(write_config(tmp_path, body), environ={})
    assert 'sinks.mail: port 465 is usually implicit TLS: set security = "tls"' in (
        config_warnings(config)
    )


def test_union_keys_report_one_clean_path(tmp_path):
    """A wrong type for a key that takes one-or-many names the key, not pydantic's internals."""
    body = """
    [sinks.crm]
    type = "webhook"
    url = "https://crm.example.com/hook"
    signing_secret = 5
    headers = { Authorization = 5 }
    """
    problems = _problems(tmp_path, body)
    assert problems == [
        "sinks.crm.headers.Authorization: input should be a valid string (got an integer)",
        "sinks.crm.signing_secret: input should be a valid string (got an integer), "
        "or input should be a valid array (got an integer)",
    ]


def test_a_missing_tls_ca_file_is_reported_at_load(tmp_path):
    """A sink naming a file that does not exist fails relay check, not the first send."""
    body = """
    [sinks.mail]
    type = "email"
    host = "127.0.0.1"
    from = "relay@example.com"
    to = "ops@example.com"
    tls_ca_file = "missing-ca.pem"
    """
    problems = _problems(tmp_path, body)
    assert problems == [f"sinks.mail.tls_ca_file: no such file: {tmp_path / 'missing-ca.pem'}"]


def test_an_unclosed_variable_is_an_error(tmp_path):
    """`${NAME` without its brace is a problem naming the key, not a literal host name."""
    problems = _problems(tmp_path, '[server]\nhost = "${NOPE_HOST"\n')
    assert problems == [
        "server.host: has an unclosed or invalid ${...}; write $${ for a literal ${"
    ]


def test_a_missing_templates_folder_is_a_warning(tmp_path):
    """A misspelt [templates].dir is pointed out, since only built-ins would be used."""
    config = load_config(write_config(tmp_path, '[templates]\ndir = "tempaltes"\n'), environ={})
    assert any(w.startswith("templates.dir:") for w in config_warnings(config))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[delivery]\ntimeout = inf\n", "delivery.timeout: input should be a finite number"),
        (
            "[delivery]\ninitial_backoff = 1e300\n",
            "delivery.initial_backoff: input should be less than or equal to 86400",
        ),
        (
            "[server]\nmax_failures_per_minute = true\n",
            "server.max_failures_per_minute: input should be a number, not a boolean",
        ),
        (
            '[logging]\nshow_personal_data = "yes"\n',
            "logging.show_personal_data: input should be a valid boolean",
        ),
        ("[server]\nport = 0\n", "server.port: input should be greater than or equal to 1"),
        ('[server]\npath = "/metrics"\n', 'server.path: "/metrics" is the relay\'s own endpoint'),
        (
            '[server.auth]\ntype = "basic"\nusername = "a:b"\npassword = "x"\n',
            'server.auth: username cannot contain ":"',
        ),
        (
            '[server.auth]\ntype = "header"\nheader = "X Relay: Token"\nvalue = "x"\n',
            'server.auth: "X Relay: Token" is not a valid header name',
        ),
        ("[metrics]\nport = 8080\n", "metrics.port: 8080 is also server.port"),
        (
            '[sinks.s]\ntype = "slack"\nwebhook_url = "https://h/x"\nrate = inf\n',
            "sinks.s.rate: input should be a finite number",
        ),
    ],
)
def test_absurd_values_are_refused_with_their_path(tmp_path, body, expected):
    """Infinite, enormous, boolean-for-number and self-defeating values are config errors."""
    problems = _problems(tmp_path, body)
    assert any(p.startswith(expected) for p in problems), problems


def test_self_defeating_access_settings_are_warned_about(tmp_path):
    """Trusting every proxy, or listing the current secret as a previous one, gets a warning."""
    body = f'previous_secrets = ["{SECRET}"]\n[server]\ntrusted_proxies = ["0.0.0.0/0"]\n'
    config = load_config(write_config(tmp_path, body), environ={})
    warnings = config_warnings(config)
    assert any(
        w.startswith("dataslayer.previous_secrets: holds the current secret") for w in warnings
    )
    assert any(w.startswith("server.trusted_proxies: trusts every address") for w in warnings)


def test_unknown_route_sinks_are_listed_with_the_other_problems(tmp_path):
    """An unknown sink in a route is reported in the same pass as a type error elsewhere."""
    problems = _problems(tmp_path, '[server]\nport = "x"\n[[routes]]\nsinks = ["ghost"]\n')
    assert any(p.startswith("server.port:") for p in problems)
    assert 'routes[0].sinks[0]: unknown sink "ghost"' in problems


def test_every_registered_sink_type_loads_and_names_itself():
    """Each entry of the lazy registry imports to a Sink class whose `type` is its key."""
    from relay.sinks import SINK_TYPES, Sink

    assert sorted(SINK_TYPES) == ["console", "email", "slack", "webhook"]
    for kind, cls in SINK_TYPES.items():
        assert issubclass(cls, Sink)
        assert cls.type == kind


def test_route_patterns_that_cannot_match_dataslayer_ids_are_warnings(tmp_path):
    """A display name, a stray space or an unclosed [ in a route is warned about, by its path;
    ids and globs are not."""
    body = """
    [sinks.out]
    type = "console"
    [[routes]]
    datasource = ["google_ads", "*_ads", "Google Ads", "facebook_ads ", "["]
    type = "shared connection"
    sinks = ["out"]
    """
    config = load_config(write_config(tmp_path, body), environ={})
    assert [w for w in config_warnings(config) if w.startswith("routes")] == [
        'routes[0].datasource: "Google Ads" has a space; Dataslayer sends ids without them '
        '(did you mean "google_ads"?)',
        'routes[0].datasource: "facebook_ads " has a leading or trailing space, so it never '
        'matches "facebook_ads"',
        'routes[0].datasource: "[" has an unclosed "[", which matches only a literal "["',
        'routes[0].type: "shared connection" has a space; Dataslayer sends ids without them '
        '(did you mean "shared_connection"?)',
    ]


def test_route_keys_take_a_string_or_a_list(tmp_path):
    """datasource, type and sinks (in routes and fallback) take one string or a list; anything
    else, or no sink at all, is a problem in plain words."""
    body = """
    [sinks.c]
    type = "console"
    [[routes]]
    sinks = "c"
    [fallback]
    sinks = "c"
    """
    config = load_config(write_config(tmp_path, body), environ={})
    assert (config.routes[0].sinks, config.fallback) == (("c",), ("c",))
    broken = """
    [sinks.c]
    type = "console"
    [[routes]]
    datasource = 5
    sinks = "c"
    [[routes]]
    sinks = []
    """
    assert _problems(tmp_path, broken) == [
        "routes[0].datasource: must be a string or a list of strings",
        "routes[1].sinks: must name at least one sink",
    ]


def test_an_empty_server_host_is_an_error_not_every_interface(tmp_path):
    """host = "" (an empty ${VAR:-}) would listen on every interface: refused, with the way to
    ask for that."""
    assert _problems(tmp_path, '[server]\nhost = "${LISTEN_ON:-}"\n') == [
        'server.host: is empty; give an address, e.g. "127.0.0.1", or "0.0.0.0" for every one'
    ]


def test_the_demo_secret_is_refused_where_others_can_post(tmp_path):
    """The public demo secret works on loopback (to try the relay) but not on every interface,
    where anyone who read the README could send events."""
    body = '[server]\nhost = "0.0.0.0"\n'
    assert _problems(tmp_path, body, secret=DEMO_SECRET) == [
        "dataslayer.secret: the public demo secret cannot be used while listening on 0.0.0.0; "
        "set DATASLAYER_SECRET to the secret from Dataslayer's Developers page (or listen on "
        '"127.0.0.1" to try the relay out)'
    ]
    for host in ("127.0.0.1", "localhost", "::1"):
        path = write_config(tmp_path, f'[server]\nhost = "{host}"\n', secret=DEMO_SECRET)
        assert load_config(path, environ={}).uses_demo_secret


def test_a_config_saved_with_a_byte_order_mark_loads(tmp_path):
    """A UTF-8 BOM at the start (as some Windows editors write) is not a TOML error."""
    path = write_config(tmp_path, '[sinks.out]\ntype = "console"\n')
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert "out" in load_config(path, environ={}).sinks


def test_a_templates_dir_that_is_a_file_is_named_as_such(tmp_path):
    """templates.dir naming a file says it is not a folder, rather than that it does not exist."""
    (tmp_path / "templates.txt").write_text("")
    config = load_config(write_config(tmp_path, '[templates]\ndir = "templates.txt"\n'), environ={})
    assert any(
        w.startswith("templates.dir: ") and w.endswith("templates.txt is not a folder; only the "
        "built-in templates are used") for w in config_warnings(config)
    )  # fmt: skip
