"""Reading the fields of a JSON request body, with errors that name the field and the fix.

The ingest routes turn :class:`BodyError` into their 422 ``invalid_body`` answer;
the parsers here stay free of HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "BodyError",
    "optional_object",
    "optional_string",
    "optional_unix_seconds",
    "reject_unknown_fields",
    "required_string",
]


class BodyError(ValueError):
    """A body field is missing, unknown or of the wrong type; the message says which."""


def reject_unknown_fields(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(key for key in body if key not in allowed)
    if unknown:
        names = ", ".join(repr(key[:64]) for key in unknown[:5])
        raise BodyError(f"unknown field(s) {names}; allowed: {', '.join(sorted(allowed))}")


def required_string(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise BodyError(f"{name} is required and must be a non-empty string")
    return value


def optional_string(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BodyError(f"{name} must be a string when given")
    return value or None


def optional_object(body: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BodyError(f"{name} must be a JSON object when given")
    return value


def optional_unix_seconds(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BodyError(f"{name} must be an integer (unix seconds); omit it to use now")
    return value
