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
    ``str``, ``int``, ``float``, ``lower``, ``upper``, ``strip``, ``first``
    (a list's first item), ``join`` / ``join:SEP`` (a list to one string,
    ``,`` by default), ``default:VALUE`` (a string default), ``cents_to_units``
    (÷ 100), ``minor_to_units`` (÷ 10^exponent of ``currency``: JPY 0, KWD 3,
    most 2) and ``iso8601_to_unix`` (a date-time, UTC when it has no offset,
    to Unix seconds; an integer passes through).  String transforms apply to
    each item of a list.
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
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult
from pydantic import AliasChoices, BaseModel

from capirelay.events import AppData, AttributionData, Content, Event, OriginalEventData, UserData
from capirelay.problems import Problem, warning
from capirelay.sources._toml_lines import KeyLines, KeyPath
from capirelay.sources._transforms import (
    TRANSFORMS,
    TRANSFORMS_WITH_ARGUMENT,
    TransformError,
    parse_transform,
)

__all__ = [
    "ContentsSpec",
    "EventMapping",
    "EventRule",
    "FieldSpec",
    "MappedEvent",
    "MappingIssue",
    "MappingLoadError",
    "load_mapping",
    "parse_mapping",
    "redacted_summary",
]

_TOP_KEYS = frozenset({"defaults", "event"})
_RULE_KEYS = frozenset({"name", "topic", "when", "set", "map", "contents"})
_SPEC_KEYS = frozenset({"path", "transform", "default", "format", "currency"})


def _model_keys(model: type[BaseModel]) -> frozenset[str]:
    """Field names plus every accepted alias (``email`` and ``em``)."""
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        keys.add(name)
        if isinstance(info.validation_alias, AliasChoices):
            keys.update(c for c in info.validation_alias.choices if isinstance(c, str))
        elif isinstance(info.validation_alias, str):
            keys.add(info.validation_alias)
    return frozenset(keys)


_EVENT_FIELDS = _model_keys(Event)
# Object fields that take sub-keys; None = open (Meta allows custom properties).
_OBJECT_FIELDS: dict[str, frozenset[str] | None] = {
    "user_data": _model_keys(UserData),
    "custom_data": None,
    "app_data": _model_keys(AppData),
    "original_event_data": _model_keys(OriginalEventData),
    "attribution_data": _model_keys(AttributionData),
}
_CONTENT_FIELDS = _model_keys(Content)
_TOML_LINE = re.compile(r"at line (\d+)")


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
class EventRule:
    label: str
    topics: frozenset[str] | None
    when: ParsedResult | None
    constants: tuple[tuple[tuple[str, ...], Any], ...]
    fields: tuple[FieldSpec, ...]
    contents: ContentsSpec | None

    def matches(self, payload: Any, topic: str | None) -> bool:
        if self.topics is not None and topic not in self.topics:
            return False
        if self.when is None:
            return True
        try:
            return _truthy(self.when.search(payload))
        except JMESPathError:
            # A type error in a condition means the payload lacks what it tests.
            return False

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
    return parse_mapping(text, source=str(path))


def parse_mapping(text: str, *, source: str = "<mapping>") -> EventMapping:
    """Compile mapping text; ``source`` names the file in error messages."""
    return _Loader(text, source).load()


def _display(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class _Loader:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.issues: list[MappingIssue] = []
        self.lines = KeyLines(text)

    def issue(self, path: KeyPath, message: str) -> None:
        self.issues.append(
            MappingIssue(self.source, self.lines.line_of(path), _display(path), message)
        )

    def load(self) -> EventMapping:
        try:
            document = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            found = _TOML_LINE.search(str(exc))
            line = int(found.group(1)) if found else None
            raise MappingLoadError(
                [MappingIssue(self.source, line, "", f"not valid TOML: {exc}")]
            ) from None
        rules = self._document(document)
        if self.issues:
            raise MappingLoadError(self.issues)
        return EventMapping(self.source, tuple(rules))

    def _document(self, document: dict[str, Any]) -> list[EventRule]:
        for key in document:
            if key not in _TOP_KEYS:
                self.issue((key,), "unknown top-level key; a mapping has [defaults] and [[event]]")
        defaults = document.get("defaults", {})
        if not isinstance(defaults, dict):
            self.issue(("defaults",), "must be a table of constants ([defaults])")
            defaults = {}
        default_constants = dict(self._constants(defaults, ("defaults",)))
        rules_raw = document.get("event")
        if not isinstance(rules_raw, list) or not rules_raw:
            self.issue(("event",), "a mapping needs at least one [[event]] rule")
            return []
        rules = []
        for index, raw in enumerate(rules_raw):
            rule = self._rule(raw, ("event", index), default_constants)
            if rule is not None:
                rules.append(rule)
        return rules

    def _rule(
        self, raw: dict[str, Any], path: KeyPath, default_constants: dict[tuple[str, ...], Any]
    ) -> EventRule | None:
        for key in raw:
            if key not in _RULE_KEYS:
                self.issue(
                    (*path, key),
                    f"unknown key in an [[event]] rule; allowed: {', '.join(sorted(_RULE_KEYS))}",
                )
        label = raw.get("name", _display(path))
        if not isinstance(label, str):
            self.issue((*path, "name"), "must be a string")
            label = _display(path)
        own = dict(self._constants(raw.get("set", {}), (*path, "set")))
        constants = {**default_constants, **own}
        fields = self._fields(raw.get("map", {}), (*path, "map"))
        mapped = {spec.target for spec in fields}
        for target in mapped & set(own):
            self.issue((*path, "map", *target), "given in both set and map; keep one")
        contents = self._contents_spec(raw.get("contents"), (*path, "contents"))
        if contents is not None and ("custom_data", "contents") in mapped | set(constants):
            self.issue((*path, "contents"), "custom_data.contents is also set or mapped; keep one")
        if ("event_name",) not in mapped and ("event_name",) not in constants:
            self.issue(
                path,
                "event_name is missing; add event_name under [event.set] "
                "(a constant) or [event.map] (an expression)",
            )
        return EventRule(
            label=label,
            topics=self._topics(raw.get("topic"), (*path, "topic")),
            when=self._optional_expression(raw.get("when"), (*path, "when")),
            constants=tuple(constants.items()),
            fields=tuple(fields),
            contents=contents,
        )

    def _topics(self, value: Any, path: KeyPath) -> frozenset[str] | None:
        if value is None:
            return None
        if isinstance(value, str):
            return frozenset({value})
        if isinstance(value, list) and value and all(isinstance(t, str) for t in value):
            return frozenset(value)
        self.issue(path, "must be a topic string or a non-empty list of topic strings")
        return None

    def _optional_expression(self, value: Any, path: KeyPath) -> ParsedResult | None:
        if value is None:
            return None
        return self._expression(value, path)

    def _expression(self, value: Any, path: KeyPath) -> ParsedResult | None:
        if not isinstance(value, str):
            self.issue(path, "must be a JMESPath expression (a string)")
            return None
        try:
            return jmespath.compile(value)
        except JMESPathError as exc:
            self.issue(path, f"invalid JMESPath expression {value!r}: {_jmespath_reason(exc)}")
            return None

    def _targets(self, table: Any, path: KeyPath) -> Iterator[tuple[tuple[str, ...], Any]]:
        """(wire target, raw value) for each known field in a ``set``/``map`` table."""
        if not isinstance(table, dict):
            self.issue(path, "must be a table")
            return
        for key, value in table.items():
            if key not in _EVENT_FIELDS:
                self.issue(
                    (*path, key),
                    "unknown Conversions API event field; check its spelling "
                    "(event_name, event_time, event_id, action_source, event_source_url, "
                    "user_data.*, custom_data.* ...)",
                )
            elif key in _OBJECT_FIELDS and isinstance(value, dict):
                allowed = _OBJECT_FIELDS[key]
                for sub, sub_value in value.items():
                    if allowed is not None and sub not in allowed:
                        self.issue((*path, key, sub), f"unknown {key} field; check its spelling")
                    else:
                        yield (key, sub), sub_value
            else:
                yield (key,), value

    def _constants(self, table: Any, path: KeyPath) -> Iterator[tuple[tuple[str, ...], Any]]:
        yield from self._targets(table, path)

    def _fields(self, table: Any, path: KeyPath) -> list[FieldSpec]:
        specs = []
        for target, value in self._targets(table, path):
            spec = self._spec(value, (*path, *target), target)
            if spec is not None:
                specs.append(spec)
        return specs

    def _spec(self, value: Any, path: KeyPath, target: tuple[str, ...]) -> FieldSpec | None:
        if isinstance(value, str):
            expression = self._expression(value, path)
            return FieldSpec(target, expression) if expression is not None else None
        if not isinstance(value, dict):
            self.issue(path, "must be an expression string or a table with path = ...")
            return None
        for key in value:
            if key not in _SPEC_KEYS:
                self.issue(
                    (*path, key),
                    f"unknown key in a field spec; allowed: {', '.join(sorted(_SPEC_KEYS))}",
                )
        if "path" not in value:
            self.issue(path, 'a field spec needs path = "<JMESPath expression>"')
            return None
        expression = self._expression(value["path"], (*path, "path"))
        transforms = self._transforms(value.get("transform"), (*path, "transform"))
        template = value.get("format")
        if template is not None and (not isinstance(template, str) or "{}" not in template):
            self.issue((*path, "format"), "must be a string with {} where the value goes")
            template = None
        currency = self._optional_expression(value.get("currency"), (*path, "currency"))
        if any(name == "minor_to_units" for name, _ in transforms) and currency is None:
            self.issue(
                (*path, "transform"),
                'minor_to_units needs currency = "<expression giving the ISO 4217 code>"',
            )
        if expression is None:
            return None
        return FieldSpec(target, expression, transforms, value.get("default"), template, currency)

    def _transforms(self, value: Any, path: KeyPath) -> tuple[tuple[str, str | None], ...]:
        if value is None:
            return ()
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            self.issue(path, "must be a transform name or a list of names")
            return ()
        parsed = []
        for spec in names:
            name, argument = parse_transform(spec)
            if name not in TRANSFORMS:
                self.issue(
                    path,
                    f"unknown transform {name!r}; known: {', '.join(sorted(TRANSFORMS))}",
                )
            elif argument is not None and name not in TRANSFORMS_WITH_ARGUMENT:
                self.issue(path, f"transform {name!r} takes no argument (drop ':{argument}')")
            else:
                parsed.append((name, argument))
        return tuple(parsed)

    def _contents_spec(self, table: Any, path: KeyPath) -> ContentsSpec | None:
        if table is None:
            return None
        if not isinstance(table, dict):
            self.issue(path, "must be a table ([event.contents]) with each = ...")
            return None
        if "each" not in table:
            self.issue(path, 'needs each = "<expression giving the list of items>"')
            return None
        each = self._expression(table["each"], (*path, "each"))
        specs = []
        for key, value in table.items():
            if key == "each":
                continue
            if key not in _CONTENT_FIELDS:
                self.issue(
                    (*path, key),
                    f"unknown contents field; allowed: {', '.join(sorted(_CONTENT_FIELDS))}",
                )
                continue
            spec = self._spec(value, (*path, key), ("custom_data", "contents", key))
            if spec is not None:
                specs.append(spec)
        if each is None:
            return None
        return ContentsSpec(each, tuple(specs))


def _jmespath_reason(exc: JMESPathError) -> str:
    message = getattr(exc, "msg", None) or type(exc).__name__
    position = getattr(exc, "lex_position", None)
    return f"{message} at column {position}" if position is not None else str(message)
