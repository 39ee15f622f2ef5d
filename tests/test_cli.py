"""The relay command: check, preview, send-test and serve, run as a user runs them."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from relay import __version__
from relay.cli import main
from tests.helpers import write_config

ROOT = Path(__file__).resolve().parents[1]


def run_relay(*args, stdin=None, timeout=30):
    env = {**os.environ, "DATASLAYER_SECRET": ""}
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_passes_on_the_shipped_config(capsys):
    """relay check exits 0 on config.toml and warns about the demo secret."""
    assert main(["check", "-c", str(ROOT / "config.toml")]) == 0
    out = capsys.readouterr().out
    assert "ok:" in out
    assert "demo secret" in out


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[server]\nprot = 1\n", 'server.prot: unknown key (did you mean "port"?)'),
        ('[delivery]\ntimeout = "x"\n', "delivery.timeout: input should be a valid number"),
        ('[[routes]]\nsinks = ["ghost"]\n', 'routes[0].sinks[0]: unknown sink "ghost"'),
        (
            '[sinks.s]\ntype = "slack"\nwebhook_url = "${NOT_SET_ANYWHERE}"\n',
            "sinks.s.webhook_url: environment variable NOT_SET_ANYWHERE is not set",
        ),
    ],
    ids=["misspelt", "wrong-type", "unknown-sink", "unset-variable"],
)
def test_check_fails_with_one_line_per_problem(tmp_path, capsys, body, expected):
    """Each broken config makes check exit 1 and print the problem with its path."""
    assert main(["check", "-c", str(write_config(tmp_path, body))]) == 1
    lines = capsys.readouterr().out.splitlines()
    problems = [line for line in lines if not line.startswith("warning:")]
    assert len(problems) == 1
    assert problems[0].startswith(expected)


def test_check_reports_a_broken_template_with_its_line(tmp_path, capsys):
    """A user template with an undefined name fails check with template name and line."""
    folder = tmp_path / "templates" / "shared_connection"
    folder.mkdir(parents=True)
    (folder / "console.text.j2").write_text("Hello\n{{ nobody }}\n")
    config = write_config(tmp_path, '[sinks.out]\ntype = "console"\n')
    assert main(["check", "-c", str(config)]) == 1
    out = capsys.readouterr().out
    assert "sinks.out:" in out
    assert "shared_connection/console.text.j2, line 2" in out
    assert "nobody" in out


def test_preview_prints_what_each_routed_sink_would_send(capsys):
    """preview renders the sample event for the shipped console sink, sending nothing."""
    assert main(["preview", "-c", str(ROOT / "config.toml")]) == 0
    out = capsys.readouterr().out
    assert "=== stdout (console) ===" in out
    assert "ana.lopez@example.com" in out
    assert "Google Ads" in out


def test_preview_reads_an_event_from_stdin():
    """preview - reads the event JSON from standard input."""
    event = '{"type": "shared_connection", "datasource": "ga4", "email": "z@example.com"}'
    result = run_relay("preview", "-c", "config.toml", "-", stdin=event)
    assert result.returncode == 0, result.stderr
    assert "Google Analytics 4" in result.stdout
    assert "z@example.com" in result.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "the event is an array, not a JSON object"),
        ("", "event.json is empty"),
        ("nope", "event.json is not JSON (Expecting value"),
        ('\ufeff{"type": "x"}', None),
        (None, "no such file: "),
    ],
    ids=["array", "empty", "not-json", "bom", "missing"],
)
def test_preview_of_odd_event_files_is_a_clear_error(tmp_path, content, message):
    """Files that are not an event are refused with a reason, never a traceback; a BOM is fine."""
    path = tmp_path / "event.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    result = run_relay("preview", "-c", "config.toml", str(path))
    assert "Traceback" not in result.stderr
    if message is None:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 1
        assert message in result.stderr


def test_serve_exits_2_on_an_invalid_config(tmp_path):
    """serve refuses a broken config with exit code 2 and every problem listed."""
    config = write_config(tmp_path, "[server]\nport = 99999\nhots = 1\n")
    result = run_relay("serve", "-c", str(config))
    assert result.returncode == 2
    assert "server.port" in result.stderr
    assert "server.hots" in result.stderr
    assert "Traceback" not in result.stderr


def test_send_test_reaches_serve_and_the_console_shows_the_message(tmp_path):
    """The README flow: serve the shipped-style config, send-test, see the message printed."""
    port = free_port()
    config = tmp_path / "config.toml"
    shipped = (ROOT / "config.toml").read_text()
    config.write_text(shipped.replace("port = 8080", f"port = {port}"))
    env = {**os.environ, "DATASLAYER_SECRET": ""}
    server = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        result = _send_test_when_up(config)
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert '"status": "accepted"' in result.stdout
        _wait_until_delivered(tmp_path / "relay.db")
    finally:
        server.terminate()
        out, err = server.communicate(timeout=20)
    assert "New data source connected" in out
    assert "test.client@example.com" in out
    assert "demo secret" in err
    assert "test.client@example.com" not in err  # logs mask personal data


def _wait_until_delivered(db, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'")
            if row.fetchone()[0]:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing was delivered within {timeout} s")


def _send_test_when_up(config):
    deadline = time.monotonic() + 15
    while True:
        result = run_relay("send-test", "-c", str(config), timeout=15)
        if result.returncode == 0 or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_check_and_serve_refuse_a_database_path_that_is_a_folder(tmp_path, capsys):
    """check names storage.path; serve exits 1 with one clear line, no traceback."""
    config = write_config(tmp_path, f'[storage]\npath = "{tmp_path}"\n')
    assert main(["check", "-c", str(config)]) == 1
    assert f"storage.path: {tmp_path} is a folder" in capsys.readouterr().out
    result = run_relay("serve", "-c", str(config))
    assert result.returncode == 1
    assert "cannot start: cannot open the database" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_second_relay_on_the_same_database_is_refused(tmp_path):
    """Two relays on one database would send everything twice; the second one refuses to start."""
    port = free_port()
    config = write_config(tmp_path, f"[server]\nport = {port}\n")
    with serving(config, port):
        (tmp_path / "second").mkdir()
        body = f'[server]\nport = {free_port()}\n[storage]\npath = "{tmp_path / "relay.db"}"\n'
        second = write_config(tmp_path / "second", body)
        result = run_relay("serve", "-c", str(second))
    assert result.returncode == 1
    assert "another relay is already serving from" in result.stderr


def test_preview_piped_into_head_exits_quietly():
    """A closed stdout (``relay preview | head -1``) is not a traceback."""
    with subprocess.Popen(
        [sys.executable, "-m", "relay", "preview", "-c", "config.toml"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    ) as proc:  # fmt: skip
        proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read().decode()
        proc.wait(timeout=20)
    assert "Traceback" not in err


@contextlib.contextmanager
def serving(config, port):
    """`relay serve -c config` in the background until the block ends."""
    env = {**os.environ, "DATASLAYER_SECRET": ""}
    server = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "-c", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        _wait_for_port(port)
        yield server
    finally:
        server.terminate()
        server.wait(timeout=20)


def _wait_for_port(port):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def test_send_test_explains_a_401_and_refuses_a_bad_url(tmp_path):
    """A 401 comes with a hint about the secret; a URL without a scheme is refused up front."""
    result = run_relay("send-test", "-c", "config.toml", "--url", "notaurl")
    assert result.returncode == 1
    assert 'must be an http:// or https:// URL, not "notaurl"' in result.stderr
    port = free_port()
    config = write_config(tmp_path, f"[server]\nport = {port}\n")  # the vectors' secret
    with serving(config, port):
        url = f"http://127.0.0.1:{port}/webhooks/dataslayer"
        result = run_relay("send-test", "-c", "config.toml", "--url", url)  # the demo secret
    assert result.returncode == 1
    assert result.stdout.startswith("401 ")
    assert "hint: send-test encrypted with the demo secret" in result.stderr


def test_the_readme_template_example_gives_a_text_only_slack_message(tmp_path, capsys):
    """README "Adding a template": the sink sends the one-line text and no blocks."""
    folder = tmp_path / "templates" / "ads-short"
    folder.mkdir(parents=True)
    (folder / "slack.text.j2").write_text(
        '<!here> {{ email or "Someone" }} connected *{{ datasource_name or "a data source" }}*.\n'
    )
    (folder / "slack.blocks.j2").write_text("{# text only: no blocks #}\n")
    body = """
    [sinks.ads-slack]
    type = "slack"
    webhook_url = "https://hooks.slack.com/services/T/B/x"
    template = "ads-short"
    [[routes]]
    datasource = "*_ads"
    sinks = ["ads-slack"]
    """
    config = str(write_config(tmp_path, body))
    assert main(["check", "-c", config]) == 0
    capsys.readouterr()
    assert main(["preview", "-c", config]) == 0
    out = capsys.readouterr().out
    assert "=== ads-slack (slack) ===" in out
    assert "<!here> ana.lopez@example.com connected *Google Ads*." in out
    assert "--- blocks ---" not in out


def test_send_test_passes_the_configured_credentials(tmp_path):
    """With [server.auth] in its config, send-test sends the credentials and is accepted."""
    port = free_port()
    body = (
        f'[server]\nport = {port}\n[server.auth]\ntype = "basic"\n'
        'username = "dataslayer"\npassword = "pa55-word"\n'
    )
    config = write_config(tmp_path, body)
    with serving(config, port):
        result = run_relay("send-test", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert '"status": "accepted"' in result.stdout


def test_serve_exits_2_naming_a_broken_template_and_its_line(tmp_path):
    """serve refuses to start on a user template that does not render, naming it and the line."""
    folder = tmp_path / "templates" / "shared_connection"
    folder.mkdir(parents=True)
    (folder / "console.text.j2").write_text("Hello\n{{ nobody }}\n")
    body = f'[server]\nport = {free_port()}\n[sinks.out]\ntype = "console"\n'
    config = write_config(tmp_path, body)
    result = run_relay("serve", "-c", str(config), timeout=20)
    assert result.returncode == 2
    assert "template problems:" in result.stderr
    assert "shared_connection/console.text.j2, line 2" in result.stderr
    assert "nobody" in result.stderr
    assert "listening on" not in result.stderr
    assert "Traceback" not in result.stderr


def test_version_prints_the_installed_version():
    """relay --version prints "relay <version>" and exits 0."""
    result = run_relay("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"relay {__version__}\n"
    assert __version__ == importlib.metadata.version("dataslayer-relay")


def email_and_webhook_config(tmp_path):
    """A config routing every event to one email sink and one webhook sink."""
    body = """
    [sinks.mail]
    type = "email"
    host = "smtp.example.com"
    port = 587
    security = "starttls"
    from = "Relay <relay@example.com>"
    to = "ops@example.com"
    [sinks.crm]
    type = "webhook"
    url = "https://crm.example.com/hook"
    [[routes]]
    sinks = ["mail", "crm"]
    """
    return str(write_config(tmp_path, body))


def test_check_warns_about_ports_that_do_not_match_the_email_security(tmp_path, capsys):
    """Port 465 with starttls and 587 with tls each get a warning; warnings do not fail check."""
    body = """
    [sinks.implicit]
    type = "email"
    host = "smtp.example.com"
    port = 465
    security = "starttls"
    from = "relay@example.com"
    to = "ops@example.com"
    [sinks.submission]
    type = "email"
    host = "smtp.example.com"
    port = 587
    security = "tls"
    from = "relay@example.com"
    to = "ops@example.com"
    [[routes]]
    sinks = ["implicit", "submission"]
    """
    assert main(["check", "-c", str(write_config(tmp_path, body))]) == 0
    lines = capsys.readouterr().out.splitlines()
    warnings = [line for line in lines if line.startswith("warning: sinks.")]
    assert warnings == [
        'warning: sinks.implicit: port 465 is usually implicit TLS: set security = "tls"',
        'warning: sinks.submission: port 587 usually expects STARTTLS: set security = "starttls"',
    ]
    assert lines[-1].startswith("ok: ")
    assert lines[-1].endswith("(2 sinks, 1 route)")


def test_check_renders_email_and_webhook_templates(tmp_path, capsys):
    """check passes a config with an email and a webhook sink, with no warning about either."""
    assert main(["check", "-c", email_and_webhook_config(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sinks." not in out
    assert out.splitlines()[-1].endswith("(2 sinks, 1 route)")


def test_check_names_a_broken_email_or_webhook_template(tmp_path, capsys):
    """A user email html or webhook body template that fails is reported for its sink."""
    folder = tmp_path / "templates" / "shared_connection"
    folder.mkdir(parents=True)
    (folder / "email.html.j2").write_text("<p>{{ nobody }}</p>\n")
    (folder / "webhook.body.j2").write_text('{"a": 1,\n"b": {{ missing }}}\n')
    assert main(["check", "-c", email_and_webhook_config(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "sinks.mail:" in out
    assert "shared_connection/email.html.j2, line 1" in out
    assert "sinks.crm:" in out
    assert "shared_connection/webhook.body.j2, line 2" in out


def test_preview_shows_the_email_parts_and_the_webhook_json(tmp_path, capsys):
    """preview prints the email's subject, text and html, and the webhook's JSON body."""
    assert main(["preview", "-c", email_and_webhook_config(tmp_path)]) == 0
    out = capsys.readouterr().out
    mail, crm = out.split("=== crm (webhook) ===\n")
    assert mail.startswith("=== mail (email) ===\n--- subject ---\n")
    subject, rest = mail.removeprefix("=== mail (email) ===\n--- subject ---\n").split(
        "\n--- text ---\n"
    )
    text, html = rest.split("\n--- html ---\n")
    assert subject == "New data source connected: Google Ads by ana.lopez@example.com"
    assert "Client:       ana.lopez@example.com" in text
    assert "Data source:  Google Ads (google_ads)" in text
    assert html.startswith("<!DOCTYPE html>")
    assert html.rstrip().endswith("</html>")
    assert '<td valign="top" style="padding:6px 0;">ana.lopez@example.com</td>' in html
    assert crm.startswith("--- body ---\n")
    body = json.loads(crm.removeprefix("--- body ---\n"))
    assert body["type"] == "shared_connection"
    assert body["data"] == {
        "type": "shared_connection",
        "datasource": "google_ads",
        "email": "ana.lopez@example.com",
        "created": 1733240000,
    }


def routed_and_fallback_config(tmp_path, fallback=True, port=8080):
    """Console sinks: "ga" gets ga4 events by a route, "rest" gets the others by [fallback]."""
    body = f"""
    [server]
    port = {port}
    [sinks.ga]
    type = "console"
    [sinks.rest]
    type = "console"
    [[routes]]
    datasource = "ga4"
    sinks = ["ga"]
    """
    return write_config(tmp_path, body + ('[fallback]\nsinks = ["rest"]\n' if fallback else ""))


def test_send_test_says_when_its_event_is_sent_nowhere(tmp_path):
    """An accepted test event no route or fallback matches gets a note on stderr and exit 0."""
    port = free_port()
    config = routed_and_fallback_config(tmp_path, fallback=False, port=port)
    with serving(config, port):
        result = run_relay("send-test", "-c", str(config), "--datasource", "google_ads")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('200 {"status": "accepted"')
    assert result.stderr == (
        f'note: no route or [fallback] in {config} matches type "shared_connection", '
        'datasource "google_ads": the relay stored it but sends it nowhere\n'
    )


def test_send_test_names_the_sinks_its_event_is_routed_to(tmp_path):
    """An accepted test event is followed by the sinks it goes to, [fallback]'s marked so."""
    port = free_port()
    config = routed_and_fallback_config(tmp_path, port=port)
    with serving(config, port):
        routed = run_relay("send-test", "-c", str(config), "--datasource", "ga4")
        fallen = run_relay("send-test", "-c", str(config), "--datasource", "google_ads")
    assert (routed.returncode, routed.stderr) == (0, "routed to: ga\n")
    assert (fallen.returncode, fallen.stderr) == (0, "routed to: rest (fallback)\n")


def test_preview_of_a_sink_the_event_does_not_reach_says_so_and_renders_it(tmp_path, capsys):
    """preview --sink of a sink the event is not routed to notes it on stderr and still renders."""
    config = str(routed_and_fallback_config(tmp_path))
    assert main(["preview", "-c", config, "--sink", "ga"]) == 0
    out, err = capsys.readouterr()
    assert err == (
        "note: sink ga would not receive this event: it is not routed there (it goes to: rest)\n"
    )
    assert out.startswith("=== ga (console) ===\n--- text ---\n")
    assert "ana.lopez@example.com" in out


def test_preview_marks_the_sinks_an_event_reaches_by_fallback(tmp_path, capsys):
    """A sink reached through [fallback] has "(fallback)" in its header; a routed one does not."""
    config = str(routed_and_fallback_config(tmp_path))
    event = tmp_path / "ga4.json"
    event.write_text('{"type": "shared_connection", "datasource": "ga4"}')
    for args, header in [
        ([], "=== rest (console) (fallback) ===\n"),
        (["--sink", "rest"], "=== rest (console) (fallback) ===\n"),
        ([str(event)], "=== ga (console) ===\n"),
    ]:
        assert main(["preview", "-c", config, *args]) == 0
        out, err = capsys.readouterr()
        assert (out.count("==="), err) == (2, "")
        assert out.startswith(header)


SLACK_SINK = (
    '[sinks.team]\ntype = "slack"\nwebhook_url = "https://hooks.slack.com/services/T/B/x"\n'
    '[[routes]]\nsinks = ["team"]\n'
)


def _user_template(tmp_path, name, text):
    path = tmp_path / "templates" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_preview_shows_slack_output_as_sent_after_fitting_the_limits(tmp_path, capsys):
    """A 5,000-character section is cut to Slack's 3,000 in what preview shows, as in what is
    sent; blocks within the limits are shown as the template wrote them."""
    _user_template(
        tmp_path,
        "shared_connection/slack.blocks.j2",
        '[{"type": "section", "text": {"type": "mrkdwn", "text": "' + "x" * 5000 + '"}}]',
    )
    config = write_config(tmp_path, SLACK_SINK)
    assert main(["preview", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    blocks = json.loads(out.split("--- blocks ---\n", 1)[1])
    assert len(blocks[0]["text"]["text"]) == 3000
    assert blocks[0]["text"]["text"].endswith("…")


def test_preview_says_when_slack_would_refuse_the_message(tmp_path, capsys):
    """Blocks that are not a JSON array: preview says the message would be refused, exit 1."""
    _user_template(tmp_path, "shared_connection/slack.blocks.j2", '{"type": "section"}')
    config = write_config(tmp_path, SLACK_SINK)
    assert main(["preview", "-c", str(config)]) == 1
    assert "would be refused: the blocks part is a JSON dict" in capsys.readouterr().out


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run the CLI as a user who may not write the database",
)
def test_outbox_commands_on_a_database_they_may_not_write_say_so(tmp_path):
    """retry and purge on a database the user may only read, or in a folder the user may not
    enter: one line and exit 1, no traceback."""
    shared = Path(tempfile.mkdtemp(prefix="relay-ro-", dir="/tmp"))  # reachable by nobody
    shared.chmod(0o755)
    readable = shared / "relay.db"
    sqlite3.connect(readable).close()
    main(["outbox", "list", "--db", str(readable)])  # creates the tables, as root
    readable.chmod(0o644)
    hidden = tmp_path / "relay.db"  # pytest's folders are root's alone
    hidden.write_bytes(readable.read_bytes())
    setpriv = shutil.which("setpriv") or "setpriv"
    cases = [
        (readable, ["retry", "--dead"]),
        (readable, ["purge", "--older-than", "1d"]),
        (hidden, ["list"]),
    ]
    for db, action in cases:
        result = subprocess.run(
            [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             sys.executable, "-m", "relay", "outbox", *action, "--db", str(db)],
            capture_output=True, text=True, timeout=30, cwd=ROOT,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        assert str(db) in result.stderr
    shutil.rmtree(shared)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run the relay as a user who may not write the database",
)
def test_serve_refuses_a_database_it_may_only_read(tmp_path):
    """A database file the relay's user may read but not write (its folder writable, so SQLite's
    lock files can be made) stops serve at start, instead of answering 503 to every post."""
    shared = Path(tempfile.mkdtemp(prefix="relay-ro-", dir="/tmp"))
    shared.chmod(0o777)
    db = shared / "relay.db"
    sqlite3.connect(db).close()
    main(["outbox", "list", "--db", str(db)])  # creates the tables, as root
    db.chmod(0o644)
    config = shared / "config.toml"
    config.write_text(
        f'[dataslayer]\nsecret = "{"s" * 32}"\n[server]\nport = {free_port()}\n'
        '[sinks.out]\ntype = "console"\n'
    )
    config.chmod(0o644)
    setpriv = shutil.which("setpriv") or "setpriv"
    result = subprocess.run(
        [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         sys.executable, "-m", "relay", "serve", "-c", str(config)],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    shutil.rmtree(shared)
    assert result.returncode == 1, result.stderr
    assert "cannot start: cannot open the database" in result.stderr
    assert "readonly database" in result.stderr
    assert "Traceback" not in result.stderr
