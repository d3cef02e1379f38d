"""Dates of birth to Meta's ``YYYYMMDD`` (and the ``dobd``/``dobm``/``doby`` parts).

Meta accepts "a range of month, day and year combinations, with or without
punctuation" and wants ``YYYYMMDD`` with a year from 1900 to now
(``2/16/1997`` -> ``19970216``).  Read here:

* ISO ``1990-01-31`` (also ``1990/01/31``, ``1990.01.31``, a trailing time
  ``1990-01-31T00:00:00Z``) and compact ``19900131``;
* day and month around a final year: ``01/31/1990``, ``31.01.1990``,
  ``2/16/97``;
* month names or abbreviations in English: ``Jan 31 1990``,
  ``31 January 1990``, ``January 31st, 1990``, ``Wed, 31 Jan 1990``;
* Chinese, Japanese and Korean dates whose numbers carry their part
  (年/년 year, 月/월 month, 日/일 day) in any order: ``1990年12月31日``,
  ``12月31日1990年`` (Meta's param builder reads both as ``19901231``).

When day and month are both <= 12 the order is ambiguous.  We read it
month-first, the US convention (Meta's own example is US), *except* when the
parts are separated by dots: ``01.02.1990`` is written day-first everywhere
dots are used.  When one part is > 12 it is the day, whatever the separator.
Two-digit years pivot on the current year: ``05`` is 2005 up to 2005's
birthdays, else 1905; ``97`` is 1997.
"""

from __future__ import annotations

import datetime
import re

from ._errors import NormalizationError
from ._text import ascii_digits, prepare

MIN_YEAR = 1900

_MONTHS: dict[str, int] = {}
for _number, _names in enumerate(
    (
        "jan january",
        "feb february",
        "mar march",
        "apr april",
        "may",
        "jun june",
        "jul july",
        "aug august",
        "sep sept september",
        "oct october",
        "nov november",
        "dec december",
    ),
    start=1,
):
    _MONTHS.update(dict.fromkeys(_names.split(), _number))

_FILLER_WORDS = frozenset(
    (
        "st", "nd", "rd", "th", "of", "the", "t", "z", "utc", "gmt", "am", "pm",
        "mon", "monday", "tue", "tues", "tuesday", "wed", "wednesday",
        "thu", "thur", "thurs", "thursday", "fri", "friday",
        "sat", "saturday", "sun", "sunday",
    )
)  # fmt: skip
_TOKEN = re.compile(r"\d+|[^\W\d_]+")
# The shapes nearly all systems export (19900131, 1990-01-31, 1990/01/31) skip tokenizing.
_YEAR_FIRST = re.compile(r"((?:19|20)[0-9]{2})([-/]?)(0[1-9]|1[0-2])\2([0-2][0-9]|3[01])")
_ISO_WITH_TIME = re.compile(r"(\d{4}-\d{1,2}-\d{1,2})[t ]\d")
# A time of day after the date, as exports write it ("12/31/1990 10:00",
# "12/31/1990 12:00:00 am", "31.12.1990 23:59 utc"): not part of a birth date.  The
# param builder reads the first three numbers and ignores the rest.
_TRAILING_TIME = re.compile(
    r"(?:\s+|t)\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[ap]\.?m\.?)?"
    r"\s*(?:z|utc|gmt|[+-]\d{2}:?\d{2})?$"
)
_DAY_FIRST_SEPARATOR = "."
_CJK_MARKS = {"年": "y", "년": "y", "月": "m", "월": "m", "日": "d", "일": "d"}
_CJK_PART = re.compile(r"(\d{1,4})\s*(年|년|月|월|日|일)\s*")


def date_of_birth(field: str, value: str) -> str:
    text = ascii_digits(prepare(field, value))
    if ":" in text:
        text = _TRAILING_TIME.sub("", text)
    plain = _YEAR_FIRST.fullmatch(text)
    cjk = _cjk_parts(text) if plain is None else None
    if plain is not None:
        year, month, day = int(plain.group(1)), int(plain.group(3)), int(plain.group(4))
    elif cjk is not None:
        year, month, day = cjk
    else:
        iso = _ISO_WITH_TIME.match(text)
        year, month, day = _parse_parts(field, iso.group(1) if iso else text)
    _checked(field, year, month, day)
    return f"{year:04d}{month:02d}{day:02d}"


def _cjk_parts(text: str) -> tuple[int, int, int] | None:
    """``1990年12月31日``, ``12月31日1990年``, ``1990년 12월 31일``: each number names its part
    (年/년 year, 月/월 month, 日/일 day), in any order; ``None`` when the text is not that."""
    found = _CJK_PART.findall(text)
    if len(found) != 3:
        return None
    parts: dict[str, int] = {}
    for number, mark in found:
        parts[_CJK_MARKS[mark]] = int(number)
    if len(parts) != 3 or _CJK_PART.sub("", text).strip(" ,./-") != "":
        return None
    return parts["y"], parts["m"], parts["d"]


def day_of_birth(field: str, value: str) -> str:
    text = ascii_digits(prepare(field, value))
    if not (text.isdigit() and len(text) <= 2 and 1 <= int(text) <= 31):
        raise NormalizationError(field, "must be a day of the month, 1-31 (DD)")
    return text.zfill(2)


def month_of_birth(field: str, value: str) -> str:
    text = ascii_digits(prepare(field, value))
    if text in _MONTHS:
        return f"{_MONTHS[text]:02d}"
    if not (text.isdigit() and len(text) <= 2 and 1 <= int(text) <= 12):
        raise NormalizationError(field, "must be a month, 1-12 (MM) or a month name")
    return text.zfill(2)


def year_of_birth(field: str, value: str) -> str:
    text = ascii_digits(prepare(field, value))
    if not (text.isdigit() and len(text) == 4):
        raise NormalizationError(field, "must be a four-digit year (YYYY)")
    _check_year(field, int(text))
    return text


def _parse_parts(field: str, text: str) -> tuple[int, int, int]:
    numbers: list[str] = []
    month_from_name: int | None = None
    for token in _TOKEN.findall(text):
        if token.isdigit():
            numbers.append(token)
        elif token in _MONTHS and month_from_name is None:
            month_from_name = _MONTHS[token]
        elif token not in _FILLER_WORDS:
            raise NormalizationError(field, "contains words that are not month or weekday names")
    if month_from_name is not None:
        return _with_month_name(field, numbers, month_from_name)
    if len(numbers) == 1 and len(numbers[0]) == 8:
        return _compact(numbers[0], day_first=False)
    if len(numbers) == 3:
        return _three_numbers(field, numbers, day_first=_DAY_FIRST_SEPARATOR in text)
    raise NormalizationError(field, "is not a recognised date format; send YYYYMMDD")


def _with_month_name(field: str, numbers: list[str], month: int) -> tuple[int, int, int]:
    if len(numbers) != 2:
        raise NormalizationError(field, "with a month name needs exactly a day and a year")
    first, second = numbers
    if len(first) == 4 and len(second) <= 2:
        return int(first), month, int(second)
    if len(first) <= 2 and len(second) in (2, 4):
        return _full_year(int(second), len(second)), month, int(first)
    raise NormalizationError(field, "with a month name needs a 1-2 digit day and a year")


def _compact(digits: str, *, day_first: bool) -> tuple[int, int, int]:
    """``YYYYMMDD``, or ``MMDDYYYY``/``DDMMYYYY`` when that reading is no plausible date."""
    year_first = int(digits[:4]), int(digits[4:6]), int(digits[6:])
    if MIN_YEAR <= year_first[0] <= _current_year() and _is_date(*year_first):
        return year_first
    first, second = int(digits[:2]), int(digits[2:4])
    month, day = _order_day_month(first, second, day_first=day_first)
    return int(digits[4:]), month, day


def _three_numbers(field: str, numbers: list[str], *, day_first: bool) -> tuple[int, int, int]:
    first, second, third = numbers
    if len(first) == 4:
        year, a, b = int(first), int(second), int(third)
        # ISO order is Y-M-D; a middle part > 12 can only be a day (Y-D-M).
        return (year, b, a) if a > 12 >= b else (year, a, b)
    if len(first) <= 2 and len(second) <= 2 and len(third) in (2, 4):
        month, day = _order_day_month(int(first), int(second), day_first=day_first)
        return _full_year(int(third), len(third)), month, day
    raise NormalizationError(field, "is not a recognised date format; send YYYYMMDD")


def _order_day_month(first: int, second: int, *, day_first: bool) -> tuple[int, int]:
    """Return (month, day) for two leading parts."""
    if first > 12 >= second:
        return second, first
    if second > 12 >= first:
        return first, second
    return (second, first) if day_first else (first, second)


def _full_year(year: int, width: int) -> int:
    if width == 4:
        return year
    this_year = _current_year()
    century = 2000 if 2000 + year <= this_year else 1900
    return century + year


def _checked(field: str, year: int, month: int, day: int) -> datetime.date:
    _check_year(field, year)
    try:
        return datetime.date(year, month, day)
    except ValueError:
        raise NormalizationError(field, "is not a valid calendar date") from None


def _is_date(year: int, month: int, day: int) -> bool:
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    return True


def _check_year(field: str, year: int) -> None:
    if not MIN_YEAR <= year <= _current_year():
        raise NormalizationError(field, f"has a year outside {MIN_YEAR} to the current year")


def _current_year() -> int:
    return datetime.date.today().year
