"""Validating a config completely: what ``relay check``, ``relay serve`` and a reload all run.

The config itself (``load_config``), then every template: compiled, and rendered against a
sample event for every sink and every event type that has templates or that the routes name, and
one type that has none (so the ``default/`` templates are rendered too).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from relay.config import Config, config_warnings, load_config
from relay.config_sections import TemplatesConfig
from relay.errors import ConfigError, Problem
from relay.events import SAMPLE_EVENT
from relay.render import BUILTIN_DIR, Renderer
from relay.sinks import SINK_TYPES


def load_config_listing_all(path: Path) -> Config:
    """``load_config``, whose ConfigError also lists the templates' syntax errors: a broken
    config should not hide a broken template until it is fixed."""
    try:
        return load_config(path)
    except ConfigError as exc:
        extra = [Problem("", text) for text in syntax_problems_beside(path)]
        raise ConfigError([*exc.problems, *extra]) from None


def syntax_problems_beside(path: Path) -> list[str]:
    """Template syntax errors in the templates folder the config at ``path`` names (read
    leniently, as the config has problems; the default folder when it cannot be read)."""
    folder = TemplatesConfig().dir
    try:
        named = tomllib.loads(path.read_text(encoding="utf-8-sig")).get("templates", {}).get("dir")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
        named = None
    if isinstance(named, str) and "${" not in named:
        folder = Path(named)
    try:
        return [str(p) for p in Renderer(path.parent / folder).compile_all(["none"])]
    except ValueError:
        return []


def load_checked(path: Path) -> tuple[Config, Renderer]:
    """The config at ``path`` and its renderer; ConfigError lists every problem, templates too."""
    config = load_config_listing_all(path)
    try:
        renderer = Renderer(config.templates.dir, config.templates.timezone)
    except ValueError as exc:
        raise ConfigError([Problem("templates", str(exc))]) from None
    problems = template_problems(config, renderer)
    if problems:
        raise ConfigError([Problem("", text) for text in problems])
    return config, renderer


def template_problems(config: Config, renderer: Renderer | None = None) -> list[str]:
    """One line per template that does not compile or render for a sink; [] when all do."""
    if renderer is None:
        try:
            renderer = Renderer(config.templates.dir, config.templates.timezone)
        except ValueError as exc:
            return [f"templates: {exc}"]
    problems = [str(p) for p in renderer.compile_all(escape_kinds(config))]
    types = event_types(config)
    for name, sink in config.sinks.items():
        sink_class = SINK_TYPES[sink.type]
        for p in renderer.check_sink(
            sink_name=name,
            sink_type=sink.type,
            parts=sink_class.parts,
            template=sink.template,
            event_types=types,
            refusal=sink_class.refusal,
        ):
            if str(p) not in problems:  # a syntax error is reported once, not once per sink
                problems.append(f"sinks.{name}: {p}")
    return list(dict.fromkeys(problems))


def escape_kinds(config: Config) -> list[str]:
    """The escape kinds the configured sinks render with (what is worth compiling at start)."""
    kinds = {part.escape for s in config.sinks.values() for part in SINK_TYPES[s.type].parts}
    return sorted(kinds) or ["none"]


# The type of a sample event that no template folder names: it renders the default/ templates.
UNTEMPLATED_TYPE = "other_event"


def event_types(config: Config) -> list[str]:
    """The sample type, every literal (non-glob) type the routes name, every type a template
    folder is named after, and one that has no folder (so ``default/`` is rendered too)."""
    types = {SAMPLE_EVENT["type"]}
    for route in config.routes:
        types.update(t for t in route.type if not any(c in t for c in "*?["))
    folders = _folders(config.templates.dir) | _folders(BUILTIN_DIR)
    types.update(folders - {"default"})
    other = UNTEMPLATED_TYPE
    while other in folders:
        other += "_"
    return sorted(types | {other})


def all_warnings(config: Config) -> list[str]:
    """What works but is probably a mistake, config and templates: check, serve, reload say it."""
    return config_warnings(config) + template_warnings(config)


def template_warnings(config: Config) -> list[str]:
    """A user's ``default/`` template that a built-in one for an event type comes before."""
    user = config.templates.dir
    warnings = []
    for mine in sorted((user / "default").glob("*.j2")) if user.is_dir() else []:
        for folder in sorted(_folders(BUILTIN_DIR) - {"default"}):
            if (BUILTIN_DIR / folder / mine.name).is_file() and not (
                user / folder / mine.name
            ).exists():
                warnings.append(
                    f"templates: default/{mine.name} is not used for {folder} events: the built-in "
                    f"{folder}/{mine.name} comes first (copy yours to {folder}/ to use it there)"
                )
    return warnings


def _folders(root: Path) -> set[str]:
    """The names of the template folders in ``root`` (event types, ``default`` and others)."""
    if not root.is_dir():
        return set()
    return {p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.j2"))}
