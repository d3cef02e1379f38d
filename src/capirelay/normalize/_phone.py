"""Phone numbers to the digits Meta matches on: country code + national number.

Meta: "Remove symbols, letters, and any leading zeros ... must include a
country code" (``(650)555-1212`` in the US -> ``16505551212``).  The country
code cannot be guessed from digits alone, so:

1. A number written internationally (``+``, or ``00`` followed by a country
   code) is parsed by ``phonenumbers`` without a region.
2. Otherwise, with a country hint, ``phonenumbers`` parses it as a national
   number of that region, which drops trunk prefixes such as the UK's ``0``
   and ``(0)`` and strips ``ext.`` suffixes.  If that is not a possible
   number there but the digits are a possible *international* number, the
   input was already normalized (``442079460958`` with a US hint) and is read
   that way.  So is a number that begins with the hinted region's own calling
   code, in a region whose national numbers begin with a trunk prefix, when it is
   valid read internationally and the national reading does not beat it (not valid,
   or not a mobile where the international one is): ``4915123456789`` with a DE
   hint stays itself (read nationally it got ``49`` twice).
3. Without a hint and without ``+``/``00``: digits only, leading zeros
   stripped, extension and a ``(0)`` trunk marker dropped.  That is what
   Meta's param builder does (it keeps the ``(0)``); it cannot add a missing
   country code, so ``020 7946 0958`` becomes ``2079460958``.  Pass
   ``country=`` to do better.

Numbers are checked with ``is_possible_number`` (length rules per region),
not ``is_valid_number``: validity depends on allocation metadata that ages,
and a stale table must not drop real customers' numbers.  The result must be
7-15 digits (E.164 allows at most 15).  A local number without an area code
(``555-1212`` with a US hint) is rejected: it cannot match anyone.

Idempotence: the output read again gives itself without a hint, and with the
same hint for real numbers.  For arbitrary digit strings under a hint it can
not always hold: ``3942928641`` is both "39 + 42928641" and a possible Italian
national number, and phonenumbers reads the digits it is given nationally.
"""

from __future__ import annotations

import re

import phonenumbers
from phonenumbers import (
    NumberParseException,
    PhoneMetadata,
    PhoneNumberFormat,
    PhoneNumberType,
    ValidationResult,
)

from ._errors import NormalizationError
from ._text import ascii_digits

_MIN_DIGITS = 7
_MAX_DIGITS = 15
_EXTENSION = re.compile(r"(?:e?xt(?:ension)?\.?|x|#|;ext=)\s*\d+\s*$")
_NON_DIGIT = re.compile(r"[^0-9]")
# "(0)" after a country code marks the trunk prefix dialled only nationally: never part of
# the international number.
_TRUNK_ZERO = re.compile(r"(?<=[0-9])\s*\(0\)")
_INTERNATIONAL_00 = re.compile(r"^00[1-9]")
_SUPPORTED_REGIONS = frozenset(region.lower() for region in phonenumbers.SUPPORTED_REGIONS)
_NANP_REGIONS = frozenset(region.lower() for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1])
# A North American number in one of its usual spellings: "+1 (650) 555-1212", "650.555.1212",
# "1-650-555-1212".  Area codes and exchanges never start with 0 or 1, so for this exact shape
# phonenumbers' answer is always "1" + the ten digits; computing it directly skips a parse
# that costs ~20x more than every other field's rule.  A test holds the two to agreement.
_NANP = re.compile(r"(\+?1[\s.\-]*)?\(?([2-9][0-9]{2})\)?[\s.\-]*([2-9][0-9]{2})[\s.\-]*([0-9]{4})")

_REASONS = {
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "is a local number without an area code",
    ValidationResult.INVALID_COUNTRY_CODE: "has no valid country calling code",
    ValidationResult.TOO_SHORT: "has too few digits for its country",
    ValidationResult.TOO_LONG: "has too many digits for its country",
    ValidationResult.INVALID_LENGTH: "has a digit count no number in its country has",
}


def phone(field: str, value: str, region: str | None) -> str:
    """``region`` is an ISO alpha-2 code (lowercase) or ``None``."""
    if not isinstance(value, str):
        raise NormalizationError(field, f"expected text, got a {type(value).__name__}")
    text = ascii_digits(value).strip().lower()
    # Checked before the digit extraction below: a NANP match has digits and no extension.
    nanp = _NANP.fullmatch(text)
    if nanp is not None and (region in _NANP_REGIONS or text.startswith("+")):
        return "1" + nanp.group(2) + nanp.group(3) + nanp.group(4)
    digits = _NON_DIGIT.sub("", _TRUNK_ZERO.sub("", _EXTENSION.sub("", text)))
    if not digits:
        raise NormalizationError(field, "contains no digits")
    if text.lstrip("( ").startswith("+"):
        if digits.startswith("00"):
            # "+001 616 ...": an international 00 prefix written after the "+" (Meta's
            # param builder drops leading zeros: 16169547888).
            return _international(field, "+" + digits.lstrip("0"))
        return _international(field, text)
    if region is not None and region in _SUPPORTED_REGIONS:
        return _national(field, text, digits, region.upper())
    if _INTERNATIONAL_00.match(digits):
        parsed = _possible_e164(_parse("+" + digits[2:], None))
        if parsed is not None:
            return parsed
    return _digits_only(field, digits)


def _international(field: str, text: str) -> str:
    number = _parse(text, None)
    if number is None:
        raise NormalizationError(field, "does not parse as an international phone number")
    return _checked_e164(field, number)


def _national(field: str, text: str, digits: str, region: str) -> str:
    number = _parse(text, region)
    reason = "does not parse as a phone number"
    if number is not None:
        result = phonenumbers.is_possible_number_with_reason(number)
        if result == ValidationResult.IS_POSSIBLE:
            written = _already_international(digits, region, number)
            return written if written is not None else _e164_digits(field, number)
        reason = _REASONS.get(result, "is not a possible phone number")
    for international in _international_readings(digits):
        parsed = _possible_e164(_parse(international, None))
        if parsed is not None:
            return parsed
    raise NormalizationError(field, reason)


def national_reading(value: str, region: str) -> str | None:
    """The digits phonenumbers gives ``value`` read as a national number of ``region``
    (an ISO alpha-2 code, any case), or ``None`` when that is not a possible number: what
    capirelay stored before it read numbers already carrying their calling code
    internationally (kept for erasure, :func:`capirelay.normalize.earlier_hashes`)."""
    number = _parse(ascii_digits(value).strip().lower(), region.upper())
    if number is None or not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)[1:]


def _already_international(
    digits: str, region: str, national: phonenumbers.PhoneNumber
) -> str | None:
    """The digits as an international number, when the input was normalized already:
    they begin with the hinted region's calling code, the region writes its national
    numbers with a trunk prefix (``0`` in Germany, Sweden, Indonesia ...) that they do
    not begin with, and read internationally they are a valid number that the national
    reading does not beat: the national reading is not valid, or the international one
    is a mobile number and the national one is not.  Read nationally,
    ``4915123456789`` with a DE hint got its ``49`` twice (phonenumbers calls that
    number valid too: German numbers vary in length).  Where both readings are valid
    numbers of the same kind the digits are ambiguous (``4621 12345`` is Lund without its
    trunk ``0``, or Vasteras written internationally; spreadsheets drop leading zeros as
    often as systems drop the ``+``), and the national reading, what the hint says, is
    kept.  A region without a trunk prefix (Italy) keeps the national reading too.
    """
    if not digits.startswith(str(national.country_code)):
        return None
    metadata = PhoneMetadata.metadata_for_region(region)
    if metadata is None or not metadata.national_prefix:
        return None
    written = _parse("+" + digits, None)
    if written is None or not phonenumbers.is_valid_number(written):
        return None
    if phonenumbers.is_valid_number(national) and not (
        _full_mobile(written, region) and phonenumbers.number_type(national) not in _MOBILE_TYPES
    ):
        return None
    return _possible_e164(written)


_MOBILE_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})


def _full_mobile(number: phonenumbers.PhoneNumber, region: str) -> bool:
    """A mobile number as long as the region's mobile numbers are (its example's length,
    one digit less allowed): phonenumbers' metadata also calls some short numbers
    mobile (``+27 8230681``), which a Namaqualand number without its trunk ``0``,
    ``27 823 0681``, reads as."""
    if phonenumbers.number_type(number) != PhoneNumberType.MOBILE:
        return False
    example = phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
    if example is None:
        return False
    return len(str(number.national_number)) >= len(str(example.national_number)) - 1


def _international_readings(digits: str) -> tuple[str, ...]:
    """Digits that fail as a national number may be international already."""
    if _INTERNATIONAL_00.match(digits):
        return ("+" + digits[2:],)
    if digits[0] != "0":
        return ("+" + digits,)
    return ()


def _parse(text: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(text, region)
    except NumberParseException:
        return None


def _possible_e164(number: phonenumbers.PhoneNumber | None) -> str | None:
    if number is None:
        return None
    if phonenumbers.is_possible_number_with_reason(number) != ValidationResult.IS_POSSIBLE:
        return None
    digits = phonenumbers.format_number(number, PhoneNumberFormat.E164)[1:]
    return digits if _MIN_DIGITS <= len(digits) <= _MAX_DIGITS else None


def _checked_e164(field: str, number: phonenumbers.PhoneNumber) -> str:
    result = phonenumbers.is_possible_number_with_reason(number)
    if result != ValidationResult.IS_POSSIBLE:
        raise NormalizationError(field, _REASONS.get(result, "is not a possible phone number"))
    return _e164_digits(field, number)


def _e164_digits(field: str, number: phonenumbers.PhoneNumber) -> str:
    digits = phonenumbers.format_number(number, PhoneNumberFormat.E164)[1:]
    return _length_checked(field, digits)


def _digits_only(field: str, digits: str) -> str:
    return _length_checked(field, digits.lstrip("0"))


def _length_checked(field: str, digits: str) -> str:
    if not _MIN_DIGITS <= len(digits) <= _MAX_DIGITS:
        raise NormalizationError(
            field, f"has {len(digits)} digits; a full international number has 7-15"
        )
    return digits
