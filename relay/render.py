"""Rendering: turns an event into a sink's message parts with sandboxed Jinja templates.

Templates are looked up as ``<folder>/<sink type>.<part>.j2`` (folder = the sink's ``template``
or the event type), then ``default/<sink type>.<part>.j2``; the user's folder before the built-in
one. Every failure is a :class:`~relay.errors.TemplateError` naming the template and line.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jinja2
from jinja2.runtime import BlockReference, LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from relay.errors import TemplateError
from relay.events import SAMPLE_EVENT, Event, event_from_dict, mask_emails_in
from relay.render_filters import (
    ESCAPE_KINDS,
    datasource_name,
    escape_slack,
    json_text,
    load_timezone,
    make_datetime_filter,
    make_finalize,
    make_tojson,
)
from relay.sinks.base import Part

__all__ = ["BUILTIN_DIR", "MAX_OUTPUT_BYTES", "Renderer", "escape_slack"]

BUILTIN_DIR = Path(__file__).parent / "templates"
MAX_OUTPUT_BYTES = 256 * 1024
_SUFFIX = ".j2"


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, plus: output of macros, ``caller()``, ``super()`` and recursive loops is
    already-escaped template output, so it is marked safe instead of being escaped twice."""

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(__obj, Macro | BlockReference | LoopContext) and isinstance(result, str):
            return Markup(result)  # noqa: S704 - rendered template output, escaped as it was made
        return result


class Renderer:
    """Finds, compiles (once) and renders templates; one instance serves the whole relay."""

    def __init__(self, user_dir: Path | None, timezone: str = "UTC") -> None:
        self._tz = load_timezone(timezone)
        self._roots = [BUILTIN_DIR.resolve()]
        if user_dir is not None and user_dir.is_dir():
            self._roots.insert(0, user_dir.resolve())
        loader = jinja2.ChoiceLoader([_StartLoader(root) for root in self._roots])
        self._envs = {kind: self._environment(loader, kind) for kind in ESCAPE_KINDS}

    def _environment(self, loader: jinja2.BaseLoader, kind: str) -> _Environment:
        env = _Environment(
            loader=loader,
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,  # compiled once; a reload (SIGHUP) picks up template edits
            finalize=make_finalize(kind),
        )
        env.filters["tojson"] = make_tojson(kind)
        env.filters["datetime"] = make_datetime_filter(self._tz)
        env.filters["datasource_name"] = datasource_name
        env.filters["json_text"] = json_text
        return env

    def render(
        self,
        *,
        sink_name: str,
        sink_type: str,
        parts: tuple[Part, ...],
        template: str | None,
        event: Event,
    ) -> dict[str, str]:
        """Render every part a sink declares; optional parts without a template are left out."""
        context = build_context(event, sink_name)
        folder = template or event.type
        rendered: dict[str, str] = {}
        for part in parts:
            text = self._render_part(folder, sink_type, part, context)
            if text is not None:
                rendered[part.name] = text
        return rendered

    def compile_all(self, kinds: Iterable[str] | None = None) -> list[TemplateError]:
        """Compile every template in the user and built-in folders; return the problems.

        Each escape kind compiles its own copy (finalize is baked in). ``kinds`` limits the
        warm-up to the kinds the configured sinks use (the first kind also catches syntax
        errors in templates no sink uses); None warms them all.
        """
        envs = [self._envs[k] for k in kinds] if kinds else list(self._envs.values())
        problems: list[TemplateError] = []
        for name in self._template_names():
            try:
                for env in envs:
                    env.get_template(name)
            except jinja2.TemplateSyntaxError as exc:
                problems.append(_as_template_error(exc, name, self._roots))
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(TemplateError(_unreadable(exc), template=name))
        return problems

    def check_sink(
        self,
        *,
        sink_name: str,
        sink_type: str,
        parts: Iterable[Part],
        template: str | None,
        event_types: Iterable[str],
        refusal: Callable[[Mapping[str, str]], tuple[str, str] | None] | None = None,
    ) -> list[TemplateError]:
        """Render a sink's parts for a sample event of each type; return the problems.

        ``refusal`` (the sink's) says what of the rendered parts its receiver would refuse.
        """
        problems: dict[str, TemplateError] = {}
        declared = tuple(parts)
        for event_type in dict.fromkeys(event_types) or [SAMPLE_EVENT["type"]]:
            sample = event_from_dict({**SAMPLE_EVENT, "type": event_type}, received_at=0.0)
            try:
                rendered = self.render(
                    sink_name=sink_name,
                    sink_type=sink_type,
                    parts=declared,
                    template=template,
                    event=sample,
                )
            except TemplateError as exc:
                problems.setdefault(str(exc), exc)
                continue
            refused = refusal(rendered) if refusal is not None else None
            if refused is not None:
                part, why = refused
                names = self.candidates(template or event_type, sink_type, part)
                found = self._find(self._envs["none"], names)
                exc = TemplateError(why, found.name if found is not None else names[0])
                problems.setdefault(str(exc), exc)
        return list(problems.values())

    def candidates(self, folder: str, sink_type: str, part: str) -> list[str]:
        """The template names tried for one part, in order."""
        names = [f"{folder}/{sink_type}.{part}{_SUFFIX}", f"default/{sink_type}.{part}{_SUFFIX}"]
        return list(dict.fromkeys(names))

    def _render_part(
        self, folder: str, sink_type: str, part: Part, context: dict[str, Any]
    ) -> str | None:
        names = self.candidates(folder, sink_type, part.name)
        env = self._env_for(part)
        found = self._find(env, names)
        if found is None:
            if part.required:
                tried = ", ".join(names)
                raise TemplateError(f"no template for part {part.name!r}; tried {tried}", names[0])
            return None
        text = _finish(part, found.name or names[0], self._run(found, context))
        if not text and not part.required:
            return None  # an optional part that renders to nothing opts out
        return text

    def _env_for(self, part: Part) -> _Environment:
        try:
            return self._envs[part.escape]
        except KeyError:
            raise ValueError(
                f"part {part.name!r} has unknown escape kind {part.escape!r}"
            ) from None

    def _find(self, env: _Environment, names: list[str]) -> jinja2.Template | None:
        for name in names:
            try:
                return env.get_template(name)
            except jinja2.TemplateNotFound as exc:
                if exc.name != name:  # something it extends or imports is missing
                    raise _as_template_error(exc, name, self._roots) from exc
            except jinja2.TemplateSyntaxError as exc:
                raise _as_template_error(exc, name, self._roots) from exc
            except (OSError, UnicodeDecodeError) as exc:
                raise TemplateError(_unreadable(exc), template=name) from None
        return None

    def _run(self, template: jinja2.Template, context: dict[str, Any]) -> str:
        name = template.name or "template"
        try:
            return _capped_join(template.generate(context), name)
        except TemplateError:
            raise
        except Exception as exc:  # any error inside a template is the template's problem
            raise _as_template_error(exc, name, self._roots) from exc

    def _template_names(self) -> list[str]:
        names: set[str] = set()
        for root in self._roots:
            names.update(p.relative_to(root).as_posix() for p in root.rglob(f"*{_SUFFIX}"))
        return sorted(names)


class _StartLoader(jinja2.FileSystemLoader):
    """A folder's templates as they were when the renderer was made, which is what was checked:
    a file added later is not found until a reload makes a new renderer and checks it (an edit
    of a known one is not seen either: templates compile once, ``auto_reload`` is off)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._known = frozenset(self.list_templates())

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        if template not in self._known:
            raise jinja2.TemplateNotFound(template)
        return super().get_source(environment, template)


def _unreadable(exc: OSError | UnicodeDecodeError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
    return f"cannot be read: {exc.strerror or exc}"


def build_context(event: Event, sink_name: str) -> dict[str, Any]:
    """The names a template sees (see the template guide)."""
    return {
        "event": dict(event.data),
        "type": event.type,
        "datasource": event.datasource,
        "datasource_name": datasource_name(event.datasource),
        "email": event.email,
        "created": event.created,
        "event_id": event.id,
        "received_at": event.received_at,
        "sink": sink_name,
    }


def _capped_join(chunks: Iterator[str], name: str) -> str:
    """Join rendered output, stopping as soon as it passes the size limit."""
    pieces: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk.encode("utf-8"))
        if size > MAX_OUTPUT_BYTES:
            raise TemplateError(
                f"rendered output is {size} bytes, over the {MAX_OUTPUT_BYTES}-byte limit", name
            )
        pieces.append(chunk)
    return "".join(pieces)


def _finish(part: Part, name: str, text: str) -> str:
    """Normalise whitespace for the part's kind and check JSON parts parse."""
    text = " ".join(text.split()) if part.escape == "header" else text.strip()
    if part.json and text:
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise TemplateError(f"did not render valid JSON: {exc}", name, exc.lineno) from exc
    return text


def _as_template_error(exc: Exception, name: str, roots: list[Path]) -> TemplateError:
    """A TemplateError naming the template and line where ``exc`` happened."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return TemplateError(exc.message or str(exc), exc.name or name, exc.lineno)
    where, line = _template_frame(exc, roots)
    return TemplateError(_describe(exc), where or name, line)


def _describe(exc: Exception) -> str:
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"template {exc.name!r} not found"
    message = str(exc) if isinstance(exc, jinja2.TemplateError) else f"{type(exc).__name__}: {exc}"
    return mask_emails_in(message)  # errors are logged; they must not carry personal data


def _template_frame(exc: Exception, roots: list[Path]) -> tuple[str | None, int | None]:
    """Jinja rewrites tracebacks so template frames carry the template file and line."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.endswith(_SUFFIX):
            return _name_of(frame.filename, roots), frame.lineno
    return None, None


def _name_of(filename: str, roots: list[Path]) -> str:
    path = Path(filename)
    for root in roots:
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return path.name
