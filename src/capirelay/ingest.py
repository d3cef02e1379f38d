"""Ingest: turn one raw, CAPI-shaped event into a queueable :class:`NewEvent` or problems.

This is the point where raw identifiers stop: the event is parsed, normalized
and hashed by :func:`capirelay.events.prepare_wire` (the same wire form as
``Event.model_validate(raw).to_wire()``, without building the models when the
input is already well typed), given a stable ``event_id`` and checked against
Meta's acceptance rules.
Everything after :func:`prepare_event` (the outbox, the delivery engine, logs,
HTTP responses) only ever sees the wire form.  It is pure (no I/O, no clock
of its own) so the HTTP routes, webhook sources and benchmarks share it, and
it runs once per event on the hot path, so it stays small: everything that
is the same for a whole request (the pixel, the clock reading, the skew) is
decided by the caller once and passed in, the wire dict is encoded once, and
pydantic's error report is only turned into problems when parsing failed.

Event id derivation (when the caller gave none): the id must be the same for
the same conversion sent twice, so a retried request deduplicates instead of
counting twice, and different for different conversions of one person in one
second (two pages viewed, a phone call and a form Lead).  It is ``"cr_" +
sha256(canonical JSON of {pixel_id, event_name, event_time, action_source,
event_source_url, user_data, custom_data} of the *wire* event)[:32]``, with
keys sorted (a field the event lacks is ``null``; ``event_source_url`` is taken
after personal data left it, so a retry gives it alike).  The wire
``user_data`` is already normalized and hashed, so the id is stable across
spelling variants of one identifier (``" A@B.com"`` and ``"a@b.com"`` give the
same id) and never encodes a raw value.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from pydantic import ValidationError

from capirelay.config import PixelSettings
from capirelay.events import explain_dropped_user_data, prepare_wire
from capirelay.limits import (
    MAX_EVENT_ID,
    check_event_limits,
    check_test_event_code,
    has_surrogate,
)
from capirelay.orders import order_key
from capirelay.outbox.base import NewEvent
from capirelay.pii_scrub import scrub_event
from capirelay.problems import Problem, error, has_errors
from capirelay.validate import deadline, validate_event

__all__ = ["DERIVED_EVENT_ID_PREFIX", "PreparedEvent", "derive_event_id", "prepare_event"]

DERIVED_EVENT_ID_PREFIX = "cr_"

# How pydantic names the members of a union in an error's loc: a type ("int",
# "list[str]", "function-after[...]") or a model class name; field names are snake_case.
_UNION_TAG = re.compile(
    r"int|float|str|bool|bytes|decimal|none|list|dict|url|date|datetime"
    r"|[a-z-]+\[.*\]|[a-z]+(-[a-z]+)+|[A-Z][A-Za-z0-9]*"
)

# pydantic error types that deserve their own problem code; the rest are "invalid_field".
_PYDANTIC_CODES: dict[str, str] = {
    "missing": "missing_field",
    "extra_forbidden": "unknown_field",
}


@dataclass(frozen=True, slots=True)
class PreparedEvent:
    """The outcome of ingesting one event.

    ``new_event`` is ``None`` when an error-severity problem rejects it.
    ``event_id`` is the given or derived id ("" when the event could not even
    be parsed and had no usable id).  ``problems`` holds errors and warnings;
    warnings travel with a queued event.
    """

    new_event: NewEvent | None
    event_id: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def rejected(self) -> bool:
        return self.new_event is None


def prepare_event(
    raw: Any,
    *,
    pixel_id: str,
    pixel: PixelSettings,
    now: float,
    test_event_code: str | None,
    source: str,
    max_future_skew: int,
    order_by_event_id: bool = False,
    keep_dropped: bool = True,
) -> PreparedEvent:
    """Parse, normalize+hash, id, validate; see the module docstring.

    ``order_by_event_id``: a vendor preset's event, whose id names an order, gets an
    order-ledger key even without ``custom_data.order_id`` (see :mod:`capirelay.orders`).
    ``keep_dropped``: as :func:`~capirelay.events.explain_dropped_user_data` takes it.
    """
    if not isinstance(raw, Mapping):
        return PreparedEvent(None, "", [_not_an_object()])
    try:
        wire = prepare_wire(raw, default_country=pixel.default_country)
    except ValidationError as exc:
        problems = _problems_from_validation(exc) + check_test_event_code(test_event_code)
        return PreparedEvent(None, _given_event_id(raw), problems)
    except RecursionError:
        # Free-form custom_data nested ~1,000 deep: refuse this event, not the request.
        return PreparedEvent(None, _given_event_id(raw), [_unencodable(raw)])

    payload = wire.payload
    # Emails, phones and secrets leave URLs and custom_data before the id is derived
    # and anything is stored (the pixel's pii_in_urls policy).
    pii_problems = scrub_event(payload, pixel.pii_in_urls)
    event_id = payload.get("event_id")
    if not event_id:
        try:
            event_id = derive_event_id(pixel_id, payload)
        except orjson.JSONEncodeError:
            return PreparedEvent(None, "", [_unencodable(payload)])
        # The id goes on the wire so Meta deduplicates our retries against the browser pixel.
        payload["event_id"] = event_id
    try:
        encoded = orjson.dumps(payload)
    except orjson.JSONEncodeError:
        return PreparedEvent(None, shown_event_id(event_id), [_unencodable(payload)])
    # A new list: the wire's own stays as prepare_wire left it.  The limits (capirelay.limits)
    # are what storage and Meta can take; Meta's rules are validate_event's.
    problems = (
        wire.problems
        + pii_problems
        + validate_event(payload, now=now, max_future_skew=max_future_skew)
        + check_event_limits(payload, encoded, test_event_code)
    )
    if problems and has_errors(problems):
        # "user_data is required" for a user_data whose values were all dropped names them.
        explained = explain_dropped_user_data(problems, keep_dropped=keep_dropped)
        return PreparedEvent(None, shown_event_id(event_id), explained)
    new_event = NewEvent(
        pixel_id=pixel_id,
        event_name=payload["event_name"],
        event_id=event_id,
        payload=encoded,
        event_time=int(payload["event_time"]),
        deadline=deadline(payload),
        test_event_code=test_event_code,
        source=source,
        order_key=order_key(
            pixel_id, payload, test_event_code=test_event_code, by_event_id=order_by_event_id
        ),
    )
    return PreparedEvent(new_event, event_id, problems)


def derive_event_id(pixel_id: str, payload: Mapping[str, Any]) -> str:
    """A stable id for a wire event that came without one (see module docstring)."""
    basis = {
        "pixel_id": pixel_id,
        "event_name": payload.get("event_name"),
        "event_time": payload.get("event_time"),
        "action_source": payload.get("action_source"),
        "event_source_url": payload.get("event_source_url"),
        "user_data": payload.get("user_data") or {},
        "custom_data": payload.get("custom_data") or {},
    }
    digest = hashlib.sha256(orjson.dumps(basis, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return DERIVED_EVENT_ID_PREFIX + digest[:32]


def _given_event_id(raw: Mapping[str, Any]) -> str:
    value = raw.get("event_id")
    return shown_event_id(value) if isinstance(value, str) else ""


def shown_event_id(event_id: Any) -> str:
    """The id to echo in a result or keep in a receipt: ``""`` when it breaks a limit
    (too long, a control character), as the problem naming it says."""
    if not isinstance(event_id, str) or len(event_id) > MAX_EVENT_ID:
        return ""
    if any(ord(char) < 0x20 for char in event_id):
        return ""
    return "" if has_surrogate(event_id) else event_id  # the answer could not be encoded


def _not_an_object() -> Problem:
    return error(
        "invalid_type",
        "",
        "each event must be a JSON object in Conversions API shape "
        '({"event_name": ..., "event_time": ..., "user_data": {...}, ...})',
    )


def _unencodable(event: Any = None) -> Problem:
    # orjson refuses integers beyond 64 bits and nesting deeper than 254 levels: such an event
    # cannot be written to the outbox or sent, so it is refused like any other bad event.
    found = _unencodable_at(event)
    if found is None:
        return error(
            "invalid_value",
            "",
            "the event holds a number beyond 64 bits or values nested too deep to send; "
            "send numbers (event_time: Unix seconds) within 64 bits and flatten custom_data",
        )
    field, kind = found
    if kind == "deep":
        return error(
            "invalid_value",
            field,
            f"{field} nests values more than {_MAX_DEPTH} levels deep, too deep to send; "
            "flatten it",
        )
    if kind == "surrogate":
        return error(
            "invalid_value",
            field,
            f"{field} holds half of a character (a lone UTF-16 surrogate, as a string cut "
            "mid-emoji leaves), which cannot be sent; cut strings at whole characters",
        )
    return error(
        "invalid_value",
        field,
        f"{field} is a number beyond 64 bits, too large to send; send it as text, or "
        "within 64 bits (event_time: Unix seconds)",
    )


_MAX_DEPTH: Final = 254
_INT_RANGE: Final = range(-(2**63), 2**64)


def _unencodable_at(event: Any) -> tuple[str, str] | None:
    """Where ``event`` breaks orjson's limits: (the field's path, ``"deep"``, ``"large"``
    or ``"surrogate"``: a string or key holding a lone surrogate), the first found, or
    ``None``.  Depth first with one iterator per open
    container, so memory grows with the depth and time with the number of values (a path
    kept for every value made a request's worth of gigabytes, a reviewer found); the path
    is only built for the value found.  A path deeper than a few keys is named by its
    first ones (the field is what the sender can find)."""
    if not isinstance(event, Mapping | list | tuple):
        return None
    # (the container's children, the key it was reached by); the event itself is depth 1.
    stack: list[tuple[Iterator[tuple[str, Any]], str]] = [(_children(event), "")]
    while stack:
        step = next(stack[-1][0], None)
        if step is None:
            stack.pop()
            continue
        key, value = step
        if has_surrogate(key):  # named by its container: the key cannot be shown
            return _path(tuple(k for _, k in stack[1:])) or "event", "surrogate"
        if isinstance(value, Mapping | list | tuple):
            if len(stack) >= _MAX_DEPTH:  # this container would nest one level deeper
                return _path((*(k for _, k in stack[1:]), key)), "deep"
            stack.append((_children(value), key))
        elif isinstance(value, int) and not isinstance(value, bool) and value not in _INT_RANGE:
            return _path((*(k for _, k in stack[1:]), key)), "large"
        elif isinstance(value, str) and has_surrogate(value):
            return _path((*(k for _, k in stack[1:]), key)), "surrogate"
    return None


def _children(container: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(container, Mapping):
        return ((str(key), value) for key, value in container.items())
    return ((str(index), value) for index, value in enumerate(container))


def _path(path: tuple[str, ...]) -> str:
    shown = ".".join(path[:4])
    return shown if len(path) <= 4 else f"{shown}..."


def _problems_from_validation(exc: ValidationError) -> list[Problem]:
    """One problem per bad field, named by its loc path, never echoing the input.

    A field typed as a union fails once per member (``value.int``,
    ``value.float``); the member tags are dropped from the path and the
    failures merged into one problem.
    """
    messages: dict[str, list[str]] = {}
    codes: dict[str, str] = {}
    numeric: dict[str, bool] = {}
    decimal: set[str] = set()
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        path = ".".join(str(part) for part in err["loc"] if not _is_union_tag(part))
        codes.setdefault(path, _PYDANTIC_CODES.get(err["type"], "invalid_field"))
        numeric[path] = numeric.get(path, True) and err["type"] in _NUMBER_ERRORS
        if err["type"].startswith("float"):
            decimal.add(path)
        hint = _fix_hint(err["type"], err["msg"])
        if hint not in messages.setdefault(path, []):
            messages[path].append(hint)
    for path, only_numbers in numeric.items():
        if only_numbers and path in decimal:  # "valid integer ... or valid number": one fix
            messages[path] = [_NUMBER_HINT]
    return [
        error(codes[path], path, f"{path or 'event'}: {' or '.join(hints)}")
        for path, hints in messages.items()
    ]


def _is_union_tag(part: str | int) -> bool:
    return isinstance(part, str) and _UNION_TAG.fullmatch(part) is not None


# A number field (int | float) refused text it could not read ("12,50", "$12.50").
_NUMBER_ERRORS = frozenset(
    {"int_parsing", "int_type", "int_from_float", "float_parsing", "float_type", "finite_number"}
)
_NUMBER_HINT = (
    "must be a number such as 12.50 (a dot before the decimals; no currency sign, space or "
    "thousands separator)"
)


def _fix_hint(error_type: str, message: str) -> str:
    if error_type == "extra_forbidden":
        return "unknown field; remove it or check its spelling against the Conversions API"
    if error_type == "missing":
        return "field required; add it"
    return message
