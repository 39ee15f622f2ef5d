"""``${NAME}`` and ``${NAME:-default}`` in config strings, with problems named by TOML path."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from relay.errors import Problem

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(
    value: Any, environ: Mapping[str, str], problems: list[Problem], path: str = ""
) -> Any:
    """Replace ``${NAME}`` and ``${NAME:-default}`` in every string; ``$$`` is a literal ``$``."""
    if isinstance(value, str):
        return _expand_string(value, environ, problems, path)
    if isinstance(value, dict):
        return {k: expand_env(v, environ, problems, _join(path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, environ, problems, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _expand_string(
    text: str, environ: Mapping[str, str], problems: list[Problem], path: str
) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        if value is None:
            problems.append(Problem(path, f"environment variable {name} is not set"))
        return ""

    if "${" in _VAR.sub("", text):
        problems.append(
            Problem(path, "has an unclosed or invalid ${...}; write $${ for a literal ${")
        )
    return _VAR.sub(replace, text)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def follows_from(problem: Problem, unset: list[Problem]) -> bool:
    """True when ``problem`` is just a consequence of an unset variable at a related path."""
    return any(
        u.path == problem.path
        or u.path.startswith((problem.path + ".", problem.path + "["))
        or problem.path.startswith((u.path + ".", u.path + "["))
        for u in unset
    )
