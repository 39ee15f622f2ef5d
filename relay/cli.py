"""The ``relay`` command: serve, check, preview, send-test."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from relay import __version__, admin
from relay.admin_settings import OutboxSettings, outbox_settings
from relay.checks import all_warnings, load_config_listing_all, template_problems
from relay.config import Config, default_config_path
from relay.crypto import encrypt
from relay.errors import ConfigError, EventError, StorageError, TemplateError
from relay.events import SAMPLE_EVENT, Event, event_from_dict, reject_constant
from relay.logs import setup_logging
from relay.render import Renderer
from relay.routing import Router
from relay.server import serve
from relay.sinks import SINK_TYPES

log = logging.getLogger("relay")
SQLITE_HEADER = b"SQLite format 3\x00"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result: int = args.func(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`relay preview | head`): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay",
        description="Relays Dataslayer's encrypted webhooks to Slack, email and webhooks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "-c",
            "--config",
            type=Path,
            default=None,
            help="config file (default: $RELAY_CONFIG, else ./config.toml)",
        )
        if func is not None:
            sub.set_defaults(func=func)
        return sub

    command("serve", cmd_serve, "run the relay")
    command("check", cmd_check, "validate the config, secrets and every template")
    preview = command(
        "preview", cmd_preview, "print what each routed sink would send; sends nothing"
    )
    preview.add_argument("--sink", help="only this sink (routed or not)")
    preview.add_argument("event", nargs="?", help="event JSON file, or - for standard input")
    send = command(
        "send-test", cmd_send_test, "encrypt a test event as Dataslayer does and POST it"
    )
    send.add_argument("--url", help="default: the [server] address and path")
    send.add_argument("--datasource", default="google_ads")
    send.add_argument("--email", default="test.client@example.com")
    send.add_argument("--type", default="shared_connection")
    _outbox_commands(command("outbox", None, "inspect and act on stored deliveries"))
    return parser


_OUTBOX_HELP = """\
These commands read only [storage].path, [dataslayer].dedup_window and max_clock_skew, and the
sink names from the config, leniently: ${VARS} that are not set (DATASLAYER_SECRET in an
operator's shell) and mistakes elsewhere in the file do not stop them; `relay check` validates
the rest. --db names the database directly. They work beside a running relay."""


def _outbox_commands(outbox: argparse.ArgumentParser) -> None:
    outbox.epilog = _OUTBOX_HELP
    sub = outbox.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="list deliveries, newest events first")
    ls.add_argument("--status", choices=admin.STATUSES)
    ls.add_argument("--sink")
    ls.add_argument("--since", type=admin.parse_duration, help="e.g. 1h, 2d")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    show = sub.add_parser("show", help="an event and each delivery's attempts")
    show.add_argument("id", help="event id (8+ characters) or delivery id")
    show.add_argument(
        "--show-personal-data", action="store_true", help="do not mask email addresses"
    )
    show.add_argument("--json", action="store_true")
    retry = sub.add_parser("retry", help="requeue deliveries to be sent now")
    retry.add_argument("ids", nargs="*", help="event ids or delivery ids")
    retry.add_argument("--dead", action="store_true", help="every dead delivery")
    retry.add_argument("--sink", help="only deliveries to this sink")
    purge = sub.add_parser(
        "purge",
        help="delete old events that have nothing pending",
        description="Delete old events that have nothing pending. Events still inside "
        "[dataslayer].dedup_window (plus max_clock_skew) keep their id (a tombstone without "
        "personal data), so a replay is still refused.",
    )
    purge.add_argument("--older-than", type=admin.parse_duration, required=True, help="e.g. 7d")
    purge.add_argument(
        "--sink",
        help="only this sink's deliveries, pending ones too (e.g. a removed sink's), then the "
        "events left with no delivery",
    )
    for parser in (ls, show, retry, purge):
        parser.set_defaults(func=cmd_outbox)
        parser.epilog = _OUTBOX_HELP
        # Also after the action (`relay outbox list -c FILE`); SUPPRESS keeps an earlier -c.
        parser.add_argument(
            "-c", "--config", type=Path, default=argparse.SUPPRESS, help="config file"
        )
        parser.add_argument("--db", type=Path, help="the database (default: [storage].path)")


def _load(args: argparse.Namespace, exit_code: int) -> Config | int:
    path = args.config or default_config_path()
    try:
        return load_config_listing_all(path)
    except ConfigError as exc:
        print(f"{path}: invalid config:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return exit_code


# -- outbox ----------------------------------------------------------------------------------


def cmd_outbox(args: argparse.Namespace) -> int:
    if args.action == "retry" and not (args.ids or args.dead):
        print("say which: event or delivery ids, or --dead", file=sys.stderr)
        return 1
    path = args.config or default_config_path()
    try:
        settings = outbox_settings(
            path, os.environ, db=args.db, config_given=args.config is not None
        )
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return 1
    try:
        with admin.open_db(settings.db) as conn:
            text = _outbox_action(conn, args, settings)
        if text:  # `list --json` with no match prints nothing, not a blank line
            print(text)
    except admin.AdminError as exc:
        print(exc, file=sys.stderr)
        return 1
    except sqlite3.Error as exc:  # read-only file or folder, a damaged database...
        print(f"database error on {settings.db}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a folder on the way that this user may not enter, say
        print(f"cannot use the database {settings.db}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _outbox_action(conn: Any, args: argparse.Namespace, settings: OutboxSettings) -> str:
    now = admin.now()
    note = admin.unknown_sink_note(getattr(args, "sink", None), settings)
    if args.action == "list":
        since = now - args.since if args.since else 0.0
        rows = admin.list_deliveries(
            conn, status=args.status, sink=args.sink, since=since, limit=args.limit
        )
        if args.json:
            return "\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
        return admin.format_list(rows, now, note)
    if args.action == "show":
        detail = admin.show_event(conn, args.id, args.show_personal_data)
        return (
            json.dumps(detail, ensure_ascii=False) if args.json else admin.format_event(detail, now)
        )
    if args.action in ("retry", "purge"):
        admin.require_sink(conn, args.sink, settings)
    if args.action == "retry":
        result = admin.retry(conn, args.ids, dead=args.dead, sink=args.sink, now=now)
        for warning in admin.unconfigured(result, settings):
            print(warning, file=sys.stderr)
        return admin.describe_retry(result, note)
    return _outbox_purge(conn, args, settings, now, note)


def _outbox_purge(
    conn: Any, args: argparse.Namespace, settings: OutboxSettings, now: float, note: str
) -> str:
    window = settings.remember_for
    if args.sink is None:
        n = admin.purge_older(conn, args.older_than, now, window)
        return f"purged {n} event{'' if n == 1 else 's'}"
    deliveries, n = admin.purge_sink_older(conn, args.sink, args.older_than, now, window)
    done = f"purged {admin.deliveries(deliveries)} to {args.sink} and {n} event{'s' * (n != 1)}"
    return done + (note if deliveries == 0 else "")


# -- serve -------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args, exit_code=2)
    if isinstance(config, int):
        return config
    setup_logging(config.logging.level, config.logging.format, config.logging.show_personal_data)
    try:
        renderer = Renderer(config.templates.dir, config.templates.timezone)
        problems = template_problems(config, renderer)
    except ValueError as exc:
        renderer, problems = None, [f"templates: {exc}"]
    if problems:
        print(f"{config.path}: template problems:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    _warn(config)
    s = config.server
    sinks = ", ".join(f"{n} ({c.type})" for n, c in config.sinks.items()) or "none"

    def announce() -> None:
        log.info(
            "relay %s listening on http://%s:%d%s; sinks: %s",
            __version__,
            s.host,
            s.port,
            s.path,
            sinks,
        )

    try:
        asyncio.run(serve(config, announce, renderer))
    except StorageError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", s.host, s.port, exc.strerror or exc)
        return 1
    return 0


def _warn(config: Config) -> None:
    for warning in all_warnings(config):
        if config.uses_demo_secret and warning.startswith("dataslayer.secret"):
            log.warning("*" * 72)
            log.warning("%s", warning)
            log.warning("*" * 72)
        else:
            log.warning("%s", warning)


# -- check -------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    path = args.config or default_config_path()
    try:
        config = load_config_listing_all(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        return 1
    problems = _storage_problems(config) + template_problems(config)
    for text in problems:
        print(text)
    for warning in all_warnings(config):
        print(f"warning: {warning}")
    if problems:
        return 1
    sinks, routes = len(config.sinks), len(config.routes)
    print(f"ok: {path} ({sinks} sink{'s' * (sinks != 1)}, {routes} route{'s' * (routes != 1)})")
    return 0


def _storage_problems(config: Config) -> list[str]:
    """Can the relay create or write its database where the config says?"""
    path = config.storage.path
    if path.is_dir():
        return [f"storage.path: {path} is a folder; name a file, e.g. {path / 'relay.db'}"]
    folder = next((p for p in (path, *path.parents) if p.exists()), None)
    if path.exists() and not _looks_like_sqlite(path):
        return [f"storage.path: {path} is not an SQLite database; name another file"]
    if path.exists():
        writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
    else:
        writable = folder is not None and folder.is_dir() and os.access(folder, os.W_OK)
    if not writable:
        return [f"storage.path: cannot create or write {path} (check the folder and permissions)"]
    return []


def _looks_like_sqlite(path: Path) -> bool:
    """An SQLite file starts with its format's header; an empty file becomes one."""
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError:
        return True  # unreadable: the writability check says so
    return head in (b"", SQLITE_HEADER)


# -- preview -----------------------------------------------------------------------------------


def cmd_preview(args: argparse.Namespace) -> int:
    config = _load(args, exit_code=1)
    if isinstance(config, int):
        return config
    try:
        event = _read_event(args.event)
    except (OSError, ValueError, EventError) as exc:
        print(f"cannot read the event: {exc}", file=sys.stderr)
        return 1
    routed, by_fallback = _route(config, event)
    names = _preview_sinks(config, routed, args.sink)
    if isinstance(names, int):
        return names
    renderer = Renderer(config.templates.dir, config.templates.timezone)
    failed = False
    for name in names:
        label = " (fallback)" if by_fallback and name in routed else ""
        failed |= not _preview_one(renderer, config, name, event, label)
    return 1 if failed else 0


def _read_event(source: str | None) -> Event:
    """The event to preview; ValueError says what is wrong with the file."""
    if source is None:
        return event_from_dict(dict(SAMPLE_EVENT), received_at=time.time())
    name = "standard input" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"no such file: {source}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{name} is not UTF-8 text") from None
    try:
        data = json.loads(text, parse_constant=reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ValueError(
            f"{name} is not JSON ({exc})" if text.strip() else f"{name} is empty"
        ) from None
    return event_from_dict(data, received_at=time.time())


def _preview_sinks(config: Config, routed: list[str], only: str | None) -> list[str] | int:
    if only is not None:
        if only not in config.sinks:
            print(f'no sink named "{only}"; sinks: {", ".join(config.sinks)}', file=sys.stderr)
            return 1
        if only not in routed:  # still rendered: the template is what is being worked on
            goes = (
                f"it goes to: {', '.join(routed)}" if routed else "no route or fallback matches it"
            )
            print(
                f"note: sink {only} would not receive this event: it is not routed there ({goes})",
                file=sys.stderr,
            )
        return [only]
    if not routed:
        print("no route or fallback matches this event: nothing would be sent", file=sys.stderr)
    return routed


def _route(config: Config, event: Event) -> tuple[list[str], bool]:
    """The sinks ``event`` goes to, routed as the server does, and whether they are [fallback]'s."""
    router = Router(config.routes, config.fallback)
    matched = router.matched(event)
    return (matched, False) if matched else (router.sinks_for(event), True)


def _preview_one(
    renderer: Renderer, config: Config, name: str, event: Event, label: str = ""
) -> bool:
    sink = config.sinks[name]
    print(f"=== {name} ({sink.type}){label} ===")
    try:
        parts = renderer.render(
            sink_name=name,
            sink_type=sink.type,
            parts=SINK_TYPES[sink.type].parts,
            template=sink.template,
            event=event,
        )
    except TemplateError as exc:
        print(f"template error: {exc}")
        return False
    sink_class = SINK_TYPES[sink.type]
    refused = sink_class.refusal(parts)
    if refused is not None:
        print(f"would be refused: {refused[1]}")
        return False
    for part, text in sink_class.as_sent(parts).items():  # as sent: fitted to the limits
        print(f"--- {part} ---\n{text}")
    return True


# -- send-test ---------------------------------------------------------------------------------


def cmd_send_test(args: argparse.Namespace) -> int:
    config = _load(args, exit_code=1)
    if isinstance(config, int):
        return config
    url = args.url or _local_url(config)
    if not url.startswith(("http://", "https://")):
        print(f'--url must be an http:// or https:// URL, not "{url}"', file=sys.stderr)
        return 1
    event = {
        "type": args.type,
        "datasource": args.datasource,
        "email": args.email,
        "created": int(time.time()),
    }
    token = encrypt(config.dataslayer.secret.reveal(), json.dumps(event).encode("utf-8"))
    try:
        status, text = asyncio.run(
            _post(url, {"encrypted_data": token}, config.delivery.timeout, _auth_headers(config))
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(
            f"cannot reach {url}: {exc or type(exc).__name__} (is `relay serve` running?)",
            file=sys.stderr,
        )
        return 1
    print(f"{status} {text}")
    if status == 200 and _accepted(text):
        print(_routing_note(config, event), file=sys.stderr)
    elif status == 401 and '"invalid_token"' in text:
        print(_secret_hint(config), file=sys.stderr)
    elif status == 401:
        print(
            "hint: the server asks for credentials ([server.auth]); send-test sends those of "
            f"{config.path}, so both must have the same [server.auth]",
            file=sys.stderr,
        )
    return 0 if 200 <= status < 300 else 1


def _accepted(text: str) -> bool:
    """Did the relay store the event as new? A duplicate was routed when first accepted."""
    try:
        answer = json.loads(text)
    except ValueError:
        return False
    return isinstance(answer, dict) and answer.get("status") == "accepted"


def _routing_note(config: Config, data: dict[str, Any]) -> str:
    """Where the relay sends the test event, by this config's routes: a 200 alone does not say
    that it goes nowhere (only the server's log does)."""
    event = event_from_dict(data, received_at=time.time())
    names, by_fallback = _route(config, event)
    if names:
        return f"routed to: {', '.join(names)}" + (" (fallback)" if by_fallback else "")
    source = f'datasource "{event.datasource}"' if event.datasource else "no datasource"
    return (
        f'note: no route or [fallback] in {config.path} matches type "{event.type}", {source}:'
        " the relay stored it but sends it nowhere"
    )


def _secret_hint(config: Config) -> str:
    which = (
        "the demo secret, as DATASLAYER_SECRET is not set here"
        if config.uses_demo_secret
        else ("[dataslayer].secret")
    )
    return (
        f"hint: send-test encrypted with {which} (from {config.path}); the server must use "
        "the same secret: export the same DATASLAYER_SECRET in both shells"
    )


def _local_url(config: Config) -> str:
    host = config.server.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - mapping a wildcard bind to loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.server.port}{config.server.path}"


def _auth_headers(config: Config) -> dict[str, str]:
    """The credentials [server.auth] asks for, so send-test passes them as a proxy would."""
    auth = config.server.auth
    if auth is None:
        return {}
    if auth.type == "basic" and auth.username and auth.password:
        pair = f"{auth.username}:{auth.password.reveal()}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    if auth.header and auth.value:
        return {auth.header: auth.value.reveal()}
    return {}


async def _post(
    url: str, body: dict[str, str], seconds: float, headers: dict[str, str]
) -> tuple[int, str]:
    client_timeout = aiohttp.ClientTimeout(total=seconds)
    async with (
        aiohttp.ClientSession(timeout=client_timeout) as session,
        session.post(url, json=body, headers=headers) as response,
    ):
        return response.status, (await response.text()).strip()
