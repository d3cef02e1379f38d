"""Property tests of the fbc/fbp grammar and client-IP choice (Parameter Builder parity):
building then parsing round-trips, the click id keeps its case, an fbc is never wrapped
twice, and no header or cookie value makes a parser raise or yields a non-IP."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from capirelay.browser_ids import build_fbc, client_ip, mint_fbp, parse_fbc, parse_fbp

CLICK_IDS = st.from_regex(r"[A-Za-z0-9_\-]{1,120}", fullmatch=True)
HOSTS = st.sampled_from(
    [
        "shop.example",
        "www.shop.example",
        "a.b.shop.co.uk",
        "localhost",
        "203.0.113.9",
        "shop.example.",
    ]
)
NOW_MS = st.integers(min_value=1_500_000_000_000, max_value=2_500_000_000_000)


@settings(max_examples=300, deadline=None)
@given(fbclid=CLICK_IDS, host=HOSTS, now_ms=NOW_MS)
def test_fbc_round_trips_and_keeps_the_click_ids_case(fbclid: str, host: str, now_ms: int) -> None:
    fbc = build_fbc(fbclid, host, now_ms=now_ms)
    parsed = parse_fbc(fbc)
    assert parsed is not None
    assert parsed.payload == fbclid
    assert parsed.creation_time_ms == now_ms
    assert build_fbc(fbc, host, now_ms=now_ms + 1) == fbc  # never wrapped twice


@settings(max_examples=200, deadline=None)
@given(host=HOSTS, now_ms=NOW_MS)
def test_minted_fbp_parses(host: str, now_ms: int) -> None:
    parsed = parse_fbp(mint_fbp(host, now_ms=now_ms))
    assert parsed is not None
    assert 0 <= int(parsed.payload) <= 2**31 - 1


@settings(max_examples=250, deadline=None)
@given(
    value=st.text(max_size=80) | st.from_regex(r"fb\.[0-9]\.[0-9]{1,14}\..{0,30}", fullmatch=True)
)
def test_parsers_never_raise_and_keep_the_raw_value(value: str) -> None:
    for parse in (parse_fbc, parse_fbp):
        parsed = parse(value)
        if parsed is not None:
            assert parsed.raw == value
            assert value.startswith("fb.")


HEADER_TEXT = st.text(max_size=60) | st.from_regex(
    r"([0-9a-f:.]{2,39}|unknown|\[::1\]:80)(, ?[0-9a-f:.]{2,39}){0,3}", fullmatch=True
)


@settings(max_examples=250, deadline=None)
@given(
    remote=st.none()
    | st.sampled_from(["127.0.0.1", "10.0.0.1", "8.8.8.8", "::1"])
    | st.text(max_size=20),
    forwarded_for=HEADER_TEXT,
    real_ip=HEADER_TEXT,
    fbi=st.none() | HEADER_TEXT,
    allow_private=st.booleans(),
)
def test_client_ip_is_an_ip_or_none_for_any_headers(
    remote: str | None, forwarded_for: str, real_ip: str, fbi: str | None, allow_private: bool
) -> None:
    headers = {"x-forwarded-for": forwarded_for, "x-real-ip": real_ip}
    chosen = client_ip(
        remote, headers, ["127.0.0.1", "10.0.0.0/8"], fbi_cookie=fbi, allow_private=allow_private
    )
    if chosen is not None:
        address = ipaddress.ip_address(chosen)
        assert allow_private or address.is_global
