"""The per-field transforms a mapping file may name, as one table.

A transform takes the value a JMESPath expression found and returns the value
to put in the event, or raises :class:`TransformError` (whose reason never
quotes the value: it may be an email).  ``None`` passes through every
transform except ``default``, so a missing field stays missing.  String
transforms apply to each item of a list.

``minor_to_units`` needs the currency of the amount; the mapping gives it as
an expression (``currency = "..."`` next to ``path``) and the caller passes
the evaluated code as ``currency``.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "TRANSFORMS",
    "TRANSFORMS_WITH_ARGUMENT",
    "Transform",
    "TransformError",
    "currency_exponent",
    "parse_transform",
]


class TransformError(ValueError):
    """A value the transform cannot convert; ``reason`` names the type, never the value."""


Transform = Callable[[Any, str | None, str | None], Any]

# ISO 4217 exponents that differ from 2, as the payment processors send minor
# units.  Stripe documents ISK, HUF and TWD as two-decimal in its API even
# where ISO says 0, so they stay at the default here.
_ZERO_DECIMAL = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA"}
    | {"PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"}
)
_THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})


def currency_exponent(code: str) -> int:
    """How many minor-unit digits an amount in ``code`` carries (2 unless listed)."""
    upper = code.strip().upper()
    if upper in _ZERO_DECIMAL:
        return 0
    if upper in _THREE_DECIMAL:
        return 3
    return 2


def _type_name(value: Any) -> str:
    return type(value).__name__


def _each(function: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def apply(value: Any) -> Any:
        if isinstance(value, list):
            return [function(item) for item in value]
        return function(value)

    return apply


def _string_op(name: str, op: Callable[[str], str]) -> Transform:
    def one(value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):
            raise TransformError(f"'{name}' needs a string, got {_type_name(value)}")
        return op(value)

    each = _each(one)
    return lambda value, argument, currency: each(value)


def _to_str(value: Any, argument: str | None, currency: str | None) -> Any:
    def one(item: Any) -> Any:
        if item is None or isinstance(item, str):
            return item
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, float) and item.is_integer():
            if not -(2**53) < item < 2**53:  # read from JSON inexactly: not the id sent
                raise TransformError("'str' got a number of 2**53 or more, not read exactly")
            return str(int(item))
        if isinstance(item, int | float):
            return str(item)
        raise TransformError(f"'str' cannot turn a {_type_name(item)} into a string")

    return _each(one)(value)


def _decimal(value: Any, name: str) -> Decimal:
    if isinstance(value, bool):
        raise TransformError(f"'{name}' needs a number, got bool")
    if isinstance(value, int | float | str):
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            raise TransformError(f"'{name}' needs a number, got a non-numeric string") from None
        if number.is_finite():
            return number
    raise TransformError(f"'{name}' needs a number, got {_type_name(value)}")


def _to_int(value: Any, argument: str | None, currency: str | None) -> Any:
    if value is None:
        return None
    number = _decimal(value, "int")
    if number != number.to_integral_value():
        raise TransformError("'int' needs a whole number")
    return int(number)


def _to_float(value: Any, argument: str | None, currency: str | None) -> Any:
    if value is None:
        return None
    return float(_decimal(value, "float"))


def _cents_to_units(value: Any, argument: str | None, currency: str | None) -> Any:
    if value is None:
        return None
    return float(_decimal(value, "cents_to_units") / 100)


def _minor_to_units(value: Any, argument: str | None, currency: str | None) -> Any:
    if value is None:
        return None
    if not currency:
        raise TransformError("'minor_to_units' found no currency code for the amount")
    exponent = currency_exponent(currency)
    return float(_decimal(value, "minor_to_units").scaleb(-exponent))


def _iso8601_to_unix(value: Any, argument: str | None, currency: str | None) -> Any:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise TransformError(f"'iso8601_to_unix' needs a string, got {_type_name(value)}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise TransformError("'iso8601_to_unix' needs an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        # WooCommerce's *_gmt fields and most exports without an offset are UTC.
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


# An order Shopify recorded more than this after its processed_at was backdated: imported
# from another platform (processed_at set to the original date, as Shopify documents for
# imports) or a point-of-sale sale synced later.  It happened at processed_at.
SHOPIFY_BACKDATED_SECONDS = 300


def _shopify_paid_at(value: Any, argument: str | None, currency: str | None) -> Any:
    """When a Shopify order of an ``orders/paid`` notification was paid, in Unix seconds.

    Reads the order object (``path = "@"``).  ``processed_at`` and ``created_at`` are when
    the order was placed; Shopify's order payload has no payment time of its own, but
    ``updated_at`` is set when the payment marks the order paid, the change that triggers
    ``orders/paid``.  So an order paid days after it was placed (bank transfer, cash on
    delivery, payment terms) is dated at payment, and one paid at checkout at checkout
    (the latest of the three).  A backdated order (``processed_at`` well before
    ``created_at``: an import of past orders) keeps its ``processed_at``, so history is
    not sent as today's purchases.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TransformError(
            f"'shopify_paid_at' needs the order object (path = \"@\"), got {_type_name(value)}"
        )
    processed, created, updated = (
        _iso8601_to_unix(value.get(key) or None, None, None)
        for key in ("processed_at", "created_at", "updated_at")
    )
    recorded_later = created - processed if created is not None and processed is not None else 0
    if recorded_later > SHOPIFY_BACKDATED_SECONDS:
        return processed
    known = [moment for moment in (processed, created, updated) if moment is not None]
    return max(known) if known else None


def _first(value: Any, argument: str | None, currency: str | None) -> Any:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _join(value: Any, argument: str | None, currency: str | None) -> Any:
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    parts = _to_str([item for item in items if item is not None and item != ""], None, None)
    return (argument if argument is not None else ",").join(parts) or None


def _url_origin(value: Any, argument: str | None, currency: str | None) -> Any:
    """``https://shop.example/`` from any URL of the shop: no path, query or fragment, so
    a capability link (Shopify's ``order_status_url``, ``...?key=``) leaves no secret."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TransformError(f"'url_origin' needs a URL string, got {_type_name(value)}")
    try:
        parts = urlsplit(value.strip())
    except ValueError:  # "http://[::1": an unclosed IPv6 bracket, or a malformed netloc
        raise TransformError("'url_origin' needs an absolute http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TransformError("'url_origin' needs an absolute http(s) URL")
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/"


def _default(value: Any, argument: str | None, currency: str | None) -> Any:
    if value is None or value == "" or value == []:
        return argument
    return value


TRANSFORMS: dict[str, Transform] = {
    "str": _to_str,
    "int": _to_int,
    "float": _to_float,
    "lower": _string_op("lower", str.lower),
    "upper": _string_op("upper", str.upper),
    "strip": _string_op("strip", str.strip),
    # WooCommerce's REST API gives item names HTML-encoded ("Ship Your Idea &ndash; Color: Black").
    "html_unescape": _string_op("html_unescape", html.unescape),
    "first": _first,
    "join": _join,
    "default": _default,
    "cents_to_units": _cents_to_units,
    "minor_to_units": _minor_to_units,
    "iso8601_to_unix": _iso8601_to_unix,
    "shopify_paid_at": _shopify_paid_at,
    "url_origin": _url_origin,
}

# Transforms written ``name:argument`` (``join: ``, ``default:USD``).
TRANSFORMS_WITH_ARGUMENT = frozenset({"join", "default"})


def parse_transform(spec: str) -> tuple[str, str | None]:
    """Split ``"join:, "`` into ``("join", ", ")``; a name without ``:`` has no argument."""
    name, colon, argument = spec.partition(":")
    return name.strip(), (argument if colon else None)
