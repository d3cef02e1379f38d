"""The ingest fast path: a CAPI-shaped dict straight to its wire form, no models built.

:func:`prepare_wire` gives exactly what ``Event.model_validate(raw).to_wire()``
gives (the same payload, key order included, and the same problems) but, for
the shape a gateway receives nearly every time, without building the four
pydantic models first: building them costs more than normalizing and hashing
the identifiers they hold.

The fast path takes an event only when every key is one it knows and every
value already has the exact type the model would store (``str`` where the
model wants text, ``int`` for counts, ``int``/``float`` for amounts, enum
values as plain strings).  Anything else (an unknown or misspelt key, a
number where text is expected, an ISO ``event_time``, ``app_data``,
``attribution_data``, ``original_event_data``, an event-level
``customer_segmentation``) goes through the model, which coerces it or raises
the precise validation error.  Both paths share the ``user_data`` hashing
code (:func:`~capirelay.events._user_data.wire_user_data`) and the currency
problem; the type checks and compaction rules are restated here, and a
property test over generated events holds the two paths to equal output.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, Final

from pydantic import AliasChoices

from capirelay.events._enums import ActionSource, DeliveryCategory, MessagingChannel
from capirelay.events._models import (
    Event,
    WireEvent,
    normalize_currency,
    wire_value,
)
from capirelay.events._user_data import (
    _DONE,
    _MULTI,
    _WIRE_PLAN,
    UserData,
    UserDataPlan,
    split_plan,
    wire_user_data,
)
from capirelay.problems import Problem


def prepare_wire(raw: Mapping[str, Any], *, default_country: str | None = None) -> WireEvent:
    """``Event.model_validate(raw).to_wire(default_country)``, built without models when it can.

    Raises pydantic's ``ValidationError`` exactly when the model would.
    """
    if type(raw) is dict:
        wire = _fast_wire(raw, default_country)
        if wire is not None:
            return wire
    return Event.model_validate(raw).to_wire(default_country)


# How an event-level value must look to skip the model (plain ints: compared per key).
_NAME = 0  # non-empty str
_TIME = 1  # int seconds
_TEXT = 2  # str, "" dropped
_FLAG = 3  # bool
_COUNT = 4  # int (not bool)
_SOURCE = 5  # an ActionSource value
_CHANNEL = 6  # a MessagingChannel value
_USER = 7  # user_data dict
_CUSTOM = 8  # custom_data dict
_TEXT_LIST = 9  # str or list of str, emitted as a list
_AMOUNT = 10  # int or float, kept as given
_CONTENTS = 11  # list of content dicts
_DELIVERY = 12  # a DeliveryCategory value
_FLOAT = 13  # float, or an int that converts exactly
_ID = 14  # str, or an int stored as its decimal text
_UNSUPPORTED = 15  # left to the model

# Every event key the fast path takes, in wire order (Event.to_wire's order).
_EVENT_KINDS: Final[tuple[tuple[str, int], ...]] = (
    ("event_name", _NAME),
    ("event_time", _TIME),
    ("action_source", _SOURCE),
    ("event_id", _TEXT),
    ("event_source_url", _TEXT),
    ("referrer_url", _TEXT),
    ("opt_out", _FLAG),
    ("data_processing_options_country", _COUNT),
    ("data_processing_options_state", _COUNT),
    ("advanced_measurement_table", _TEXT),
    ("user_data", _USER),
    ("custom_data", _CUSTOM),
    ("messaging_channel", _CHANNEL),
    ("data_processing_options", _TEXT_LIST),
)
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_ACTION_SOURCES: Final = frozenset(member.value for member in ActionSource)
_MESSAGING_CHANNELS: Final = frozenset(member.value for member in MessagingChannel)
_DELIVERY_CATEGORIES: Final = frozenset(member.value for member in DeliveryCategory)

Plan = tuple[tuple[str, int], ...]


@functools.lru_cache(maxsize=256)
def _event_plan(keys: tuple[str, ...]) -> Plan | None:
    """The present keys in wire order, or ``None`` when one is unknown or required is missing.

    Senders post the same keys event after event, so this runs once per shape.
    """
    known = {key for key, _ in _EVENT_KINDS}
    if not known.issuperset(keys) or "event_name" not in keys or "event_time" not in keys:
        return None
    return tuple((key, kind) for key, kind in _EVENT_KINDS if key in keys)


def _fast_wire(raw: dict[str, Any], default_country: str | None) -> WireEvent | None:
    """The wire event, or ``None`` when ``raw`` needs the model to coerce or reject it."""
    plan = _event_plan(tuple(raw))
    if plan is None:
        return None
    payload: dict[str, Any] = {}
    problems: list[Problem] = []
    for key, kind in plan:
        value = raw[key]
        typ = type(value)
        if kind == _TEXT:
            if typ is str:
                if value:
                    payload[key] = value
            elif value is not None:
                return None
        elif kind == _USER:
            user = _user_data_wire(value, default_country, problems)
            if user is None:
                return None
            if user:
                payload[key] = user
        elif kind == _CUSTOM:
            if value is not None:
                custom = _custom_data_wire(value, problems)
                if custom is None:
                    return None
                if custom:
                    payload[key] = custom
        elif kind == _TIME:
            if typ is not int:
                return None
            payload[key] = value
        elif kind == _SOURCE:
            if typ is str and value in _ACTION_SOURCES:
                payload[key] = value
            elif value is not None:
                return None
        elif value is None:
            if kind == _NAME:
                return None
        else:
            converted = _event_value(kind, value)
            if converted is _REJECT:
                return None
            payload[key] = converted
    return WireEvent(payload, problems)


def _event_value(kind: int, value: Any) -> Any:
    typ = type(value)
    if kind == _NAME:
        if typ is not str or not value:
            return _REJECT
        # pydantic rejects unpaired surrogates in a length-checked str.
        return value if value.isascii() or not _SURROGATE.search(value) else _REJECT
    if kind == _COUNT:
        return value if typ is int else _REJECT
    if kind == _FLAG:
        return value if typ is bool else _REJECT
    if kind == _CHANNEL:
        return value if typ is str and value in _MESSAGING_CHANNELS else _REJECT
    listed = _str_list(value)  # _TEXT_LIST, the only kind left
    return _REJECT if listed is None else listed


_REJECT: Final = object()


def _str_list(value: Any) -> list[str] | None:
    """A ``StrList`` field's stored value: a string becomes a one-item list."""
    if type(value) is str:
        return [value]
    if type(value) is list and all(type(item) is str for item in value):
        return list(value)
    return None


# ------------------------------------------------------------------------- user_data


def _user_data_fields() -> dict[str, tuple[int, str, bool]]:
    """Every accepted input key -> (declaration rank, attribute, takes a list)."""
    table: dict[str, tuple[int, str, bool]] = {}
    for rank, (attr, field) in enumerate(UserData.model_fields.items()):
        alias = field.validation_alias
        names = alias.choices if isinstance(alias, AliasChoices) else [attr]
        kind = _WIRE_PLAN[attr][0]
        for name in names:
            if isinstance(name, str):
                table[name] = (rank, attr, kind in (_MULTI, _DONE))
    return table


_USER_DATA_FIELDS: Final = _user_data_fields()
_TAKES_LIST: Final = frozenset(name for name, spec in _USER_DATA_FIELDS.items() if spec[2])
_JUST_TEXT: Final = frozenset({str})


@functools.lru_cache(maxsize=256)
def _user_data_plan(keys: tuple[str, ...]) -> UserDataPlan | None:
    """The wire plan for one set of input keys in one order, ``None`` if the model must see it.

    Senders post the same keys in the same order event after event, so the
    sort into wire order and the check for a field given under both its names
    run once per shape, not once per event.
    """
    specs = []
    for key in keys:
        spec = _USER_DATA_FIELDS.get(key)
        if spec is None:
            return None
        specs.append((spec[0], key, spec[1]))
    specs.sort()
    ranks = [rank for rank, _, _ in specs]
    if len(set(ranks)) != len(ranks):
        return None  # one field under both its names: the model names the conflict
    return split_plan(
        [(key, *_WIRE_PLAN[attr]) for _, key, attr in specs if _WIRE_PLAN[attr][0] != _DONE]
    )


def _user_data_wire(
    user: Any, default_country: str | None, problems: list[Problem]
) -> dict[str, Any] | None:
    if type(user) is not dict:
        return None
    plan = _user_data_plan(tuple(user))
    if plan is None:
        return None
    if not _JUST_TEXT.issuperset(map(type, user.values())) and not _typed_as_model_stores(user):
        return None
    return wire_user_data(user, plan, user.get("country"), default_country, problems)


def _typed_as_model_stores(user: dict[str, Any]) -> bool:
    """Each value is what ``UserData`` would store unchanged: text, a list of text, or None."""
    for key, value in user.items():
        if value is None or type(value) is str:
            continue
        if key not in _TAKES_LIST or type(value) is not list:
            return False
        if not all(type(item) is str for item in value):
            return False
    return True


# ------------------------------------------------------------------------- custom_data

_CUSTOM_DATA_KINDS: Final[dict[str, int]] = {
    "value": _AMOUNT,
    "net_revenue": _AMOUNT,
    "currency": _TEXT,
    "content_name": _TEXT,
    "content_category": _TEXT,
    "content_ids": _TEXT_LIST,
    "contents": _CONTENTS,
    "content_type": _TEXT,
    "order_id": _TEXT,
    "predicted_ltv": _AMOUNT,
    "num_items": _COUNT,
    "status": _TEXT,
    "search_string": _TEXT,
    "delivery_category": _DELIVERY,
    "item_number": _TEXT,
    # An enum the fast path leaves to the model, as it does the event-level one.
    "customer_segmentation": _UNSUPPORTED,
}
_CONTENT_KINDS: Final[dict[str, int]] = {
    "id": _ID,
    "quantity": _COUNT,
    "item_price": _FLOAT,
    "title": _TEXT,
    "description": _TEXT,
    "brand": _TEXT,
    "category": _TEXT,
    "delivery_category": _DELIVERY,
}
# Beyond 2**53 an int has no exact float; leave that to pydantic's own conversion.
_EXACT_FLOAT_INT: Final = 2**53

# (declared keys present, in declaration order, with their kinds; any custom properties?)
ObjectPlan = tuple[Plan, bool]


def _object_plan(kinds: dict[str, int], keys: tuple[str, ...]) -> ObjectPlan | None:
    """How to compact an open object with these keys, ``None`` for a non-text key."""
    if not all(type(key) is str for key in keys):
        return None
    declared = tuple((key, kind) for key, kind in kinds.items() if key in keys)
    return declared, len(declared) < len(keys)


@functools.lru_cache(maxsize=256)
def _custom_data_plan(keys: tuple[str, ...]) -> ObjectPlan | None:
    return _object_plan(_CUSTOM_DATA_KINDS, keys)


@functools.lru_cache(maxsize=256)
def _content_plan(keys: tuple[str, ...]) -> ObjectPlan | None:
    return _object_plan(_CONTENT_KINDS, keys)


def _custom_data_wire(custom: Any, problems: list[Problem]) -> dict[str, Any] | None:
    """``CustomData.to_wire``'s result from a dict, or ``None`` to use the model."""
    if type(custom) is not dict:
        return None
    plan = _custom_data_plan(tuple(custom))
    if plan is None:
        return None
    out = _compact(custom, plan, _CUSTOM_DATA_KINDS)
    if out is None:
        return None
    normalize_currency(out, problems)
    return out


def _compact(
    source: dict[str, Any], plan: ObjectPlan, kinds: dict[str, int]
) -> dict[str, Any] | None:
    """What ``compact(model)`` gives: declared fields in order, then custom properties.

    Declared ``None``, ``""`` and ``[]`` are dropped; custom properties are
    dropped only when ``None`` and otherwise copied as the open models keep them.
    """
    declared, has_extras = plan
    out: dict[str, Any] = {}
    for key, kind in declared:
        value = source[key]
        typ = type(value)
        if kind == _TEXT:
            if typ is str:
                if value:
                    out[key] = value
                continue
        elif kind == _AMOUNT:
            if typ is float or typ is int:
                out[key] = value
                continue
        elif kind == _ID:
            if typ is str:
                if value:
                    out[key] = value
                continue
        elif kind == _COUNT:
            if typ is int:
                out[key] = value
                continue
        elif kind == _FLOAT:
            if typ is float:
                out[key] = value
                continue
        elif kind == _CONTENTS and typ is list:
            lines = _contents_wire(value)
            if lines is None:
                return None
            if lines:
                out[key] = lines
            continue
        if value is None:
            continue
        converted = _field_value(kind, value)
        if converted is _REJECT:
            return None
        if converted != [] and converted != "":
            out[key] = converted
    if has_extras:
        for key, value in source.items():
            if value is not None and key not in kinds:
                out[key] = wire_value(value)
    return out


def _field_value(kind: int, value: Any) -> Any:
    typ = type(value)
    if kind == _COUNT:
        return value if typ is int else _REJECT
    if kind == _FLOAT:
        if typ is float:
            return value
        exact = typ is int and -_EXACT_FLOAT_INT < value < _EXACT_FLOAT_INT
        return float(value) if exact else _REJECT
    if kind == _ID:
        if typ is str:
            return value
        # coerce_numbers_to_str: an int id is stored as its decimal text.
        return str(value) if typ is int else _REJECT
    if kind == _DELIVERY:
        return value if typ is str and value in _DELIVERY_CATEGORIES else _REJECT
    if kind == _TEXT_LIST:
        listed = _str_list(value)
        return _REJECT if listed is None else listed
    return _REJECT


def _contents_wire(items: list[Any]) -> list[dict[str, Any]] | None:
    lines = []
    for item in items:
        if type(item) is not dict:
            return None
        plan = _content_plan(tuple(item))
        if plan is None:
            return None
        line = _compact(item, plan, _CONTENT_KINDS)
        if line is None:
            return None
        lines.append(line)
    return lines
