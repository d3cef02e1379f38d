"""Every authoritative normalization vector passes: the hash is Meta's own for the same input.

``tests/fixtures/reference/external-normalization-vectors.json`` holds 4,329 expectations
taken from the test suites of Meta's own implementations (capi-param-builder in Node, client
JS and PHP; the Python, PHP, Java, Ruby and Node business SDKs; the GTM server tag) and of
Segment and RudderStack, each with its source, commit and a judgement.  The vectors marked
``"authoritative": true`` come from Meta's code or Meta's documented rules and contradict
neither; every one of them must hold.  The others are the references' own bugs (e.g. MD5
pass-through), kept for context and not tested.  The choices made where Meta is silent are
written down in docs/normalization.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from capirelay import browser_ids
from capirelay.normalize import NormalizationError, hash_field, normalize, sha256_hex

VECTORS_FILE = (
    Path(__file__).parent / "fixtures" / "reference" / "external-normalization-vectors.json"
)
ALL = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))["vectors"]
AUTHORITATIVE = [v for v in ALL if v["authoritative"]]


def _normalized(vector: dict[str, Any]) -> str | None:
    try:
        return normalize(vector["field"], vector["input"], country=vector["country"])
    except NormalizationError:
        return None


def _hashed(vector: dict[str, Any]) -> str | None:
    try:
        return hash_field(vector["field"], vector["input"], country=vector["country"])
    except NormalizationError:
        return None


def _check_normalize(vector: dict[str, Any]) -> None:
    if "expected_sha256" in vector:
        assert _hashed(vector) == vector["expected_sha256"]
        if vector.get("expected_preimage") is not None:
            assert _normalized(vector) == vector["expected_preimage"]
        return
    expected = vector["expected_normalized"]
    assert _normalized(vector) == expected
    if expected is not None:
        assert _hashed(vector) == sha256_hex(expected)


def _fbc_from_request(vector: dict[str, Any]) -> None:
    given = vector["input"]
    headers = {"referer": given["referrer"]} if given["referrer"] else {}
    context = browser_ids.from_request(
        url=given["url"], headers=headers, cookies=given["cookies"], remote_addr=None
    )
    expected = vector["expected"]
    if expected is None:
        assert context.fbc is None
    elif "unchanged" in expected:
        assert context.fbc == expected["unchanged"]
    else:
        parsed = browser_ids.parse_fbc(context.fbc)
        assert parsed is not None and parsed.payload == expected["new"]
        if expected["subdomain_index"] is not None:
            assert parsed.subdomain_index == expected["subdomain_index"]


CHECKS = {
    "normalize": _check_normalize,
    "fbc_cookie_valid": lambda v: (browser_ids.parse_fbc(v["input"]) is not None) is v["expected"],
    "fbp_cookie_valid": lambda v: (browser_ids.parse_fbp(v["input"]) is not None) is v["expected"],
    "cookie_domain": lambda v: browser_ids.etld_plus_one(v["input"]) == v["expected"],
    "subdomain_index": lambda v: browser_ids.subdomain_index(v["input"]) == v["expected"],
    "fbclid_from_url": lambda v: browser_ids._fbclid(v["input"]) == v["expected"],
    "fbc_from_request": _fbc_from_request,
}


def _label(vector: dict[str, Any]) -> str:
    return f"{vector['id']}-{vector['kind']}-{vector['field']}"


@pytest.mark.parametrize("vector", AUTHORITATIVE, ids=_label)
def test_authoritative_vector(vector: dict[str, Any]) -> None:
    outcome = CHECKS[vector["kind"]](vector)
    assert outcome is not False, f"{vector['source']} :: {vector['locator']}"


def test_the_file_is_the_one_the_issue_names() -> None:
    assert len(ALL) == 4329
    assert len(AUTHORITATIVE) == 3148
    assert {v["kind"] for v in AUTHORITATIVE} == set(CHECKS)


@pytest.mark.parametrize(
    ("field", "value", "country", "expected"),
    [
        ("ph", "+001 (616) 954-78 88", None, "16169547888"),
        ("ph", "+001 (616) 954-78 88", "US", "16169547888"),
        ("st", "Florida32801", None, "fl"),
        ("st", "CA 94025", "US", "ca"),
        ("st", "CA-1", None, "ca"),
        ("st", "123CA", None, "ca"),
        ("st", "13", "JP", "13"),  # a numeric subdivision stays as written
        ("db", "1990年12月31日", None, "19901231"),
        ("db", "12月31日1990年", None, "19901231"),
        ("db", "1990년 12월 31일", None, "19901231"),
        ("zp", "98 121-9431", None, "98121"),
        ("zp", "98 121-9431", "US", "98121"),
        ("zp", "98121 9431", None, "98121"),
        ("fn", "Mary ❤️", None, "mary❤️"),
    ],
)
def test_the_cases_the_issue_names(
    field: str, value: str, country: str | None, expected: str
) -> None:
    assert normalize(field, value, country=country) == expected


@pytest.mark.parametrize("value", ["1990年12月", "1990年12月31日31日", "12月31日"])
def test_incomplete_cjk_dates_are_refused(value: str) -> None:
    with pytest.raises(NormalizationError):
        normalize("db", value)
