"""Field types for config models: numbers that are not booleans, booleans that are booleans.

TOML has real types, but values can also come from ``${VARS}`` as strings, so numbers are parsed
from strings ("8080"); a boolean, though, is never a number, and "yes" is never a boolean.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Strict


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("input should be a number, not a boolean")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]
Bool = Annotated[bool, Strict()]
