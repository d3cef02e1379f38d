"""Normalization and SHA-256 hashing of ``user_data`` identifiers, Meta-exact.

This is where personal data stops: everything after it (validation, the
outbox, delivery, logs) only ever sees the hashes this package returns.

It follows Meta's documented rules (Customer Information Parameters page),
not the facebook-business SDK's thinner ones: NFC Unicode first, then trim
and lowercase, then one rule per field (see the ``_person``, ``_phone``,
``_dates`` and ``_places`` modules for each rule and the choices made where
Meta is silent).  A value that cannot be used raises
:class:`NormalizationError` naming the field and why, never the value.

Already-hashed input passes through :func:`hash_field` unchanged (lowercased):

* 64 hex digits, any case: a SHA-256 hash, for every field.
* 32 hex digits containing at least one letter ``a``-``f``: an MD5 hash, for
  every field except ``ph``.  Meta documents only SHA-256 for the Conversions
  API, but both its Python SDK and its param builder pass MD5 through, and
  so does the pixel; dropping or re-hashing it would only make the value
  certainly useless.  A 32-character value of digits only is never taken for
  a hash (it is a phone number, or a number; the SDK sends such phones
  unhashed), and ``ph`` never passes MD5 through because a phone is digits.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

from . import _dates, _person, _phone, _places
from ._errors import NormalizationError

__all__ = [
    "WIRE_KEYS",
    "NormalizationError",
    "hash_field",
    "is_sha256",
    "normalize",
    "sha256_hex",
]

_WIRE_FIELDS = (
    "em", "ph", "fn", "ln", "db", "ge", "ct", "st", "zp", "country", "external_id",
    "f5first", "f5last", "fi", "dobd", "dobm", "doby",
)  # fmt: skip
WIRE_KEYS: dict[str, str] = {
    **{key: key for key in _WIRE_FIELDS},
    "email": "em",
    "phone": "ph",
    "first_name": "fn",
    "last_name": "ln",
    "date_of_birth": "db",
    "gender": "ge",
    "city": "ct",
    "state": "st",
    "zip_code": "zp",
}

_Rule = Callable[[str, str], str]
_HintedRule = Callable[[str, str, str | None], str]

_RULES: dict[str, _Rule] = {
    "em": _person.email,
    "fn": _person.name,
    "ln": _person.name,
    "f5first": _person.first_five,
    "f5last": _person.first_five,
    "fi": _person.initial,
    "ge": _person.gender,
    "external_id": _person.external_id,
    "db": _dates.date_of_birth,
    "dobd": _dates.day_of_birth,
    "dobm": _dates.month_of_birth,
    "doby": _dates.year_of_birth,
    "ct": _places.city,
    "country": _places.country,
}
_HINTED_RULES: dict[str, _HintedRule] = {
    "ph": _phone.phone,
    "st": _places.state,
    "zp": _places.zip_code,
}

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_MD5 = re.compile(r"[0-9a-fA-F]{32}")


def normalize(field: str, value: str, *, country: str | None = None) -> str:
    """The plain value Meta matches on for ``field`` (a wire key or readable name).

    ``country`` (ISO alpha-2 or a country name) is the hint ``ph``, ``st`` and
    ``zp`` use; a hint that is not a recognised country counts as no hint.
    ``value`` is a plain value: already-hashed input is recognised only by
    :func:`hash_field`.  Raises :class:`NormalizationError` when the value
    cannot be used, and ``ValueError`` for an unknown ``field``.
    """
    key = _wire_key(field)
    rule = _RULES.get(key)
    if rule is not None:
        return rule(key, value)
    region = _places.resolve_country(country) if country is not None else None
    return _HINTED_RULES[key](key, value, region)


def hash_field(field: str, value: str, *, country: str | None = None) -> str:
    """SHA-256 hex of :func:`normalize`'s result, or an already-hashed value as is."""
    key = _wire_key(field)
    if isinstance(value, str):
        candidate = value.strip()
        if _is_hash(key, candidate):
            return candidate.lower()
    normalized = normalize(key, value, country=country)
    return sha256_hex(normalized)


def is_sha256(value: str) -> bool:
    """True for 64 hex digits (any case, surrounding whitespace ignored)."""
    return isinstance(value, str) and _SHA256.fullmatch(value.strip()) is not None


def sha256_hex(text: str) -> str:
    """Lowercase hex SHA-256 of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_hash(key: str, candidate: str) -> bool:
    length = len(candidate)
    if length == 64:
        return _SHA256.fullmatch(candidate) is not None
    if length == 32 and key != "ph":
        return _MD5.fullmatch(candidate) is not None and not candidate.isdigit()
    return False


def _wire_key(field: str) -> str:
    try:
        return WIRE_KEYS[field]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown user_data field {field!r}; expected one of {', '.join(WIRE_KEYS)}"
        ) from None
