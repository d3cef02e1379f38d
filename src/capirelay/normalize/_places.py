"""Rules for the place fields: city, state, zip code and country.

Meta's rules: ``ct`` lowercase with no punctuation, special characters or
spaces; ``st`` the 2-character ANSI code for US states, other countries
lowercase with no punctuation or spaces; ``zp`` lowercase without spaces or
dashes, US the first 5 digits, UK the full postcode (``m11ae``); ``country``
ISO 3166-1 alpha-2 lowercase (``United States`` -> ``us``).

Lookups against pycountry are slow, so every table is built once, on first
use, into plain dicts keyed by the letters-only lowercase form of each name.

State choices (beyond Meta's US rule): Canadian provinces become their
two-letter codes too (``Ontario`` -> ``on``, with a ``ca`` hint or none; Meta's
param builder cuts every state to two letters, which gives those codes for most
provinces, where the documentation's rule gives ``ontario``).  Without a hint, US
names and codes are tried, then Canadian provinces, then the generic rule.  With
any other country's hint the documented rule applies as it is: the name as
written, lowercase, without punctuation or spaces (``Bayern`` -> ``bayern``).  It
used to become that country's ISO 3166-2 code (``by``), which no documentation
asks for, and which made one shopper's state hash differently with a hint and
without one (``Île-de-France``: ``idf`` against ``îledefrance``).
"""

from __future__ import annotations

import functools
import re

import pycountry

from ._errors import NormalizationError
from ._text import (
    LETTERS_MARKS,
    LETTERS_MARKS_DIGITS,
    ascii_digits,
    fold_accents,
    keep_categories,
    prepare,
)

_COUNTRY_ALIASES: dict[str, str] = {
    "us": "us",
    "usa": "us",
    "unitedstatesofamerica": "us",
    "unitedstates": "us",
    "uk": "gb",
    "greatbritain": "gb",
    "britain": "gb",
    "england": "gb",
    "scotland": "gb",
    "wales": "gb",
    "northernireland": "gb",
    "unitedkingdom": "gb",
    "southkorea": "kr",
    "republicofkorea": "kr",
    "northkorea": "kp",
    "russia": "ru",
    "iran": "ir",
    "vietnam": "vn",
    "laos": "la",
    "syria": "sy",
    "bolivia": "bo",
    "venezuela": "ve",
    "tanzania": "tz",
    "moldova": "md",
    "czechrepublic": "cz",
    "czechia": "cz",
    "holland": "nl",
    "thenetherlands": "nl",
    "uae": "ae",
    "emirates": "ae",
    "turkey": "tr",
    "türkiye": "tr",
    "turkiye": "tr",
    "ivorycoast": "ci",
    "vatican": "va",
    "vaticancity": "va",
    "macedonia": "mk",
    "swaziland": "sz",
    "burma": "mm",
    "capeverde": "cv",
    "easttimor": "tl",
    "palestine": "ps",
    "taiwan": "tw",
    "hongkong": "hk",
    "macau": "mo",
    "macao": "mo",
    "brunei": "bn",
    "micronesia": "fm",
    "kosovo": "xk",
    "xk": "xk",
    "xkx": "xk",
}

# Countries as their own people write them (a checkout in the shop's language): pycountry
# has English names only, so "Deutschland" was refused where "Germany" was read.  Each is
# also matched without its accents ("Osterreich").  Latin script only: Meta's param builder
# and SDK both refuse a country in another script (中国), an authoritative vector.
_COUNTRY_ENDONYMS: dict[str, str] = {
    "deutschland": "de", "österreich": "at", "schweiz": "ch", "suisse": "ch",
    "svizzera": "ch", "españa": "es", "italia": "it", "brasil": "br", "nederland": "nl",
    "belgië": "be", "belgique": "be", "polska": "pl", "sverige": "se", "norge": "no",
    "danmark": "dk", "suomi": "fi", "éire": "ie", "ísland": "is", "magyarország": "hu",
    "česko": "cz", "českárepublika": "cz", "slovensko": "sk", "slovenija": "si",
    "hrvatska": "hr", "srbija": "rs", "românia": "ro", "lietuva": "lt", "latvija": "lv",
    "eesti": "ee",
}  # fmt: skip
_FUZZY_MIN_LENGTH = 4
_US_LIKE_ZIP_COUNTRIES = frozenset({"us", "pr", "vi", "gu", "as", "mp"})
_US_ZIP = re.compile(r"(\d{5})(?:[-\s]?\d{4})?")
_US_ZIP_NO_HINT = re.compile(r"(\d{5})(?:[-\s]\d{4})?")
# Five digits with spaces among them, then a dash and four digits: "98 121-9431".
_SPACED_US_ZIP = re.compile(r"(?:\d\s*){5}-\s*\d{4}")
_ZIP_DROPPED = re.compile(r"[\s\-]")
_ARMED_FORCES_CODES = ("aa", "ae", "ap")
_US_STATE_ALIASES = {
    "washingtondc": "dc", "usvirginislands": "vi",
    # The AP/GPO abbreviations addresses are still written with ("Calif.", "Mass."):
    # Meta wants the two-letter code for every US state.
    "ala": "al", "ariz": "az", "ark": "ar", "cal": "ca", "calif": "ca", "colo": "co",
    "conn": "ct", "del": "de", "fla": "fl", "ill": "il", "ind": "in", "kan": "ks",
    "kans": "ks", "mass": "ma", "mich": "mi", "minn": "mn", "miss": "ms", "mont": "mt",
    "neb": "ne", "nebr": "ne", "nev": "nv", "okla": "ok", "ore": "or", "oreg": "or",
    "penn": "pa", "penna": "pa", "tenn": "tn", "tex": "tx", "wash": "wa", "wva": "wv",
    "wis": "wi", "wisc": "wi", "wyo": "wy",
}  # fmt: skip


def city(field: str, value: str) -> str:
    text = keep_categories(prepare(field, value), LETTERS_MARKS)
    if not text:
        raise NormalizationError(field, "has no letters once punctuation, digits and spaces go")
    return text


def country(field: str, value: str) -> str:
    code = _lookup_country(prepare(field, value))
    if code is None:
        raise NormalizationError(
            field,
            "is not a recognised country name or code, or names several countries; "
            "send an ISO 3166-1 alpha-2 code such as 'us'",
        )
    return code


def resolve_country(value: object) -> str | None:
    """ISO alpha-2 (lowercase) for a code, name or alias; ``None`` if unknown or not text."""
    return _cached_hint(value) if isinstance(value, str) else None


@functools.lru_cache(maxsize=512)
def _cached_hint(value: str) -> str | None:
    """Hints repeat (one shop, one default country), so their lookups are memoized."""
    try:
        return _lookup_country(prepare("country", value))
    except NormalizationError:
        return None


def country_codes() -> frozenset[str]:
    """Every country code :func:`country` can return (ISO 3166-1 alpha-2, lowercase)."""
    return frozenset(_country_table().values())


def us_state_codes() -> frozenset[str]:
    """Every code :func:`state` can return for a US state, district, territory or the
    armed forces' ``aa``/``ae``/``ap``."""
    return frozenset(_us_states().values())


def clear_hint_cache() -> None:
    _cached_hint.cache_clear()


def hint_cache_info() -> functools._CacheInfo:
    return _cached_hint.cache_info()


def _lookup_country(text: str) -> str | None:
    key = keep_categories(text, LETTERS_MARKS)
    table = _country_table()
    code = table.get(key) or table.get(fold_accents(key))
    if code is None and len(key) >= _FUZZY_MIN_LENGTH:
        code = _fuzzy_country(fold_accents(key))
    return code


def state(field: str, value: str, region: str | None) -> str:
    key = keep_categories(prepare(field, value), LETTERS_MARKS_DIGITS)
    if not key:
        raise NormalizationError(field, "has no letters once punctuation and spaces are removed")
    tables = _state_tables(region)
    for table in tables:
        code = table.get(key) or table.get(fold_accents(key))
        if code is not None:
            return code
    # Digits stuck to a state (a zip: "Florida32801", "CA 94025"; "CA-1", "123CA") are not
    # part of it: Meta's param builder keeps the letters only.  Only a name or code found
    # that way wins; otherwise the value stays as written (numeric subdivision codes).
    letters = keep_categories(key, LETTERS_MARKS)
    if letters and letters != key:
        for table in tables:
            code = table.get(letters) or table.get(fold_accents(letters))
            if code is not None:
                return code
    return key


def zip_code(field: str, value: str, region: str | None) -> str:
    # lower() again: the NFKC inside ascii_digits can bring capitals back ("℠" -> "SM").
    text = ascii_digits(prepare(field, value)).lower()
    if region in _US_LIKE_ZIP_COUNTRIES:
        return _us_zip(field, _us_zip_spacing(text, _US_ZIP), _US_ZIP)
    if region is None:
        spaced = _us_zip_spacing(text, _US_ZIP_NO_HINT)
        if _US_ZIP_NO_HINT.fullmatch(spaced):
            return _us_zip(field, spaced, _US_ZIP_NO_HINT)
    compact = keep_categories(_ZIP_DROPPED.sub("", text), LETTERS_MARKS_DIGITS)
    if not compact:
        raise NormalizationError(field, "has no letters or digits")
    return compact


def _us_zip_spacing(text: str, pattern: re.Pattern[str]) -> str:
    """``98 121-9431`` -> ``98121-9431``: spaces inside a ZIP+4 go (Meta's Java SDK removes
    whitespace before cutting at the dash); a text that already fits stays as it is."""
    if pattern.fullmatch(text) or not _SPACED_US_ZIP.fullmatch(text):
        return text
    return re.sub(r"\s+", "", text)


def _us_zip(field: str, text: str, pattern: re.Pattern[str]) -> str:
    match = pattern.fullmatch(text)
    if match is None:
        raise NormalizationError(field, "is not a US ZIP code (5 digits, or ZIP+4)")
    return match.group(1)


def _state_tables(region: str | None) -> tuple[dict[str, str], ...]:
    if region is None:
        return (_us_states(), _subdivisions("ca"))
    if region == "us":
        return (_us_states(),)
    if region == "ca":
        return (_subdivisions("ca"),)
    return ()  # the documented rule as it is: the name, lowercase, no punctuation or spaces


@functools.cache
def _country_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for entry in pycountry.countries:
        code = entry.alpha_2.lower()
        for label in _country_labels(entry):
            key = keep_categories(label.lower(), LETTERS_MARKS)
            table.setdefault(key, code)
            table.setdefault(fold_accents(key), code)
    # Codes win over any name that happens to spell the same letters.
    for entry in pycountry.countries:
        table[entry.alpha_2.lower()] = entry.alpha_2.lower()
        table[entry.alpha_3.lower()] = entry.alpha_2.lower()
    table.update(_COUNTRY_ALIASES)
    for name, code in _COUNTRY_ENDONYMS.items():
        table.setdefault(name, code)
        table.setdefault(fold_accents(name), code)
    return table


def _country_labels(entry: object) -> list[str]:
    labels = [
        label
        for attribute in ("name", "official_name", "common_name")
        if isinstance(label := getattr(entry, attribute, None), str)
    ]
    # "Korea, Republic of" is also written "Republic of Korea".
    inverted = [f"{tail} {head}" for head, _, tail in (x.partition(", ") for x in labels) if tail]
    return labels + inverted


@functools.lru_cache(maxsize=1024)
def _fuzzy_country(key: str) -> str | None:
    """The one country whose name contains ``key``; ``None`` if none or several."""
    codes = {code for name, code in _country_table().items() if key in name}
    return codes.pop() if len(codes) == 1 else None


@functools.cache
def _us_states() -> dict[str, str]:
    table = dict(_subdivisions("us"))
    for code in _ARMED_FORCES_CODES:
        table.setdefault(code, code)
    table.update(_US_STATE_ALIASES)
    return table


@functools.cache
def _subdivisions(region: str) -> dict[str, str]:
    """Letters-only name or code of top-level subdivisions -> lowercase code suffix."""
    table: dict[str, str] = {}
    for subdivision in pycountry.subdivisions.get(country_code=region.upper()) or ():
        suffix = subdivision.code.partition("-")[2].lower()
        if subdivision.parent_code is not None or not suffix.isalpha():
            continue
        key = keep_categories(prepare("st", subdivision.name), LETTERS_MARKS_DIGITS)
        table.setdefault(key, suffix)
        table.setdefault(fold_accents(key), suffix)
        table[suffix] = suffix
    return table
