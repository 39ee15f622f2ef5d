"""Turns pydantic validation errors into one-line problems named by TOML path, with did-you-mean."""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from relay.errors import Problem


def suggest(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean "x"?)' when a candidate is close to ``word``, else ''."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


# Parts of a pydantic location that name a union member or validator, not a TOML key.
_TAG = re.compile(r"^(str|int|float|bool|none)$|\[|^function-")


def toml_path(loc: Iterable[int | str], prefix: str = "") -> str:
    path = prefix
    for part in loc:
        if isinstance(part, str) and _TAG.search(part):
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def problems_from_validation(
    exc: ValidationError, model: type[BaseModel], prefix: str = ""
) -> list[Problem]:
    merged: dict[str, list[str]] = {}
    for err in exc.errors():
        problem = _problem(err, model, prefix)
        messages = merged.setdefault(problem.path, [])
        if problem.message not in messages:
            messages.append(problem.message)
    return [Problem(path, ", or ".join(messages)) for path, messages in merged.items()]


def _problem(err: Any, model: type[BaseModel], prefix: str) -> Problem:
    loc = tuple(err["loc"])
    path = toml_path(loc, prefix)
    kind = err["type"]
    if kind == "extra_forbidden":
        fields = _fields_at(model, loc[:-1])
        return Problem(path, "unknown key" + suggest(str(loc[-1]), fields))
    if kind == "missing":
        return Problem(path, "missing (required)")
    return Problem(path, _message(err))


def _message(err: Any) -> str:
    msg: str = err["msg"]
    for lead in ("Value error, ", "Assertion failed, "):
        if msg.startswith(lead):
            return msg[len(lead) :]
    msg = msg[0].lower() + msg[1:]
    # TOML calls them arrays and tables.
    for python, toml in (("tuple", "array"), ("list", "array"), ("dictionary", "table")):
        msg = msg.replace(f"valid {python}", f"valid {toml}").replace(
            f"{python} should", f"{toml} should"
        )
    if err["type"].endswith(("_type", "_parsing")) and "input" in err:
        msg += f" (got {_toml_kind(err['input'])})"
    return msg


def _toml_kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if _is_model(current) else None
        if field is None:
            return []
        current = _inner_model(field.annotation)
    if not _is_model(current):
        return []
    return [f.alias or name for name, f in current.model_fields.items()]


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _inner_model(annotation: Any) -> Any:
    if _is_model(annotation):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, tuple, dict, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None
