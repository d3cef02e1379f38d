"""Content ids that match the catalog: per-preset ``content_id`` templates.

Meta matches ``contents[].id`` and ``content_ids`` against the ids of the
catalog feed, and every catalog integration writes its own form: a product
id, a variant id, an SKU, ``{sku}_{id}``, ``wc_post_id_{id}`` ...  A webhook
preset therefore builds each line item's id from a template,
``[webhooks.<name>] content_id = "..."``, defaulting to the form of the
vendor's own Meta catalog integration (see README, "Content ids").

Template syntax: text with ``{placeholder}`` fields, and ``|`` between
alternatives tried in order; the first alternative whose placeholders all
have a value is used (``"{sku}_{id}|wc_post_id_{id}"``: the SKU form when
the item has an SKU).  A placeholder has no value when the line item's field
is missing, null, empty or ``0`` (WooCommerce's ``variation_id`` of a simple
product).  An item no alternative fits gets no id; the mapping then leaves it
out of ``contents`` with a ``content_without_id`` problem, since Meta refuses
contents without ``id``.  Placeholders are preset fields (JMESPath over one
line item), listed in :data:`PRESET_FIELDS`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

from capirelay.problems import Problem
from capirelay.sources.mapping import ContentsSpec, EventMapping, EventRule, FieldSpec

__all__ = [
    "DEFAULT_TEMPLATES",
    "PRESET_FIELDS",
    "ContentIdTemplate",
    "TemplateError",
    "with_content_ids",
]

# Placeholder -> JMESPath over one line item, per preset.
PRESET_FIELDS: dict[str, dict[str, str]] = {
    "shopify": {
        "product_id": "product_id",
        "variant_id": "variant_id",
        "sku": "sku",
        "id": "product_id || variant_id",
    },
    "woocommerce": {
        # A variation's own id, else the product's: what the catalog integration syncs.
        "id": "(variation_id != `0` && variation_id) || product_id",
        "product_id": "product_id",
        "variation_id": "variation_id",
        "sku": "sku",
    },
}
# The vendors' own Meta catalog integrations (README, "Content ids", says which versions).
DEFAULT_TEMPLATES: dict[str, str] = {
    # Product id, falling back to the variant id, then the SKU, for line items of
    # deleted or custom products (product_id null).
    "shopify": "{product_id}|{variant_id}|{sku}",
    # Meta for WooCommerce 3.5: the product's (a variation's own) id.
    "woocommerce": "{id}",
}

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class TemplateError(ValueError):
    """A ``content_id`` template that cannot work; the message names the fix."""


@dataclass(frozen=True, slots=True)
class ContentIdTemplate:
    """A parsed template: alternatives of literal text and placeholders."""

    text: str
    alternatives: tuple[tuple[str, tuple[str, ...]], ...]
    fields: Mapping[str, ParsedResult]

    @classmethod
    def parse(cls, text: str, fields: Mapping[str, str], *, setting: str) -> ContentIdTemplate:
        if not fields:
            raise TemplateError(f"{setting}: this preset has no line items to take ids from")
        known = ", ".join("{" + name + "}" for name in fields)
        alternatives = []
        for alternative in text.split("|"):
            if not alternative.strip():
                raise TemplateError(f"{setting}: an empty alternative in {text!r}; e.g. {known}")
            names = tuple(_PLACEHOLDER.findall(alternative))
            if not names:
                raise TemplateError(
                    f"{setting}: {alternative!r} has no placeholder, so every item would get "
                    f"the same id; use some of {known}"
                )
            unknown = [name for name in names if name not in fields]
            if unknown:
                raise TemplateError(f"{setting}: unknown placeholder {{{unknown[0]}}}; use {known}")
            leftover = _PLACEHOLDER.sub("", alternative)
            if "{" in leftover or "}" in leftover:
                raise TemplateError(f"{setting}: unbalanced braces in {alternative!r}")
            alternatives.append((alternative, names))
        compiled = {name: jmespath.compile(expression) for name, expression in fields.items()}
        return cls(text, tuple(alternatives), compiled)

    def render(self, item: Any) -> str | None:
        """The id of one line item, or ``None`` when no alternative has all its values."""
        values: dict[str, str | None] = {}
        for alternative, names in self.alternatives:
            for name in names:
                if name not in values:
                    values[name] = self._value(name, item)
            if all(values[name] for name in names):
                return _PLACEHOLDER.sub(lambda m: values[m.group(1)] or "", alternative)
        return None

    def _value(self, name: str, item: Any) -> str | None:
        try:
            value = self.fields[name].search(item)
        except JMESPathError:
            return None
        if value is None or isinstance(value, bool | dict | list):
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        text = str(value).strip()
        return None if text in ("", "0") else text


@dataclass(frozen=True, slots=True)
class _ContentIdSpec(FieldSpec):
    """``contents[].id`` from the template (evaluated on one line item)."""

    content_id: ContentIdTemplate | None = None

    def evaluate(self, document: Any, problems: list[Problem], where: str) -> Any:
        assert self.content_id is not None
        return self.content_id.render(document)


@dataclass(frozen=True, slots=True)
class _ContentIdsSpec(FieldSpec):
    """``custom_data.content_ids``: the template over every line item (items without an id
    left out)."""

    content_id: ContentIdTemplate | None = None
    each: ParsedResult | None = field(default=None)

    def evaluate(self, document: Any, problems: list[Problem], where: str) -> Any:
        assert self.content_id is not None and self.each is not None
        try:
            items = self.each.search(document)
        except JMESPathError:
            return None
        if not isinstance(items, list):
            return None
        ids = [self.content_id.render(item) for item in items]
        return [i for i in ids if i] or None


_IDENTITY = jmespath.compile("@")


def with_content_ids(mapping: EventMapping, template: ContentIdTemplate) -> EventMapping:
    """``mapping`` with every rule's ``contents[].id`` and ``content_ids`` built by ``template``."""
    return replace(mapping, rules=tuple(_rule(rule, template) for rule in mapping.rules))


def _rule(rule: EventRule, template: ContentIdTemplate) -> EventRule:
    if rule.contents is None:
        return rule
    target = ("custom_data", "contents", "id")
    id_spec = _ContentIdSpec(target, _IDENTITY, content_id=template)
    contents = ContentsSpec(
        rule.contents.each,
        (id_spec, *(spec for spec in rule.contents.fields if spec.target != target)),
    )
    ids_target = ("custom_data", "content_ids")
    ids_spec = _ContentIdsSpec(ids_target, _IDENTITY, content_id=template, each=rule.contents.each)
    fields = tuple(spec for spec in rule.fields if spec.target != ids_target)
    has_ids = any(spec.target == ids_target for spec in rule.fields)
    return replace(rule, contents=contents, fields=(*fields, ids_spec) if has_ids else fields)
