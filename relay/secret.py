"""A string that never shows itself (its repr and str are ``<secret>``), and paste checks.

``pasting_problem`` names the usual copy-and-paste slips (white space, the quotes around it) so
that a secret's own format check does not report them as a wrong length or prefix.
"""

from __future__ import annotations

from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

_QUOTES = frozenset("'\"")


def pasting_problem(value: str) -> str | None:
    """What is wrong with how ``value`` was pasted, or None; the message never holds the value."""
    if value != value.strip():
        return "has leading or trailing white space; paste the secret alone"
    # One quote character at both ends: the quotes of a shell line or a .env file came along.
    if len(value) >= 2 and value[0] == value[-1] and value[0] in _QUOTES:
        return "is wrapped in quotes; paste the secret alone, without them"
    return None


class Secret:
    """Holds a credential; ``reveal()`` is the only way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls,
            core_schema.no_info_before_validator_function(
                lambda v: v.reveal() if isinstance(v, Secret) else v, core_schema.str_schema()
            ),
        )
