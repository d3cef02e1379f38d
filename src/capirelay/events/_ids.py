"""Id fields that accept a number: refused when JSON could not carry the number exactly.

A JSON parser reads an integer beyond 64 bits (``12345678901234567890123``) as a
float, and ``coerce_numbers_to_str`` would then send Meta ``"1.2345678901234568e+22"``:
another id, silently.  A float id at or beyond 2**53 (where floats skip integers)
cannot be the value the sender wrote, so the field is refused asking for a string.
Only the model path sees these values: the fast path of ``prepare_wire`` takes
string and int ids only, so the common case pays nothing.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from pydantic import BeforeValidator

__all__ = ["IdList", "IdOrList", "IdText", "NumberOrIdText"]

_EXACT: Final = 2**53


def _exact_id(value: Any) -> Any:
    if type(value) is float and not -_EXACT < value < _EXACT:  # NaN fails too
        raise ValueError(
            "a number of 2**53 or more is not read exactly from JSON, so the id would "
            'change; send ids as strings, e.g. "12345678901234567890123"'
        )
    return value


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


IdText = Annotated[str, BeforeValidator(_exact_id)]
NumberOrIdText = Annotated[int | str, BeforeValidator(_exact_id)]
IdList = Annotated[list[IdText], BeforeValidator(_as_list)]
IdOrList = IdText | list[IdText]
