"""Text primitives every field rule starts from.

Meta's rules all begin the same way: Unicode NFC (so ``José`` typed on a Mac,
NFD, hashes like ``José`` typed anywhere else), trim, lowercase.  The field
rules then keep only certain Unicode *categories* (letters, marks, digits),
which is what "no punctuation, no special characters" means for names and
places written in any script.

ASCII input, the common case, takes a regex fast path; the per-character
category walk only runs for non-ASCII text.
"""

from __future__ import annotations

import re
import unicodedata

from ._errors import NormalizationError

_SURROGATE = re.compile("[\ud800-\udfff]")
_NON_ASCII_LETTER_DIGIT = re.compile(r"[^a-z0-9]")
_NON_ASCII_LETTER = re.compile(r"[^a-z]")

LETTERS_MARKS_DIGITS = frozenset("LMN")
LETTERS_MARKS = frozenset("LM")


def prepare(field: str, value: object) -> str:
    """NFC, trim and lowercase ``value``; reject non-text and empty values."""
    if not isinstance(value, str):
        raise NormalizationError(field, f"expected text, got a {type(value).__name__}")
    if value.isascii():
        text = value.strip().lower()
    else:
        if _SURROGATE.search(value):
            raise NormalizationError(field, "contains an unpaired UTF-16 surrogate")
        # lower() can decompose (e.g. U+0130 -> i + combining dot), so NFC again after it.
        text = unicodedata.normalize("NFC", unicodedata.normalize("NFC", value).strip().lower())
    if not text:
        raise NormalizationError(field, "is empty")
    return text


def keep_categories(text: str, categories: frozenset[str]) -> str:
    """Keep only characters whose Unicode major category is in ``categories``.

    ``categories`` is :data:`LETTERS_MARKS_DIGITS` or :data:`LETTERS_MARKS`.
    Marks are kept because many scripts (Devanagari, Thai, Hebrew points...)
    spell names with them.  Removing characters can bring a base letter next
    to a combining mark, so the result is re-composed to NFC.
    """
    if text.isascii():
        pattern = _NON_ASCII_LETTER_DIGIT if "N" in categories else _NON_ASCII_LETTER
        return pattern.sub("", text)
    kept = "".join(ch for ch in text if unicodedata.category(ch)[0] in categories)
    return unicodedata.normalize("NFC", kept)


# Emoji parts that are not symbols (So) themselves: skin-tone modifiers (Sk), the zero-width
# joiner and the tag characters of subdivision flags (Cf).  Variation selectors are marks.
_EMOJI_PARTS = frozenset(
    [chr(c) for c in range(0x1F3FB, 0x1F400)]
    + ["\u200d"]
    + [chr(c) for c in range(0xE0020, 0xE0080)]
)


def keep_name_characters(text: str) -> str:
    """Letters, marks, digits and emoji (``So`` symbols with their modifiers, joiners and
    tags): what a name keeps once punctuation and spaces are gone."""
    if text.isascii():
        return _NON_ASCII_LETTER_DIGIT.sub("", text)
    kept = "".join(
        ch
        for ch in text
        if unicodedata.category(ch)[0] in LETTERS_MARKS_DIGITS
        or unicodedata.category(ch) == "So"
        or ch in _EMOJI_PARTS
    )
    return unicodedata.normalize("NFC", kept)


def ascii_digits(text: str) -> str:
    """Map every Unicode decimal digit (full-width, Arabic-Indic, ...) to ASCII.

    NFKC would cover full-width forms but not Arabic-Indic or Devanagari
    digits, so each non-ASCII character is asked for its decimal value.
    """
    if text.isascii():
        return text
    text = unicodedata.normalize("NFKC", text)
    return "".join(_ascii_digit(ch) for ch in text)


def _ascii_digit(ch: str) -> str:
    if ch.isascii():
        return ch
    value = unicodedata.decimal(ch, None)
    return ch if value is None else str(value)


def fold_accents(text: str) -> str:
    """``côtedivoire`` -> ``cotedivoire``: lookup keys that forgive missing accents."""
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))
