"""Declarative event mappings: a TOML file that turns any JSON payload into CAPI events.

A mapping lives in the user's repository next to the code that sends the
payload, is loaded once at start (every mistake reported with ``FILE:LINE:
FIELD``), and is applied per payload without I/O.  Its output is CAPI-shaped
*raw* event dicts: they go through :func:`capirelay.ingest.prepare_event`
like any other event (normalize, hash, validate, dedup), so no raw identifier
is stored.  ``capirelay mapping test`` shows what a file does to a sample.

The format
----------
::

    [defaults]                         # optional: constants for every rule
    action_source = "website"

    [[event]]                          # one rule per event it can emit
    name = "paid order"                # optional label shown by `mapping test`
    topic = ["orders/paid"]            # optional: only for these topics (a string or a list)
    when = "financial_status == 'paid'"   # optional JMESPath condition on the payload

    [event.set]                        # constants (any TOML value)
    event_name = "Purchase"
    custom_data.content_type = "product"

    [event.map]                        # JMESPath expressions on the payload
    event_time = { path = "processed_at", transform = "iso8601_to_unix" }
    event_id = { path = "id", transform = "str", format = "shop:{}:Purchase" }
    user_data.email = { path = "email", transform = "lower" }
    user_data.external_id = { path = "customer.id", transform = "str" }
    custom_data.value = { path = "total_price", transform = "float" }
    custom_data.currency = "currency"

    [event.contents]                   # optional: custom_data.contents, one per item
    each = "line_items"                # expression giving the list of items
    id = { path = "product_id", transform = "str" }   # expressions on each item
    quantity = "quantity"
    item_price = { path = "price", transform = "float" }

Keys
    Top level: ``defaults`` (a table of constants, as in ``set``) and
    ``event`` (the array of rules; at least one).  A rule has ``name``,
    ``topic``, ``when``, ``set``, ``map`` and ``contents``; any other key is
    an error.
Field names
    The keys of ``set`` and ``map`` are the Conversions API's event fields
    (``event_name``, ``event_time``, ``event_id``, ``action_source``,
    ``event_source_url``, ...).  ``user_data``, ``custom_data``, ``app_data``,
    ``original_event_data`` and ``attribution_data`` take one level of
    sub-keys (``user_data.email`` or ``user_data.em``: readable names and wire
    keys both work).  Unknown names are errors, except inside ``custom_data``,
    where Meta allows custom properties.  A sub-key of ``contents`` must be a
    field of a Content item (``id``, ``quantity``, ``item_price``, ``title``,
    ``description``, ``brand``, ``category``, ``delivery_category``).
    ``user_data = "expr"`` (a string, not a table) maps the whole object.
Field specs (values in ``map`` and ``contents``)
    A string is a JMESPath expression.  A table has ``path`` (the expression,
    required), ``transform`` (a name or a list of names applied in order),
    ``default`` (used when the result is missing or empty), ``format`` (a
    string with ``{}`` where the value goes, applied last) and ``currency``
    (an expression giving the ISO 4217 code, for ``minor_to_units``).
Transforms
    ``str``, ``int``, ``float``, ``lower``, ``upper``, ``strip``,
    ``html_unescape`` (HTML entities such as ``&ndash;`` to characters, as
    WooCommerce's item names need), ``first`` (a list's first item), ``join`` /
    ``join:SEP`` (a list to one string, ``,`` by default), ``default:VALUE``
    (a string default), ``cents_to_units`` (÷ 100), ``minor_to_units`` (÷
    10^exponent of ``currency``: JPY 0, KWD 3, most 2), ``iso8601_to_unix``
    (a date-time, UTC when it has no offset, to Unix seconds; an integer passes
    through) and ``shopify_paid_at`` (a Shopify order object, ``path = "@"``, to
    the Unix time it was paid).  String transforms apply to each item of a list.
Semantics
    Every rule whose ``topic`` lists the payload's topic (rules without a
    ``topic`` match any) and whose ``when`` is truthy (JMESPath truthiness:
    not null, false, or an empty string/array/object) emits one event, in
    file order.  Constants come first (``defaults``, then ``set``), then the
    mapped fields; a mapped field whose result is missing or empty is left
    out (or takes its ``default``), so a ``[defaults]`` constant stays as the
    fallback of a ``map`` expression for the same field.  A rule's own
    ``set`` and ``map`` may not both give a field.  A rule that maps no ``event_time``, or
    whose expression finds none, gets the time of receipt.  ``event_name``
    must be given by ``set`` or ``map`` in every rule.  A transform that
    cannot convert a value leaves the field out with a warning problem
    (``mapping_transform_failed``); Meta's rules (e.g. Purchase needs
    ``currency`` and ``value``) are then checked by the ingest pipeline.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

from capirelay.problems import Problem, warning
from capirelay.sources._transforms import (
    TRANSFORMS,
    TransformError,
)

__all__ = [
    "ContentsSpec",
    "EventMapping",
    "EventRule",
    "FieldSpec",
    "MappedEvent",
    "MappingIssue",
    "MappingLoadError",
    "SkippedRule",
    "Unmapped",
    "load_mapping",
    "parse_mapping",
    "redacted_summary",
]

# ---------------------------------------------------------------------------
# Errors


@dataclass(frozen=True, slots=True)
class MappingIssue:
    """One mistake in a mapping file: where it is and what to do about it."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        if not self.field:
            return f"{where}: {self.message}"
        return f"{where}: {self.field}: {self.message}"


class MappingLoadError(ValueError):
    """A mapping file that cannot be used; ``issues`` lists every mistake found."""

    def __init__(self, issues: Sequence[MappingIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


# ---------------------------------------------------------------------------
# The compiled mapping


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One mapped field: where it goes, the expression and what to do with the result."""

    target: tuple[str, ...]
    expression: ParsedResult
    transforms: tuple[tuple[str, str | None], ...] = ()
    default: Any = None
    template: str | None = None
    currency: ParsedResult | None = None

    def evaluate(self, document: Any, problems: list[Problem], where: str) -> Any:
        """The field's value for ``document``; ``None`` leaves it out."""
        try:
            value = self.expression.search(document)
            currency = self.currency.search(document) if self.currency is not None else None
        except JMESPathError as exc:
            problems.append(
                warning(
                    "mapping_expression_failed",
                    where,
                    f"{where}: the mapping's expression failed on this payload "
                    f"({type(exc).__name__}); field left out",
                )
            )
            return None
        code = currency if isinstance(currency, str) else None
        for name, argument in self.transforms:
            try:
                value = TRANSFORMS[name](value, argument, code)
            except TransformError as exc:
                problems.append(
                    warning(
                        "mapping_transform_failed",
                        where,
                        f"{where}: {exc}; field left out — fix the mapping's path or transform",
                    )
                )
                return None
        if _is_empty(value):
            value = copy.deepcopy(self.default)
        if value is not None and self.template is not None:
            value = self.template.replace("{}", str(value))
        return value


@dataclass(frozen=True, slots=True)
class ContentsSpec:
    each: ParsedResult
    fields: tuple[FieldSpec, ...]


@dataclass(frozen=True, slots=True)
class MappedEvent:
    """One event a rule emitted: raw CAPI shape (may hold raw identifiers) and mapping problems."""

    rule: str
    event: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SkippedRule:
    """A rule for the payload's topic whose ``when`` did not hold, so it emitted nothing.

    ``event_id`` is the id the rule would have given the event (it names the vendor's order,
    never a person); ``failed`` says the condition could not be evaluated on this payload
    (a field it tests is missing or of another type).
    """

    rule: str
    condition: str | None
    event_id: str | None
    failed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "when": self.condition, "event_id": self.event_id}


@dataclass(frozen=True, slots=True)
class Unmapped:
    """Why a payload made no event to send: ``reason`` is ``no_rule_for_topic`` (no rule is
    for its topic) or ``condition_false`` (rules are, and each one's ``when`` did not hold,
    listed in ``rules``); a webhook adds ``test_mode`` (the vendor marks the payload a test
    and no test_event_code is set; ``rules`` without a condition).  ``message`` says so in a
    sentence that quotes no payload value."""

    reason: str
    message: str
    rules: tuple[SkippedRule, ...] = ()

    @property
    def event_ids(self) -> list[str]:
        return [rule.event_id for rule in self.rules if rule.event_id]


@dataclass(frozen=True, slots=True)
class EventRule:
    label: str
    topics: frozenset[str] | None
    when: ParsedResult | None
    constants: tuple[tuple[tuple[str, ...], Any], ...]
    fields: tuple[FieldSpec, ...]
    contents: ContentsSpec | None

    def matches(self, payload: Any, topic: str | None) -> bool:
        return self.for_topic(topic) and self.condition_holds(payload) is True

    def for_topic(self, topic: str | None) -> bool:
        return self.topics is None or topic in self.topics

    def condition_holds(self, payload: Any) -> bool | None:
        """Whether ``when`` holds for ``payload`` (no ``when`` always does); ``None`` when it
        cannot be evaluated on it, which counts as not holding."""
        if self.when is None:
            return True
        try:
            return _truthy(self.when.search(payload))
        except JMESPathError:
            # A type error in a condition means the payload lacks what it tests.
            return None

    def event_id(self, payload: Any) -> str | None:
        """The ``event_id`` this rule gives ``payload``, when it gives one."""
        for target, value in self.constants:
            if target == ("event_id",) and isinstance(value, str | int):
                return str(value)
        for spec in self.fields:
            if spec.target == ("event_id",):
                found = spec.evaluate(payload, [], "event_id")
                return str(found) if isinstance(found, str | int) and found != "" else None
        return None

    def build(self, payload: Any, now: float) -> MappedEvent:
        event: dict[str, Any] = {}
        problems: list[Problem] = []
        for target, value in self.constants:
            _put(event, target, copy.deepcopy(value))
        for spec in self.fields:
            value = spec.evaluate(payload, problems, ".".join(spec.target))
            if not _is_empty(value):
                _put(event, spec.target, value)
        if self.contents is not None:
            contents = self._contents(payload, problems)
            if contents:
                _put(event, ("custom_data", "contents"), contents)
        if _is_empty(event.get("event_time")):
            event["event_time"] = int(now)
        return MappedEvent(self.label, event, problems)

    def _contents(self, payload: Any, problems: list[Problem]) -> list[dict[str, Any]]:
        assert self.contents is not None
        try:
            items = self.contents.each.search(payload)
        except JMESPathError:
            return []
        if not isinstance(items, list):
            return []
        contents = []
        for index, item in enumerate(items):
            content: dict[str, Any] = {}
            for spec in self.contents.fields:
                where = f"custom_data.contents[{index}].{spec.target[-1]}"
                value = spec.evaluate(item, problems, where)
                if not _is_empty(value):
                    content[spec.target[-1]] = value
            if content and "id" not in content:
                problems.append(_content_without_id(index))
            elif content:
                contents.append(content)
        return contents


def _content_without_id(index: int) -> Problem:
    where = f"custom_data.contents[{index}].id"
    return warning(
        "content_without_id",
        where,
        f"{where}: this item has no id (no product id, variant id or SKU); Meta requires id in "
        "every content, so the item was left out — map an id, or set the webhook's content_id",
    )


@dataclass(frozen=True, slots=True)
class EventMapping:
    """A loaded mapping file; :meth:`apply` is pure and cheap."""

    source: str
    rules: tuple[EventRule, ...]

    def apply(self, payload: Any, *, now: float, topic: str | None = None) -> list[MappedEvent]:
        """The events ``payload`` maps to (none when no rule matches), in rule order."""
        return [rule.build(payload, now) for rule in self.rules if rule.matches(payload, topic)]

    def unmapped(self, payload: Any, *, topic: str | None = None) -> Unmapped:
        """Why :meth:`apply` gave no event for ``payload``: no rule for ``topic``, or the
        rules for it and the conditions that did not hold."""
        skipped = tuple(
            SkippedRule(
                rule.label,
                rule.when.expression if rule.when is not None else "",
                rule.event_id(payload),
                failed=holds is None,
            )
            for rule in self.rules
            if rule.for_topic(topic) and (holds := rule.condition_holds(payload)) is not True
        )
        if not skipped:
            return Unmapped("no_rule_for_topic", self._no_rule_message(topic))
        conditions = "; ".join(
            f"rule {rule.rule!r} only when {rule.condition}"
            + (" (which cannot be evaluated on this payload)" if rule.failed else "")
            for rule in skipped
        )
        on_topic = f"topic {topic!r}" if topic is not None else "this payload"
        return Unmapped(
            "condition_false",
            f"the mapping has a rule for {on_topic}, but its condition is false for this "
            f"payload, so no event was made: {conditions}",
            skipped,
        )

    def _no_rule_message(self, topic: str | None) -> str:
        named = sorted({t for rule in self.rules if rule.topics for t in rule.topics})
        rules_for = f" (its rules are for: {', '.join(named)})" if named else ""
        if topic is None:
            return f"the payload has no topic and every rule of the mapping is for one{rules_for}"
        return f"no rule of the mapping is for topic {topic!r}{rules_for}"


def _truthy(value: Any) -> bool:
    # JMESPath truthiness: 0 is true, unlike Python's.
    return not (value is None or value is False or value in ("", [], {}))


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and not value)


def _put(event: dict[str, Any], target: tuple[str, ...], value: Any) -> None:
    node = event
    for key in target[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[target[-1]] = value


def redacted_summary(event: Mapping[str, Any]) -> dict[str, Any]:
    """The mapped event with every ``user_data`` value replaced by a placeholder.

    Shows *which* identifiers a mapping found (what match quality depends on)
    without printing them.
    """
    summary = dict(event)
    user_data = event.get("user_data")
    if isinstance(user_data, Mapping):
        summary["user_data"] = {
            key: f"<redacted x{len(value)}>" if isinstance(value, list) else "<redacted>"
            for key, value in user_data.items()
        }
    elif user_data is not None:
        summary["user_data"] = "<redacted>"
    return summary


# ---------------------------------------------------------------------------
# Loading


def load_mapping(path: str | Path) -> EventMapping:
    """Read and compile a mapping file; :class:`MappingLoadError` lists every mistake."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingLoadError(
            [MappingIssue(str(path), None, "", f"cannot read the mapping file ({exc.strerror})")]
        ) from None
    except UnicodeDecodeError:
        # A file saved as UTF-16 (Windows Notepad's "Unicode") raised past every caller.
        raise MappingLoadError(
            [
                MappingIssue(
                    str(path), None, "", "the mapping file is not UTF-8 text; save it as UTF-8"
                )
            ]
        ) from None
    return parse_mapping(text, source=str(path))


def parse_mapping(text: str, *, source: str = "<mapping>") -> EventMapping:
    """Compile mapping text; ``source`` names the file in error messages."""
    from capirelay.sources._mapping_loader import MappingLoader

    return MappingLoader(text, source).load()
