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
* The param builder's hashed output, a SHA-256 digest followed by ``.`` and the
  builder's appendix (``<digest>.AQQCAQMC``): sent as the builder made it (the
  digest lowercased), as Meta's guidance on the builder asks.
* 32 hex digits containing at least one letter ``a``-``f``: an MD5 hash, for
  every field except ``ph`` and ``external_id``.  Meta documents only SHA-256 for the Conversions
  API, but both its Python SDK and its param builder pass MD5 through, and
  so does the pixel; dropping or re-hashing it would only make the value
  certainly useless.  A 32-character value of digits only is never taken for
  a hash (it is a phone number, or a number; the SDK sends such phones
  unhashed), ``ph`` never passes MD5 through because a phone is digits, and
  ``external_id`` never does because 32 hex digits there are far more often a
  UUID written without dashes (``uuid4().hex``) than a digest: it is hashed.

Memoization (results only ever live in this process's memory, never on disk):

* Place and gender keys (``country st ct ge``) repeat heavily in real
  traffic (one shop's customers live in few places), so their hashes are kept
  in a bounded LRU cache of :data:`PLACE_CACHE_SIZE` entries keyed on
  ``(key, value, region)``.
* First and last names (``fn ln``) repeat too, but they are personal data, so
  their cache is small (:data:`NAME_CACHE_SIZE` entries, least recently used
  evicted): raw names stay in memory no longer than the busiest of them do.
* Emails, phones, dates of birth, zip codes and external ids are never cached.
  The first four are nearly unique per customer.  Zip codes repeat more, but
  there are tens of thousands of them: measured with distinct zips, a cache
  that mostly misses cost more (LRU bookkeeping, and cyclic-GC time on its
  entries) than the ~1 µs rule it would save.

:func:`clear_caches` empties every cache (including the country-hint cache);
:func:`cache_info` reports their hit rates.  :func:`hash_wire_key` is the hot
path for code that hashes many keys of one event: it takes a wire key and a
region already resolved with :func:`resolve_country`, so the hint is resolved
once per event rather than once per key.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable
from hashlib import sha256

from capirelay.meta_facts import BUILDER_APPENDIX_PATTERN, HASHED_USER_DATA_KEYS

from . import _dates, _person, _phone, _places
from ._errors import NormalizationError

__all__ = [
    "WIRE_KEYS",
    "NormalizationError",
    "cache_info",
    "clear_caches",
    "country_codes",
    "digest_of",
    "earlier_hashes",
    "hash_field",
    "hash_wire_key",
    "is_hashed",
    "is_sha256",
    "normalize",
    "resolve_country",
    "sha256_hex",
    "us_state_codes",
]

WIRE_KEYS: dict[str, str] = {
    **{key: key for key in HASHED_USER_DATA_KEYS},
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
_MD5_LENGTH = 32
_SHA256_LENGTH = 64
# The param builder's hashed output: a SHA-256 digest, "." and the builder's appendix.
_BUILDER_HASHED = re.compile(rf"([0-9a-fA-F]{{64}})(\.{BUILDER_APPENDIX_PATTERN})")

PLACE_CACHE_SIZE = 8192
NAME_CACHE_SIZE = 2048
_PLACE_KEYS = frozenset({"country", "st", "ct", "ge"})
_NAME_KEYS = frozenset({"fn", "ln"})

resolve_country = _places.resolve_country
country_codes = _places.country_codes
us_state_codes = _places.us_state_codes


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
    region = resolve_country(country) if country is not None and key in _HINTED_RULES else None
    return hash_wire_key(key, value, region)


def hash_wire_key(key: str, value: str, region: str | None = None) -> str:
    """:func:`hash_field` for a wire ``key`` and an already-resolved ``region``.

    ``key`` must be a wire key (``em``, ``ph`` ...; see :data:`WIRE_KEYS`) and
    ``region`` an ISO alpha-2 code as :func:`resolve_country` returns it, or
    ``None``; ``region`` only matters for ``ph``, ``st`` and ``zp``.
    Raises :class:`NormalizationError` like :func:`hash_field`.
    """
    if type(value) is str:
        if key in _PLACE_KEYS:
            return _hash_place(key, value, region if key in _HINTED_RULES else None)
        if key in _NAME_KEYS:
            return _hash_name(key, value)
    return _hash_uncached(key, value, region)


def _hash_uncached(key: str, value: str, region: str | None) -> str:
    # Stripping only shortens, so text shorter than an MD5 digest is never a hash.
    if isinstance(value, str) and len(value) >= _MD5_LENGTH:
        candidate = value.strip()
        if _is_hash(key, candidate):
            return candidate.lower()
        if (
            len(candidate) > _SHA256_LENGTH
            and (built := _BUILDER_HASHED.fullmatch(candidate)) is not None
        ):
            # Sent as the builder made it: the digest lowercased, its appendix untouched
            # (base64url: its case is part of it).
            return built[1].lower() + built[2]
    rule = _RULES.get(key)
    normalized = rule(key, value) if rule is not None else _HINTED_RULES[key](key, value, region)
    return sha256(normalized.encode()).hexdigest()


# Errors are not cached (lru_cache never stores an exception), so a bad value costs
# its full rule every time; only good values, the common case, are remembered.
_hash_place = functools.lru_cache(maxsize=PLACE_CACHE_SIZE)(_hash_uncached)


@functools.lru_cache(maxsize=NAME_CACHE_SIZE)
def _hash_name(key: str, value: str) -> str:
    return _hash_uncached(key, value, None)


def clear_caches() -> None:
    """Forget every memoized hash and country hint (benchmarks start cold with it)."""
    _hash_place.cache_clear()
    _hash_name.cache_clear()
    _places.clear_hint_cache()


def cache_info() -> dict[str, functools._CacheInfo]:
    """Hits, misses and size of each cache, by name."""
    return {
        "places": _hash_place.cache_info(),
        "names": _hash_name.cache_info(),
        "country_hints": _places.hint_cache_info(),
    }


def earlier_hashes(key: str, value: str, region: str | None = None) -> set[str]:
    """What capirelay releases before 2026-12-07 stored for ``value`` under wire ``key``
    where today's rule differs, so that erasure still finds events stored then (queued,
    dead-lettered, and the receipts' identities): an ``external_id`` kept its inner
    whitespace, and one of 32 hex digits passed through as an MD5; a phone that already
    carried the hinted region's calling code was read nationally (``4915123456789``
    with a DE hint as ``494915123456789``).  Empty where nothing changed."""
    found: set[str] = set()
    if not isinstance(value, str):
        return found
    if key == "external_id":
        text = value.strip()
        if len(text) == _MD5_LENGTH and _MD5.fullmatch(text) and not text.isdigit():
            found.add(text.lower())
        with contextlib.suppress(NormalizationError):
            found.add(sha256(_person.prepare(key, value).encode()).hexdigest())
    elif key == "ph" and region is not None:
        national = _phone.national_reading(value, region)
        if national is not None:
            found.add(sha256(national.encode()).hexdigest())
    return found


def is_sha256(value: str) -> bool:
    """True for 64 hex digits (any case, surrounding whitespace ignored)."""
    return isinstance(value, str) and _SHA256.fullmatch(value.strip()) is not None


def is_hashed(value: str) -> bool:
    """True for a value :func:`hash_field` passes through as SHA-256-hashed: 64 hex digits,
    alone or with the param builder's appendix (``<digest>.AQQCAQMC``), any case,
    surrounding whitespace ignored."""
    if not isinstance(value, str) or len(value) < _SHA256_LENGTH:
        return False
    text = value.strip()
    return _SHA256.fullmatch(text) is not None or _BUILDER_HASHED.fullmatch(text) is not None


def digest_of(hashed: str) -> str:
    """The SHA-256 digest a hashed value carries, lowercased, without the param builder's
    appendix (``<digest>.AQQCAQMC`` -> ``<digest>``): what erasure compares stored values
    by.  Shorter values (a 32-hex pass-through) are returned lowercased as they are."""
    return hashed[:_SHA256_LENGTH].lower()


def sha256_hex(text: str) -> str:
    """Lowercase hex SHA-256 of ``text`` encoded as UTF-8."""
    return sha256(text.encode("utf-8")).hexdigest()


def _is_hash(key: str, candidate: str) -> bool:
    length = len(candidate)
    if length == _SHA256_LENGTH:
        return _SHA256.fullmatch(candidate) is not None
    if length == _MD5_LENGTH and key not in _NEVER_MD5:
        return _MD5.fullmatch(candidate) is not None and not candidate.isdigit()
    return False


# A phone is digits; an external id of 32 hex digits is far more often a UUID written
# without dashes (uuid4().hex) than an MD5 digest: both are hashed as the values they are.
_NEVER_MD5 = frozenset({"ph", "external_id"})


def _wire_key(field: str) -> str:
    try:
        return WIRE_KEYS[field]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown user_data field {field!r}; expected one of {', '.join(WIRE_KEYS)}"
        ) from None
