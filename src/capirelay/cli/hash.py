"""``capirelay hash``: the "why does my hash not match" debugger.

It prints a value normalized the way Meta expects, and its SHA-256.  A hash
only matches when both sides normalized the same way, so every input that
this normalization reads with a guess or with information dropped gets a
warning on stderr (stdout keeps the two result lines for scripts): a phone
number without a country code, a ZIP+4, a state that is not a code, an
ambiguous date, a name or city that lost characters, an extension cut off.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from capirelay.cli._output import error, warning

if TYPE_CHECKING:
    from phonenumbers import PhoneNumber

__all__ = ["hash_command", "lossy_warnings"]

console = Console(highlight=False, soft_wrap=True)
EXIT_USAGE = 2

_EXTENSION = re.compile(r"(?:e?xt(?:ension)?\.?|x|#)\s*\d+\s*$", re.IGNORECASE)
_DAY_MONTH_YEAR = re.compile(r"^\s*(\d{1,2})\s*([/\-.\s])\s*(\d{1,2})\s*\2\s*(\d{2}|\d{4})\s*$")
_TWO_DIGIT_YEAR = re.compile(r"(^|\D)\d{1,2}\D+\d{1,2}\D+\d{2}\s*$")


def lossy_warnings(key: str, value: str, normalized: str, country: str | None) -> list[str]:
    """Why ``value`` -> ``normalized`` may not be what the other side hashed (wire ``key``)."""
    from capirelay.events._user_data import missing_country_code

    warnings: list[str] = []
    if key == "ph":
        # The same test ingest's phone_without_country_code warning makes: "16505551212"
        # already carries its country code (Meta's own documented example), "6505551212"
        # does not, "4798570523" reads both as a US number without its 1 and as Norway's
        # +47 98570523 written without the "+".
        doubt = missing_country_code(value) if country is None else None
        if doubt is not None and doubt.as_written is not None:
            warnings.append(_two_readings(value, doubt.as_written, doubt.country()))
        elif doubt is not None:
            warnings.append(
                "this phone number looks like it has no country code and no --country was "
                "given: it was hashed as the digits written, which never match Meta's if the "
                "country code is missing (Meta needs it, e.g. 1 for the US); pass --country "
                "US or write +1 ..."
            )
        if _EXTENSION.search(value.strip()):
            warnings.append("the extension was dropped: Meta matches the number without it")
    elif key == "zp":
        digits = re.sub(r"\D", "", value)
        if re.fullmatch(r"\s*\d{5}\s*-?\s*\d{4}\s*", value):
            warnings.append(
                "a ZIP+4 code: only the first 5 digits are used, as Meta asks (US ZIP codes)"
            )
        elif country is None and digits != value.strip():
            warnings.append(
                "no --country given: the postal code was only lowercased and stripped of "
                "spaces and dashes; pass --country for that country's rules"
            )
    elif key == "st" and len(normalized) != 2:
        warnings.extend(_state_warnings(normalized, country))
    elif key == "db":
        warnings.extend(_date_warnings(value))
    elif key in ("fn", "ln", "ct"):
        kept = sum(ch.isalpha() for ch in normalized)
        if kept < sum(ch.isalpha() for ch in value):
            warnings.append(
                "some letters were removed while normalizing: check that the other side "
                "hashed the same text"
            )
        if any(ch.isdigit() for ch in normalized):
            warnings.append("the value contains digits: names and cities normally have none")
    return warnings


def _two_readings(value: str, as_written: PhoneNumber, country: str | None) -> str:
    """The warning for ten digits that are a US number without its 1 and also another
    country's number written with its code (how they were hashed): both readings, named
    from the value the user typed (this is their terminal, where the value is printed)."""
    import phonenumbers

    digits = "".join(ch for ch in value if ch.isdigit())
    international = phonenumbers.format_number(
        as_written, phonenumbers.PhoneNumberFormat.INTERNATIONAL
    )
    us = phonenumbers.format_number(
        phonenumbers.parse(digits, "US"), phonenumbers.PhoneNumberFormat.NATIONAL
    )
    return (
        f"this phone number reads two ways and no --country was given: as {international}"
        f"{f' ({country})' if country else ''}, written with its country code, or as the US number "
        f"{us} without its 1; it was hashed as the first. If it is a US number, write +1 ... "
        "or pass --country US (the hash changes)"
    )


def _state_warnings(normalized: str, country: str | None) -> list[str]:
    """Meta wants the 2-letter code for a US state only; other regions' states are the name
    lowercased without punctuation or spaces (Customer Information Parameters), which is
    what ``normalized`` then is (capirelay also codes Canadian provinces)."""
    from capirelay.normalize import resolve_country

    region = resolve_country(country) if country is not None else None
    if region is not None and region not in ("us", "ca"):
        return []
    code = (
        f"'{normalized}' is not a 2-letter state code: Meta matches US states on their "
        "2-letter ANSI abbreviation (e.g. ca)"
    )
    if region is not None:
        return [f"{code}; check the spelling or pass the code"]
    return [
        f"{code}; outside the US this is right (Meta: the name lowercased, no punctuation "
        "or spaces), for a US state pass the code or --country US"
    ]


def _date_warnings(value: str) -> list[str]:
    out = []
    match = _DAY_MONTH_YEAR.match(value)
    ambiguous = (
        match is not None
        and int(match.group(1)) <= 12
        and int(match.group(3)) <= 12
        and match.group(1) != match.group(3)
    )
    if match is not None and ambiguous:
        order = "day first" if match.group(2) == "." else "month first (US)"
        out.append(f"day and month are both 12 or less: read {order}; write YYYY-MM-DD to be sure")
    if _TWO_DIGIT_YEAR.search(value):
        out.append("a two-digit year: the century was guessed; write all four digits")
    return out


def hash_command(
    field: Annotated[str, typer.Argument(help="Wire key or name: em, email, ph, phone, fn ...")],
    value: Annotated[str, typer.Argument(help="The raw value to normalize and hash.")],
    country: Annotated[
        str | None,
        typer.Option("--country", help="Country hint (ISO alpha-2 or name) for ph, st, zp."),
    ] = None,
) -> None:
    """Print a value normalized as Meta expects, and its SHA-256.

    Warnings about inputs that were guessed at or lost information (a phone
    number without a country code, a ZIP+4 ...) go to stderr.
    """
    from capirelay.normalize import WIRE_KEYS, NormalizationError, hash_field, is_hashed, normalize

    warnings: list[str] = []
    try:
        if is_hashed(value):
            # Already hashed: nothing to normalize; show what would go on the wire.
            normalized = "(already a SHA-256 hash; sent as it is)"
        else:
            normalized = normalize(field, value, country=country)
            warnings = lossy_warnings(WIRE_KEYS[field], value, normalized, country)
        hashed = hash_field(field, value, country=country)
    except NormalizationError as exc:
        error(f"cannot use this value for {exc.field}: {exc.reason}")
        raise typer.Exit(EXIT_USAGE) from None
    except (KeyError, ValueError):
        error(f"unknown field {field!r}: use a wire key such as em or ph")
        raise typer.Exit(EXIT_USAGE) from None
    console.print(f"normalized: {normalized}")
    console.print(f"sha256:     {hashed}")
    for lossy in warnings:
        warning(f"warning: {lossy}")
