"""Length and content limits on the values of one event, as data in one place.

Every event is checked against :data:`LIMITS` at ingest, before anything is
stored, on every backend alike: a value the queue could not store (PostgreSQL
``text`` cannot hold U+0000, a btree key cannot exceed ~2.7 KB) or Meta would
not take is the **event's** problem, a per-event ``rejected`` with a
:class:`~capirelay.problems.Problem` naming the field, the limit and the fix.
The other events of the request are queued, and storage readiness never
depends on what a client sent.

Each :class:`Limit` says whose rule it is: ``meta`` where Meta documents the
rule (the reference folder or Meta's Pixel reference, marked unverified where
only the Pixel documents it), ``capirelay`` where it is this gateway's policy:
bounds chosen far above any real conversion so that a legitimate event never
meets them, while a hostile one cannot bloat the queue or break a write.

Negative ``value``: Meta's documentation says only that ``value`` "must
represent a monetary amount" and does not forbid negatives, so capirelay
accepts them (refunds sent as negative purchases are Meta's to judge); the
policy bound is a finite number within ±10^12.

The checks run on the wire form (after normalization and hashing), once per
event on the hot path: a handful of dict lookups, one length test on the
already-encoded JSON, and a scan for control characters that only walks the
event when its encoding contains a backslash (orjson escapes every C0
character, so an event without ``\\`` in its JSON has none).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from capirelay.meta_facts import STANDARD_EVENTS
from capirelay.problems import Problem, error

__all__ = [
    "LIMITS",
    "MAX_ABS_VALUE",
    "MAX_CONTENTS",
    "MAX_CUSTOM_EVENT_NAME",
    "MAX_EVENT_BYTES",
    "MAX_EVENT_ID",
    "MAX_EVENT_NAME",
    "MAX_TEST_EVENT_CODE",
    "MAX_URL",
    "STANDARD_EVENTS",
    "Limit",
    "check_event_limits",
    "check_test_event_code",
    "control_character_path",
    "has_surrogate",
]

Whose = Literal["meta", "capirelay"]

MAX_CUSTOM_EVENT_NAME = 50
MAX_EVENT_NAME = 100
MAX_EVENT_ID = 256
MAX_TEST_EVENT_CODE = 64
MAX_URL = 4096
MAX_EVENT_BYTES = 64 * 1024
MAX_CONTENTS = 1000
MAX_ABS_VALUE = 1e12


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit: the field it applies to, its bound, whose rule it is and why."""

    code: str  # the Problem code an event over this limit gets
    field: str
    bound: str  # human-readable, for docs and messages
    whose: Whose
    why: str


LIMITS: tuple[Limit, ...] = (
    Limit(
        "value_too_long",
        "event_name (custom event)",
        f"{MAX_CUSTOM_EVENT_NAME} characters",
        "meta",
        "Meta Pixel's rule for custom event names (Pixel reference; not restated on the "
        "Conversions API pages: unverified for CAPI), kept so server and browser names agree",
    ),
    Limit(
        "value_too_long",
        "event_name",
        f"{MAX_EVENT_NAME} characters",
        "capirelay",
        "standard names are at most 20 characters; the dedup key must stay small",
    ),
    Limit(
        "value_too_long",
        "event_id",
        f"{MAX_EVENT_ID} characters",
        "capirelay",
        "order ids and UUIDs fit; the dedup key (an index entry on PostgreSQL) must stay small",
    ),
    Limit(
        "value_too_long",
        "test_event_code",
        f"{MAX_TEST_EVENT_CODE} characters",
        "capirelay",
        "Events Manager codes are short (TEST12345)",
    ),
    Limit(
        "value_too_long",
        "event_source_url, referrer_url",
        f"{MAX_URL} characters",
        "capirelay",
        "browsers and CDNs refuse longer URLs in practice",
    ),
    Limit(
        "event_too_large",
        "(whole event)",
        f"{MAX_EVENT_BYTES // 1024} KiB of JSON",
        "capirelay",
        "a conversion is a few KB; bounds the queue row and Meta's request size",
    ),
    Limit(
        "too_many_items",
        "custom_data.contents",
        f"{MAX_CONTENTS} items",
        "capirelay",
        "a basket of 1,000 lines is far beyond a real order",
    ),
    Limit(
        "control_character",
        "every string (keys too)",
        "no U+0000-U+001F",
        "capirelay",
        "PostgreSQL text cannot hold U+0000; no Meta field carries control characters",
    ),
    Limit(
        "value_out_of_range",
        "custom_data.value, net_revenue, predicted_ltv",
        f"finite, within ±{MAX_ABS_VALUE:.0e}",
        "capirelay",
        "Meta: 'must represent a monetary amount' (negatives not forbidden; accepted)",
    ),
)

_URL_FIELDS = ("event_source_url", "referrer_url")
MAX_PATH = 200  # a field path named in a problem, cut so a hostile key is not echoed whole
_AMOUNT_FIELDS = ("value", "net_revenue", "predicted_ltv")
# Tuples, not ``int | float`` unions: a union written in the call is built on every call.
_NUMBER_TYPES = (int, float)
_SEQUENCE_TYPES = (list, tuple)


def _too_long(field: str, limit: int, what: str) -> Problem:
    return error(
        "value_too_long",
        field,
        f"{field} is longer than {limit} characters ({what}); shorten it",
    )


def _control(field: str) -> Problem:
    field = field[:MAX_PATH]
    return error(
        "control_character",
        field or "event",
        f"{field or 'a key of the event'} holds a control character (U+0000-U+001F: NUL, "
        "newline, tab...), which cannot be stored or sent; remove it",
    )


def check_test_event_code(code: str | None) -> list[Problem]:
    """Problems with a test_event_code from a request body, header or the config."""
    if code is None:
        return []
    if len(code) > MAX_TEST_EVENT_CODE:
        return [
            error(
                "value_too_long",
                "test_event_code",
                f"test_event_code is longer than {MAX_TEST_EVENT_CODE} characters; use the "
                "code Events Manager shows (body field, X-Test-Event-Code header or config)",
            )
        ]
    if _has_control(code):
        return [_control("test_event_code")]
    if has_surrogate(code):
        return [
            error(
                "invalid_value",
                "test_event_code",
                "test_event_code holds half of a character (a lone UTF-16 surrogate), which "
                "cannot be sent; use the code Events Manager shows",
            )
        ]
    return []


def check_event_limits(
    payload: Mapping[str, Any], encoded: bytes, test_event_code: str | None = None
) -> list[Problem]:
    """Every limit the wire ``payload`` (encoded as ``encoded``) breaks; ``[]`` when none."""
    problems: list[Problem] = []
    name = payload.get("event_name")
    if isinstance(name, str):
        if len(name) > MAX_EVENT_NAME:
            problems.append(_too_long("event_name", MAX_EVENT_NAME, "capirelay's limit"))
        elif len(name) > MAX_CUSTOM_EVENT_NAME and name not in STANDARD_EVENTS:
            problems.append(
                _too_long(
                    "event_name",
                    MAX_CUSTOM_EVENT_NAME,
                    "Meta Pixel's limit for custom event names",
                )
            )
    event_id = payload.get("event_id")
    if isinstance(event_id, str) and len(event_id) > MAX_EVENT_ID:
        problems.append(
            _too_long(
                "event_id", MAX_EVENT_ID, "use the order id or a UUID, like the Pixel's eventID"
            )
        )
    for field in _URL_FIELDS:
        url = payload.get(field)
        if isinstance(url, str) and len(url) > MAX_URL:
            problems.append(_too_long(field, MAX_URL, "drop long query strings"))
    custom = payload.get("custom_data")
    if type(custom) is dict or isinstance(custom, Mapping):
        contents = custom.get("contents")
        if isinstance(contents, list) and len(contents) > MAX_CONTENTS:
            problems.append(
                error(
                    "too_many_items",
                    "custom_data.contents",
                    f"custom_data.contents holds more than {MAX_CONTENTS} items; "
                    "send the order's lines grouped or only the first ones",
                )
            )
        for field in _AMOUNT_FIELDS:
            amount = custom.get(field)
            if amount is None or isinstance(amount, bool) or not isinstance(amount, _NUMBER_TYPES):
                continue
            if not math.isfinite(amount) or abs(amount) > MAX_ABS_VALUE:
                problems.append(
                    error(
                        "value_out_of_range",
                        f"custom_data.{field}",
                        f"custom_data.{field} must be a finite amount within ±10^12 "
                        "(in the currency's units, not cents of cents); check the mapping",
                    )
                )
    if len(encoded) > MAX_EVENT_BYTES:
        problems.append(
            error(
                "event_too_large",
                "event",
                f"the event is larger than {MAX_EVENT_BYTES // 1024} KiB as JSON; "
                "trim custom_data (long descriptions, embedded documents)",
            )
        )
    # find, not `in`: bytes.__contains__ first tries the operand as an integer, and the
    # TypeError it builds and drops costs more than the search.
    if encoded.find(b"\\") >= 0:
        path = control_character_path(payload)
        if path is not None:
            problems.append(_control(path))
    if test_event_code is not None:
        problems.extend(check_test_event_code(test_event_code))
    return problems


_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone UTF-16 surrogate (a string cut mid-emoji), which no
    UTF-8 answer, row or request to Meta can carry."""
    return not text.isascii() and _SURROGATE.search(text) is not None


def _has_control(text: str) -> bool:
    return any(ord(char) < 0x20 for char in text)


def control_character_path(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (or key) holding a C0 control character."""
    for where, text in _strings(value, path):
        if _has_control(text):
            return where
    return None


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            key_text = str(key)
            if _has_control(key_text):
                yield path, key_text
                return
            yield from _strings(item, f"{path}.{key_text}" if path else key_text)
    elif isinstance(value, _SEQUENCE_TYPES):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")
