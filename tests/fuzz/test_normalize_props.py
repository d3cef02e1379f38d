"""Property tests of normalization and hashing beyond tests/test_normalize.py (which holds
idempotence, the only-NormalizationError rule, SHA-256 pass-through, e-mail acceptance,
date round trips and the NANP fast path): errors never quote the value, hashing is exactly
SHA-256 of the normalized text, and spelling differences Meta ignores change nothing."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from capirelay.normalize import (
    WIRE_KEYS,
    NormalizationError,
    hash_field,
    is_sha256,
    normalize,
    sha256_hex,
)

from .strategies import MARKER

FIELDS = sorted(WIRE_KEYS)
HINTS = [None, "US", "GB", "DE", "JP", "BR", "France"]


@settings(max_examples=250, deadline=None)
@given(field=st.sampled_from(FIELDS), tail=st.text(max_size=30), hint=st.sampled_from(HINTS))
def test_errors_never_quote_the_value(field: str, tail: str, hint: str | None) -> None:
    value = MARKER + tail
    try:
        normalize(field, value, country=hint)
    except NormalizationError as error:
        assert MARKER.lower() not in str(error).lower()
        assert MARKER.lower() not in error.reason.lower()


@settings(max_examples=250, deadline=None)
@given(
    field=st.sampled_from(FIELDS),
    value=st.text(max_size=30) | st.emails() | st.from_regex(r"[0-9 ()+\-]{6,16}", fullmatch=True),
    hint=st.sampled_from(HINTS),
)
def test_the_hash_is_sha256_of_the_normalized_value(
    field: str, value: str, hint: str | None
) -> None:
    if is_sha256(value.strip()):
        return
    try:
        normalized = normalize(field, value, country=hint)
    except NormalizationError:
        return
    if is_sha256(normalized) or (len(normalized) == 32 and field not in ("ph", "phone")):
        return  # an already-hashed (SHA-256 or MD5) value passes through
    assert hash_field(field, value, country=hint) == sha256_hex(normalized)


ASCII_WORDS = st.text(alphabet=string.ascii_letters, min_size=1, max_size=20)
PADDING = st.sampled_from(["", " ", "  ", "\t", "\n", " \t "])


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(["em", "fn", "ln", "ct", "external_id"]),
    word=ASCII_WORDS,
    left=PADDING,
    right=PADDING,
    upper=st.booleans(),
)
def test_case_and_surrounding_space_never_change_a_hash(
    field: str, word: str, left: str, right: str, upper: bool
) -> None:
    value = f"{word}@example.com" if field == "em" else word
    variant = left + (value.upper() if upper else value.swapcase()) + right
    if field == "external_id":
        # external_id is trimmed but keeps its case: ids are case-sensitive in many CRMs.
        assert hash_field(field, left + value + right) == hash_field(field, value)
        return
    assert hash_field(field, variant) == hash_field(field, value)


REAL_NUMBERS = [
    ("US", "6505551212", "16505551212"),
    ("GB", "2079460958", "442079460958"),
    ("DE", "30123456", "4930123456"),
    ("FR", "142685300", "33142685300"),
    ("JP", "312345678", "81312345678"),
]


@settings(max_examples=300, deadline=None)
@given(
    number=st.sampled_from(REAL_NUMBERS),
    separators=st.lists(st.sampled_from(["", " ", "-", ".", " - "]), min_size=12, max_size=12),
    international=st.booleans(),
)
def test_phone_formatting_never_changes_the_normalized_number(
    number: tuple[str, str, str], separators: list[str], international: bool
) -> None:
    region, national, expected = number
    digits = expected if international else national
    spelled = "".join(d + s for d, s in zip(digits, separators, strict=False))
    if international:
        spelled = "+" + spelled
    assert normalize("ph", spelled, country=region) == expected
