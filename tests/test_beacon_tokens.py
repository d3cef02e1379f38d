"""Beacon tokens: the canonical string as documented, mint/verify, and the docs' Node snippet.

The vector below is the one ``docs/beacon-defences.md`` shows, so a server in
another language can check its implementation against it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from capirelay import mint_beacon_token, verify_beacon_token
from capirelay.beacon_tokens import (
    MAX_TOKEN_LIFETIME,
    TokenError,
    canonical_string,
    format_amount,
)
from capirelay.config import IngestKey, PixelSettings

DOCS = Path(__file__).resolve().parents[1] / "docs" / "beacon-defences.md"
SECRET = "shop-secret"
NOW = 1_764_115_200
EVENT: dict[str, Any] = {
    "pixel_id": "1234567890",
    "event_name": "Purchase",
    "event_id": "order-1001",
    "value": "25.5",
    "currency": "eur",
}
# mint_beacon_token(SECRET, **EVENT, ttl_seconds=600, now=NOW), as printed in the docs.
DOC_TOKEN = "v1.1764115800.fIIreXTyk69rjFk_U5Ni7qM8bP0NAe0ALx-ZGKn1ZQQ"


@pytest.mark.parametrize(
    ("value", "currency", "expected"),
    [
        (25, "EUR", "25.00"),
        (25.5, "eur", "25.50"),
        ("25.50", "USD", "25.50"),
        (Decimal("0.1"), "GBP", "0.10"),
        (1000, "JPY", "1000"),
        ("1.5", "KWD", "1.500"),
        (-5, "EUR", "-5.00"),
        (None, "EUR", ""),
        (12, None, "12.00"),
    ],
)
def test_amounts_are_written_with_the_currencys_minor_units(
    value: Any, currency: str | None, expected: str
) -> None:
    assert format_amount(value, currency) == expected


@pytest.mark.parametrize(
    ("value", "currency", "reason"),
    [
        (25.001, "EUR", "more decimals than EUR"),
        ("12.5", "JPY", "more decimals than JPY"),
        (True, "EUR", "must be a number"),
        ("twelve", "EUR", "must be a number"),
        ("NaN", "EUR", "finite"),
        ([1], "EUR", "must be a number"),
    ],
)
def test_amounts_that_cannot_be_signed_say_why(value: Any, currency: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        format_amount(value, currency)


def test_the_canonical_string_is_the_documented_one() -> None:
    assert canonical_string(**EVENT, expires=NOW + 600) == (
        f"capirelay-beacon-v1\n1234567890\nPurchase\norder-1001\n25.50\nEUR\n{NOW + 600}"
    )


def test_the_docs_show_a_token_the_library_mints() -> None:
    assert mint_beacon_token(SECRET, **EVENT, ttl_seconds=600, now=NOW) == DOC_TOKEN
    assert DOC_TOKEN in DOCS.read_text(encoding="utf-8")


def test_a_minted_token_verifies_until_it_expires() -> None:
    token = mint_beacon_token(SECRET, **EVENT, ttl_seconds=600, now=NOW)
    verify_beacon_token(token, SECRET, **{**EVENT, "value": 25.5}, now=NOW + 600)
    with pytest.raises(TokenError) as expired:
        verify_beacon_token(token, SECRET, **EVENT, now=NOW + 601)
    assert expired.value.code == "token_expired"


@pytest.mark.parametrize(
    "change",
    [
        {"value": "25.51"},
        {"currency": "USD"},
        {"event_id": "order-1002"},
        {"event_name": "Lead"},
        {"pixel_id": "1234567891"},
        {"value": None},
    ],
)
def test_any_signed_field_changed_is_a_mismatch(change: dict[str, Any]) -> None:
    token = mint_beacon_token(SECRET, **EVENT, now=NOW)
    with pytest.raises(TokenError) as refused:
        verify_beacon_token(token, SECRET, **{**EVENT, **change}, now=NOW)
    assert refused.value.code == "token_mismatch"
    assert SECRET not in str(refused.value) and token not in str(refused.value)


def test_another_secret_is_a_mismatch() -> None:
    token = mint_beacon_token(SECRET, **EVENT, now=NOW)
    with pytest.raises(TokenError, match="does not match"):
        verify_beacon_token(token, "another-secret", **EVENT, now=NOW)


@pytest.mark.parametrize(
    "token",
    ["", "v1", "v2" + DOC_TOKEN[2:], "v1.x.y", "v1.1.é"],
)
def test_malformed_tokens_are_named_as_such(token: str) -> None:
    with pytest.raises(TokenError) as refused:
        verify_beacon_token(token, SECRET, **EVENT, now=NOW)
    assert refused.value.code == "token_malformed"


def test_tokens_cannot_outlive_the_dedup_window() -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        mint_beacon_token(SECRET, **EVENT, ttl_seconds=MAX_TOKEN_LIFETIME + 1)
    far = mint_beacon_token(SECRET, **EVENT, ttl_seconds=60, now=NOW + MAX_TOKEN_LIFETIME)
    with pytest.raises(TokenError) as refused:
        verify_beacon_token(far, SECRET, **EVENT, now=NOW)
    assert refused.value.code == "token_lifetime"


def test_minting_refuses_what_it_cannot_bind() -> None:
    with pytest.raises(ValueError, match="event_id"):
        mint_beacon_token(SECRET, **{**EVENT, "event_id": ""})
    with pytest.raises(ValueError, match="secret"):
        mint_beacon_token("", **EVENT)
    with pytest.raises(ValueError, match="newline"):
        mint_beacon_token(SECRET, **{**EVENT, "event_id": "a\nb"})


# ---------------------------------------------------------------------------
# The Node snippet in the docs, run as a shop's server would run it


def _doc_block(language: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    assert blocks, f"docs/beacon-defences.md has no {language} block"
    return str(blocks[0])


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.parametrize(
    ("value", "currency"),
    [("25.5", "EUR"), (1000, "JPY"), ("1.5", "KWD"), (None, None), (19.99, "usd")],
)
def test_the_node_snippet_mints_the_same_token(value: Any, currency: str | None) -> None:
    args = {**EVENT, "value": value, "currency": currency}
    script = _doc_block("js") + (
        "\nconst a = JSON.parse(process.argv[1]);"
        "\nconst realNow = Date.now; Date.now = () => a.now * 1000;"
        "\nprocess.stdout.write(capirelayToken(a.secret, {pixelId: a.pixel_id,"
        " eventName: a.event_name, eventId: a.event_id, value: a.value,"
        " currency: a.currency, ttlSeconds: 600}));"
    )
    payload = json.dumps({**args, "secret": SECRET, "now": NOW})
    node = subprocess.run(
        ["node", "-e", script, payload], capture_output=True, text=True, timeout=30, check=True
    )
    assert node.stdout == mint_beacon_token(SECRET, **args, ttl_seconds=600, now=NOW)


def test_the_php_snippet_is_in_the_docs() -> None:
    php = _doc_block("php")
    assert "hash_hmac('sha256'" in php and "capirelay-beacon-v1" in php


# ---------------------------------------------------------------------------
# Settings


def test_require_verified_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="verification_secret"):
        PixelSettings(require_verified=["Purchase"])


def test_require_verified_names_must_be_allowed_from_browsers() -> None:
    with pytest.raises(ValueError, match="beacon_events"):
        PixelSettings(
            beacon_events=["PageView"],
            require_verified=["Purchase"],
            verification_secret={"env": "X"},
        )


def test_a_quota_needs_both_rate_and_burst() -> None:
    with pytest.raises(ValueError, match="both events_per_second and burst"):
        IngestKey(key={"env": "K"}, events_per_second=100)
    assert IngestKey(key={"env": "K"}, events_per_second=100, burst=1000).burst == 1000
