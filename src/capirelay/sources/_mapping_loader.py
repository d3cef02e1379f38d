"""Compiling a mapping file: TOML in, an :class:`~capirelay.sources.mapping.EventMapping` out.

Every mistake is collected with its line (:mod:`capirelay.sources._toml_lines`)
and what to do about it; :class:`~capirelay.sources.mapping.MappingLoadError`
lists them all at once, so a mapping is fixed in one pass.  The mapping's
format is documented in :mod:`capirelay.sources.mapping`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult
from pydantic import AliasChoices, BaseModel

from capirelay.events import AppData, AttributionData, Content, Event, OriginalEventData, UserData
from capirelay.sources._toml_lines import KeyLines, KeyPath
from capirelay.sources._transforms import (
    TRANSFORMS,
    TRANSFORMS_WITH_ARGUMENT,
    parse_transform,
)
from capirelay.sources.mapping import (
    ContentsSpec,
    EventMapping,
    EventRule,
    FieldSpec,
    MappingIssue,
    MappingLoadError,
)

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


def _display(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class MappingLoader:
    """Compiles one mapping text, collecting every mistake before it fails."""

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
