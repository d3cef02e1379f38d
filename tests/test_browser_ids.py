"""fbc/fbp, eTLD+1, client IP and cookies: parity with Meta's Parameter Builder, minus its bugs."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capirelay.browser_ids import (
    COOKIE_MAX_AGE,
    BrowserContext,
    CookieToSet,
    ParsedClickCookie,
    build_fbc,
    client_ip,
    etld_plus_one,
    from_asgi_scope,
    from_request,
    mint_fbp,
    parse_fbc,
    parse_fbp,
    subdomain_index,
)
from capirelay.browser_ids._client_ip import TrustedNetworks

NOW_MS = 1_795_664_015_001  # the timestamp in the reference's observed builder output
CLICK = "IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2o"

# --- parsing -----------------------------------------------------------------

PARSE_FBC_ROWS = [
    (
        "fb.1.1554763741205.IwAR123abc",
        ParsedClickCookie(1, 1554763741205, "IwAR123abc", None, "fb.1.1554763741205.IwAR123abc"),
    ),
    (
        "fb.2.1554763741205.AbCdEf.AQIDAQMC",
        ParsedClickCookie(
            2, 1554763741205, "AbCdEf", "AQIDAQMC", "fb.2.1554763741205.AbCdEf.AQIDAQMC"
        ),
    ),
    (
        "fb.1.1554763741205.AbC.Ag",
        ParsedClickCookie(1, 1554763741205, "AbC", "Ag", "fb.1.1554763741205.AbC.Ag"),
    ),
    ("fb.1.1554763741205.AbC.ZZ", None),  # not a known legacy token
    ("fb.1.1554763741205.AbC.AQIDAQ", None),  # neither 2 nor 8 chars
    ("fb.1.1554763741205", None),  # 3 segments
    ("fb.1.1554763741205.a.AQIDAQMC.x", None),  # 6 segments
    ("fb.x.1554763741205.AbC", None),
    ("FB.1.1554763741205.AbC", None),
    ("fb.1.1554763741205.Ab;C", None),
    ("fb.1.1554763741205.AbC\r\nSet-Cookie: x=1", None),
    ("IwAR123abc", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize(("value", "expected"), PARSE_FBC_ROWS)
def test_parse_fbc(value: str | None, expected: ParsedClickCookie | None) -> None:
    assert parse_fbc(value) == expected


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("fb.1.1596403881668.1116446470", True),
        ("fb.2.1596403881668.1116446470.AQICAQMC", True),
        ("fb.1.1596403881668.1116446470.BA", True),
        ("fb.1.1596403881668.abc", False),  # the random part is a number
        ("fb.1.1596403881668", False),
        (12, False),
    ],
)
def test_parse_fbp(value: Any, ok: bool) -> None:
    parsed = parse_fbp(value)
    assert (parsed is not None) == ok
    if parsed:
        assert parsed.raw == value


def test_parse_keeps_click_id_case() -> None:
    parsed = parse_fbc(f"fb.1.{NOW_MS}.{CLICK}")
    assert parsed is not None and parsed.payload == CLICK


# --- hosts ---------------------------------------------------------------------

HOST_ROWS = [
    # host, eTLD+1, subdomain_index
    ("example.com", "example.com", 1),
    ("www.example.com", "example.com", 1),
    ("a.b.example.com", "example.com", 1),  # the builder's default says b.example.com
    ("example.co.uk", "example.co.uk", 2),  # the builder's default says co.uk
    ("a.b.example.co.uk", "example.co.uk", 2),
    ("WWW.Example.COM.", "example.com", 1),
    ("shop.example.com:8443", "example.com", 1),
    ("https://shop.example.com/path", "example.com", 1),
    ("alice.github.io", "alice.github.io", 2),  # private section of the PSL, as browsers use it
    ("co.uk", None, 0),
    ("localhost", None, 0),
    ("localhost:8000", None, 0),
    ("192.168.0.1", None, 0),  # the builder brackets this one: [192.168.0.1]
    ("192.168.0.1:8080", None, 0),
    ("[2001:db8::1]:443", None, 0),
    ("2001:db8::1", None, 0),
    ("", None, 0),
]


@pytest.mark.parametrize(("host", "registrable", "index"), HOST_ROWS)
def test_etld_plus_one_and_subdomain_index(host: str, registrable: str | None, index: int) -> None:
    assert etld_plus_one(host) == registrable
    assert subdomain_index(host) == index


# --- building ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("www.example.com", f"fb.1.{NOW_MS}.{CLICK}"),
        ("shop.example.co.uk", f"fb.2.{NOW_MS}.{CLICK}"),
        ("localhost", f"fb.0.{NOW_MS}.{CLICK}"),
        ("10.0.0.1", f"fb.0.{NOW_MS}.{CLICK}"),
    ],
)
def test_build_fbc_keeps_the_click_id_case(host: str, expected: str) -> None:
    assert build_fbc(CLICK, host, now_ms=NOW_MS) == expected


@pytest.mark.parametrize(
    "existing", ["fb.1.1554763741205.IwAR123abc", "fb.1.1554763741205.IwAR123abc.AQIDAQMC"]
)
def test_build_fbc_never_wraps_an_existing_value(existing: str) -> None:
    assert build_fbc(existing, "www.example.com", now_ms=NOW_MS) == existing


@pytest.mark.parametrize("fbclid", ["", "a.b", "abc;def", "abc\r\n", "abc def", "ümlaut"])
def test_build_fbc_refuses_junk(fbclid: str) -> None:
    with pytest.raises(ValueError, match="fbclid"):
        build_fbc(fbclid, "www.example.com", now_ms=NOW_MS)


def test_build_fbc_defaults_to_the_clock() -> None:
    parsed = parse_fbc(build_fbc("AbC", "example.com"))
    assert parsed is not None and parsed.creation_time_ms > NOW_MS - 10**12


def test_mint_fbp_is_reproducible_with_a_seeded_rng() -> None:
    first = mint_fbp("www.example.com", now_ms=NOW_MS, rng=random.Random(7))
    second = mint_fbp("www.example.com", now_ms=NOW_MS, rng=random.Random(7))
    assert first == second
    parsed = parse_fbp(first)
    assert parsed is not None
    assert (parsed.subdomain_index, parsed.creation_time_ms, parsed.appendix) == (1, NOW_MS, None)
    assert 0 <= int(parsed.payload) <= 2_147_483_647


def test_mint_fbp_is_random_by_default() -> None:
    minted = {mint_fbp("example.com", now_ms=NOW_MS) for _ in range(50)}
    assert len(minted) > 45


# --- client IP -------------------------------------------------------------------

PROXIES = ("10.0.0.0/8", "172.16.0.1")
IP_ROWS: list[tuple[str, str | None, dict[str, str], tuple[str, ...], str | None, str | None]] = [
    # (case, remote, headers, trusted proxies, _fbi cookie, expected)
    ("direct client", "8.8.8.8", {}, (), None, "8.8.8.8"),
    (
        "XFF ignored without trusted proxies",
        "8.8.8.8",
        {"x-forwarded-for": "1.1.1.1"},
        (),
        None,
        "8.8.8.8",
    ),
    (
        "XFF ignored when the peer is not a trusted proxy",
        "8.8.4.4",
        {"x-forwarded-for": "1.1.1.1"},
        PROXIES,
        None,
        "8.8.4.4",
    ),
    (
        "client behind a trusted proxy",
        "10.0.0.2",
        {"x-forwarded-for": "1.1.1.1"},
        PROXIES,
        None,
        "1.1.1.1",
    ),
    (
        "spoofed leftmost XFF entry is skipped",
        "10.0.0.2",
        {"x-forwarded-for": "9.9.9.9, 1.1.1.1"},
        PROXIES,
        None,
        "1.1.1.1",
    ),
    (
        "two trusted hops",
        "10.0.0.2",
        {"x-forwarded-for": "9.9.9.9, 1.1.1.1, 172.16.0.1"},
        PROXIES,
        None,
        "1.1.1.1",
    ),
    (
        "header name in any case",
        "10.0.0.2",
        {"X-Forwarded-For": "1.1.1.1"},
        PROXIES,
        None,
        "1.1.1.1",
    ),
    ("hop with a port", "10.0.0.2", {"x-forwarded-for": "1.1.1.1:5555"}, PROXIES, None, "1.1.1.1"),
    (
        "bracketed IPv6 hop with a port",
        "10.0.0.2",
        {"x-forwarded-for": "[2606:4700:4700::1111]:443"},
        PROXIES,
        None,
        "2606:4700:4700::1111",
    ),
    (
        "junk where a trusted proxy wrote the client",
        "10.0.0.2",
        {"x-forwarded-for": "1.1.1.1, not-an-ip"},
        PROXIES,
        None,
        None,
    ),
    (
        "private client behind the proxy",
        "10.0.0.2",
        {"x-forwarded-for": "192.168.1.5"},
        PROXIES,
        None,
        None,
    ),
    (
        "only trusted hops: the farthest is the client",
        "10.0.0.2",
        {"x-forwarded-for": "10.1.1.1"},
        PROXIES,
        None,
        None,
    ),
    ("loopback peer", "127.0.0.1", {}, (), None, None),
    ("documentation range is not global", "203.0.113.9", {}, (), None, None),
    ("carrier-grade NAT is not global", "100.64.0.1", {}, (), None, None),
    ("IPv4-mapped IPv6 peer", "::ffff:8.8.8.8", {}, (), None, "8.8.8.8"),
    ("no peer", None, {}, (), None, None),
    (
        "IPv6 from _fbi beats IPv4 from the request",
        "8.8.8.8",
        {},
        (),
        "2606:4700:4700::1111.AQQCAQMC",
        "2606:4700:4700::1111",
    ),
    ("plain IPv6 in _fbi", "8.8.8.8", {}, (), "2606:4700:4700::1111", "2606:4700:4700::1111"),
    (
        "IPv6 from the request beats IPv4 from _fbi",
        "2606:4700:4700::1001",
        {},
        (),
        "1.1.1.1.AQQCAQMC",
        "2606:4700:4700::1001",
    ),
    (
        "IPv4 from _fbi beats IPv4 from the request",
        "8.8.8.8",
        {},
        (),
        "1.1.1.1.AQQCAQMC",
        "1.1.1.1",
    ),
    ("private IPv6 in _fbi loses to public IPv4", "8.8.8.8", {}, (), "fd00::1.AQQCAQMC", "8.8.8.8"),
    ("junk _fbi is ignored", "8.8.8.8", {}, (), "2606:4700::zz", "8.8.8.8"),
    ("_fbi with a header injection is ignored", "8.8.8.8", {}, (), "1.1.1.1;x", "8.8.8.8"),
    ("public _fbi when the request IP is private", "10.0.0.9", {}, (), "1.1.1.1", "1.1.1.1"),
]


@pytest.mark.parametrize(
    ("remote", "headers", "trusted", "fbi", "expected"),
    [row[1:] for row in IP_ROWS],
    ids=[row[0] for row in IP_ROWS],
)
def test_client_ip(
    remote: str | None,
    headers: dict[str, str],
    trusted: tuple[str, ...],
    fbi: str | None,
    expected: str | None,
) -> None:
    assert client_ip(remote, headers, trusted, fbi_cookie=fbi) == expected


def test_client_ip_can_allow_private_addresses_for_development() -> None:
    assert client_ip("127.0.0.1", {}, allow_private=True) == "127.0.0.1"
    assert (
        client_ip("10.0.0.2", {"x-forwarded-for": "192.168.1.5"}, PROXIES, allow_private=True)
        == "192.168.1.5"
    )
    # an XFF header carrying CR/LF is ignored: the trusted peer itself is all we know
    injected = {"x-forwarded-for": "1.1.1.1\r\nX-Evil: 1"}
    assert client_ip("10.0.0.2", injected, PROXIES, allow_private=True) == "10.0.0.2"
    # a public candidate still wins over a private one
    assert client_ip("10.0.0.9", {}, fbi_cookie="1.1.1.1", allow_private=True) == "1.1.1.1"


def test_invalid_trusted_proxy_entry_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        client_ip("10.0.0.2", {}, ("not-a-cidr",))


# --- cookies to set --------------------------------------------------------------


def test_cookie_header_value() -> None:
    cookie = CookieToSet(
        "_fbp", "fb.1.1795664015001.42", "example.com", COOKIE_MAX_AGE, secure=True
    )
    assert cookie.header_value() == (
        "_fbp=fb.1.1795664015001.42; Domain=example.com; Path=/; Max-Age=7776000; SameSite=Lax; "
        "Secure"
    )


def test_cookie_without_domain_or_secure() -> None:
    cookie = CookieToSet("_fbc", "fb.0.1.AbC", None, COOKIE_MAX_AGE)
    assert cookie.header_value() == "_fbc=fb.0.1.AbC; Path=/; Max-Age=7776000; SameSite=Lax"


@pytest.mark.parametrize(
    ("name", "value", "domain"),
    [
        ("_fbc", "a;b", "example.com"),
        ("_fbc", "a,b", "example.com"),
        ("_fbc", "a\r\nSet-Cookie: x=1", "example.com"),
        ("_fbc", "a\nb", "example.com"),
        ("_fbc", "a b", "example.com"),
        ("_fbc", "a\x00b", "example.com"),
        ("_f;bc", "ab", "example.com"),
        ("_fbc", "ab", "example.com; HttpOnly"),
        ("_fbc", "ab", "example.com\r\n"),
    ],
)
def test_cookie_refuses_header_injection(name: str, value: str, domain: str) -> None:
    with pytest.raises(ValueError):
        CookieToSet(name, value, domain, COOKIE_MAX_AGE)


# --- whole requests ----------------------------------------------------------------


def page_request(url: str, **kwargs: Any) -> BrowserContext:
    arguments: dict[str, Any] = {
        "headers": {"user-agent": "Mozilla/5.0"},
        "cookies": {},
        "remote_addr": "8.8.8.8",
        "now_ms": NOW_MS,
        "rng": random.Random(1),
    }
    arguments.update(kwargs)
    return from_request(url=url, **arguments)


def cookie_values(context: BrowserContext) -> dict[str, str]:
    return {cookie.name: cookie.value for cookie in context.cookies_to_set}


def test_landing_with_fbclid_builds_fbc_and_fbp_with_cookies() -> None:
    context = page_request(f"https://www.example.com/landing?utm=a&fbclid={CLICK}")
    assert context.fbc == f"fb.1.{NOW_MS}.{CLICK}"
    assert context.fbp is not None and context.fbp.startswith(f"fb.1.{NOW_MS}.")
    assert context.event_source_url == f"https://www.example.com/landing?utm=a&fbclid={CLICK}"
    assert context.client_ip_address == "8.8.8.8"
    assert context.client_user_agent == "Mozilla/5.0"
    assert cookie_values(context) == {"_fbc": context.fbc, "_fbp": context.fbp}
    for cookie in context.cookies_to_set:
        assert (cookie.domain, cookie.max_age, cookie.path, cookie.secure, cookie.same_site) == (
            "example.com",
            7_776_000,
            "/",
            True,
            "Lax",
        )


# Reference §3.3, observed Parameter Builder outputs, and what we produce instead.
# Columns: case, url, cookies, referer, expected fbc, expected fbp (None = minted).
BUILDER_ROWS: list[tuple[str, str, dict[str, str], str | None, str | None, str | None]] = [
    (
        "new click -> fb.1.<ms>.NEWCLICK (builder adds .AQICAQMC; we add nothing)",
        "https://www.example.com/?fbclid=NEWCLICK",
        {},
        None,
        f"fb.1.{NOW_MS}.NEWCLICK",
        None,
    ),
    (
        "changed click replaces the cookie",
        "https://www.example.com/?fbclid=NEWCLICK",
        {"_fbc": "fb.1.1554763741205.IwAR123abc"},
        None,
        f"fb.1.{NOW_MS}.NEWCLICK",
        None,
    ),
    (
        "same click keeps the cookie (builder appends .AQIAAQMC; we keep it as is)",
        "https://www.example.com/?fbclid=IwAR123abc",
        {"_fbc": "fb.1.1554763741205.IwAR123abc"},
        None,
        "fb.1.1554763741205.IwAR123abc",
        None,
    ),
    (
        "4-part cookies accepted unchanged",
        "https://www.example.com/",
        {"_fbc": "fb.1.1554763741205.IwAR123abc", "_fbp": "fb.1.1554763741205.42"},
        None,
        "fb.1.1554763741205.IwAR123abc",
        "fb.1.1554763741205.42",
    ),
    (
        "5-part cookies accepted unchanged",
        "https://www.example.com/",
        {"_fbc": "fb.1.1554763741205.IwAR.AQIDAQMC", "_fbp": "fb.2.1700000000000.42.AQIAAQMC"},
        None,
        "fb.1.1554763741205.IwAR.AQIDAQMC",
        "fb.2.1700000000000.42.AQIAAQMC",
    ),
    (
        "6-part cookies are invalid: fbc dropped, fbp minted",
        "https://www.example.com/",
        {"_fbc": "fb.1.1.a.b.c", "_fbp": "fb.1.1.2.AQIAAQMC.x"},
        None,
        None,
        None,
    ),
    (
        "fbclid from the referrer when the URL has none",
        "https://www.example.com/p",
        {},
        "https://l.facebook.com/l.php?fbclid=RefClick",
        f"fb.1.{NOW_MS}.RefClick",
        None,
    ),
    (
        "the URL's fbclid wins over the referrer's",
        "https://www.example.com/?fbclid=UrlClick",
        {},
        "https://l.facebook.com/?fbclid=RefClick",
        f"fb.1.{NOW_MS}.UrlClick",
        None,
    ),
    (
        "co.uk host: index 2, not the builder's co.uk",
        "https://shop.example.co.uk/?fbclid=Ab",
        {},
        None,
        f"fb.2.{NOW_MS}.Ab",
        None,
    ),
    (
        "an fbclid that already is an fbc is not wrapped",
        "https://www.example.com/?fbclid=fb.1.1554763741205.IwAR123abc",
        {},
        None,
        "fb.1.1554763741205.IwAR123abc",
        None,
    ),
    ("junk fbclid is ignored", "https://www.example.com/?fbclid=a%3Bb", {}, None, None, None),
]


@pytest.mark.parametrize(
    ("url", "cookies", "referer", "fbc", "fbp"),
    [row[1:] for row in BUILDER_ROWS],
    ids=[row[0] for row in BUILDER_ROWS],
)
def test_builder_behaviour(
    url: str, cookies: dict[str, str], referer: str | None, fbc: str | None, fbp: str | None
) -> None:
    headers = {"user-agent": "Mozilla/5.0", **({"referer": referer} if referer else {})}
    context = page_request(url, headers=headers, cookies=cookies)
    assert context.fbc == fbc
    if fbp is None:
        minted = parse_fbp(context.fbp)
        assert minted is not None and minted.creation_time_ms == NOW_MS
    else:
        assert context.fbp == fbp
    assert context.referrer_url == referer  # never suffixed with an appendix
    assert context.event_source_url == url


def test_urls_are_not_suffixed_with_the_appendix() -> None:
    context = page_request(
        "https://www.example.com/p?fbclid=CTX1&utm=a",
        headers={"referer": "https://www.google.com/"},
    )
    assert context.event_source_url == "https://www.example.com/p?fbclid=CTX1&utm=a"
    assert context.referrer_url == "https://www.google.com/"


def test_existing_cookies_are_refreshed_unless_told_not_to() -> None:
    cookies = {"_fbc": "fb.1.1554763741205.IwAR123abc", "_fbp": "fb.1.1554763741205.42"}
    assert cookie_values(page_request("https://www.example.com/", cookies=cookies)) == cookies
    quiet = page_request("https://www.example.com/", cookies=cookies, refresh_existing=False)
    assert quiet.cookies_to_set == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("_fbp", "fb.1.1554763741205.42;Domain=evil.com"),
        ("_fbp", "fb.1.1554763741205.42\r\nSet-Cookie: x=1"),
        ("_fbp", "fb.1.1554763741205.42,x"),
        ("_fbc", "fb.1.1554763741205.Ab\nC"),
    ],
)
def test_unsafe_cookie_values_are_ignored(name: str, value: str) -> None:
    context = page_request("https://www.example.com/", cookies={name: value})
    assert value not in (context.fbc, context.fbp)
    for cookie in context.cookies_to_set:
        assert "\n" not in cookie.header_value() and "evil" not in cookie.header_value()


def test_unsafe_header_values_are_ignored() -> None:
    context = page_request(
        "https://www.example.com/",
        headers={"user-agent": "Mozilla\r\nX-Evil: 1", "referer": "https://a.example/\r\nX: 1"},
    )
    assert context.client_user_agent is None
    assert context.referrer_url is None


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "ftp://www.example.com/", "/relative/path", "https:///nohost"]
)
def test_non_http_page_urls_are_not_event_source_urls(url: str) -> None:
    assert page_request("https://www.example.com/", page_url=url).event_source_url is None


def test_beacon_takes_page_url_and_page_referrer() -> None:
    context = page_request(
        "https://collect.example.com/v1/collect",
        headers={"user-agent": "UA", "referer": "https://www.example.com/"},
        page_url=f"https://www.example.com/p?fbclid={CLICK}",
        page_referrer="https://l.facebook.com/",
    )
    assert context.event_source_url == f"https://www.example.com/p?fbclid={CLICK}"
    assert context.referrer_url == "https://l.facebook.com/"
    assert context.fbc == f"fb.1.{NOW_MS}.{CLICK}"
    assert {cookie.domain for cookie in context.cookies_to_set} == {"example.com"}


def test_beacon_finds_fbclid_in_the_page_referrer() -> None:
    context = page_request(
        "https://collect.example.com/v1/collect",
        page_url="https://www.example.com/p",
        page_referrer="https://www.example.com/landing?fbclid=AbC",
    )
    assert context.fbc == f"fb.1.{NOW_MS}.AbC"


def test_beacon_from_another_site_sets_no_cookies() -> None:
    context = page_request(
        "https://gateway.other-site.net/v1/collect", page_url="https://www.example.com/p?fbclid=A"
    )
    assert context.fbc == f"fb.1.{NOW_MS}.A"
    assert context.fbp is not None
    assert context.cookies_to_set == []


def test_beacon_from_an_ip_page_to_another_ip_sets_no_cookies() -> None:
    context = page_request(
        "http://192.168.0.7:8080/v1/collect", page_url="http://192.168.0.5/p?fbclid=A"
    )
    assert context.fbc == f"fb.0.{NOW_MS}.A"
    assert context.cookies_to_set == []


def test_localhost_page_gets_host_only_cookies() -> None:
    context = page_request("http://localhost:8000/?fbclid=AbC", remote_addr="127.0.0.1")
    assert context.fbc == f"fb.0.{NOW_MS}.AbC"
    assert context.client_ip_address is None
    assert {cookie.domain for cookie in context.cookies_to_set} == {None}
    assert all("Domain=" not in c.header_value() for c in context.cookies_to_set)
    assert all(not cookie.secure for cookie in context.cookies_to_set)


@pytest.mark.parametrize(
    ("remote", "proto", "secure"),
    [
        ("10.0.0.2", "https", True),  # TLS ended at our proxy
        ("8.8.8.8", "https", False),  # anyone can send the header
        ("10.0.0.2", None, False),
    ],
)
def test_secure_flag_trusts_forwarded_proto_only_from_proxies(
    remote: str, proto: str | None, secure: bool
) -> None:
    headers = {"x-forwarded-proto": proto} if proto else {}
    context = page_request(
        "http://www.example.com/", headers=headers, remote_addr=remote, trusted_proxies=PROXIES
    )
    assert {cookie.secure for cookie in context.cookies_to_set} == {secure}


def test_user_data_holds_only_what_is_known() -> None:
    context = page_request("https://www.example.com/", headers={}, remote_addr="10.0.0.1")
    assert set(context.user_data()) == {"fbp"}


def test_from_asgi_scope() -> None:
    scope = {
        "type": "http",
        "scheme": "https",
        "method": "GET",
        "path": "/landing",
        "raw_path": b"/landing",
        "query_string": b"fbclid=" + CLICK.encode(),
        "headers": [
            (b"host", b"www.example.com"),
            (b"user-agent", b"Mozilla/5.0"),
            (b"x-forwarded-for", b"9.9.9.9"),
            (b"x-forwarded-for", b"1.1.1.1"),
            (b"cookie", b"_fbp=fb.1.1554763741205.42; other=1"),
            (b"cookie", b"_fbi=2606:4700:4700::1111.AQQCAQMC"),
        ],
        "client": ("10.0.0.2", 51234),
        "server": ("10.0.0.1", 443),
    }
    context = from_asgi_scope(scope, trusted_proxies=PROXIES, now_ms=NOW_MS)
    assert context.fbc == f"fb.1.{NOW_MS}.{CLICK}"
    assert context.fbp == "fb.1.1554763741205.42"
    assert context.event_source_url == f"https://www.example.com/landing?fbclid={CLICK}"
    assert context.client_ip_address == "2606:4700:4700::1111"
    assert context.client_user_agent == "Mozilla/5.0"


def test_from_asgi_scope_without_proxies_uses_the_peer() -> None:
    scope = {
        "type": "http",
        "scheme": "http",
        "path": "/",
        "query_string": b"",
        "headers": [(b"x-forwarded-for", b"1.1.1.1")],
        "client": ("8.8.8.8", 1),
        "server": ("shop.example.org", 80),
    }
    context = from_asgi_scope(scope, now_ms=NOW_MS)
    assert context.client_ip_address == "8.8.8.8"
    assert context.event_source_url == "http://shop.example.org:80/"
    assert context.fbc is None


# --- parity with Meta's own builder, run for real when it is installed ----------

PARITY_ROWS = [
    ("https://www.example.com/?fbclid=NEWCLICK", {}, None),
    ("https://www.example.com/?fbclid=IwAR123abc", {"_fbc": "fb.1.1554763741205.IwAR123abc"}, None),
    ("https://www.example.com/?fbclid=OTHER", {"_fbc": "fb.1.1554763741205.IwAR123abc"}, None),
    ("https://www.example.com/", {"_fbc": "fb.1.1554763741205.IwAR.AQIDAQMC"}, None),
    ("https://www.example.com/", {"_fbp": "fb.1.1554763741205.42"}, None),
    ("https://www.example.com/", {"_fbc": "fb.1.1.a.b.c"}, None),
    ("https://www.example.com/p", {}, "https://l.facebook.com/l.php?fbclid=RefClick"),
    ("https://shop.example.co.uk/?fbclid=Ab", {}, None),
]


def _without_appendix(value: str | None) -> tuple[int, str] | None:
    parsed = parse_fbc(value) or parse_fbp(value)
    return None if parsed is None else (parsed.subdomain_index, parsed.payload)


@pytest.mark.parametrize(("url", "cookies", "referer"), PARITY_ROWS)
def test_parity_with_meta_param_builder(
    url: str, cookies: dict[str, str], referer: str | None
) -> None:
    builder_module = pytest.importorskip("capi_param_builder")
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    # Meta's builder is given the correct eTLD+1 list, as its docs recommend.
    builder = builder_module.ParamBuilder(["example.com", "example.co.uk"])
    builder.process_request(parts.netloc, parse_qs(parts.query), dict(cookies), referer)
    headers = {"referer": referer} if referer else {}
    ours = page_request(url, headers=headers, cookies=cookies)
    assert _without_appendix(ours.fbc) == _without_appendix(builder.get_fbc())
    theirs_fbp = parse_fbp(builder.get_fbp())
    assert theirs_fbp is not None
    if "_fbp" in cookies:
        assert ours.fbp == cookies["_fbp"]
    else:
        assert _without_appendix(ours.fbp)[0] == theirs_fbp.subdomain_index  # type: ignore[index]


# --- properties of the grammar ---------------------------------------------------

click_ids = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1
)
hosts = st.sampled_from(["example.com", "www.example.com", "a.b.example.co.uk", "localhost"])


@given(fbclid=click_ids, host=hosts, now_ms=st.integers(0, 10**16 - 1))
def test_built_fbc_parses_back_to_the_same_click_id(fbclid: str, host: str, now_ms: int) -> None:
    parsed = parse_fbc(build_fbc(fbclid, host, now_ms=now_ms))
    assert parsed is not None
    assert (parsed.payload, parsed.creation_time_ms, parsed.appendix) == (fbclid, now_ms, None)
    assert parsed.subdomain_index == subdomain_index(host)


@given(fbclid=click_ids, host=hosts)
def test_build_fbc_is_idempotent(fbclid: str, host: str) -> None:
    once = build_fbc(fbclid, host, now_ms=NOW_MS)
    assert build_fbc(once, host, now_ms=NOW_MS + 1) == once


@given(value=st.text(max_size=80))
def test_parsers_never_raise_and_keep_the_raw_value(value: str) -> None:
    for parsed in (parse_fbc(value), parse_fbp(value)):
        if parsed is not None:
            assert parsed.raw == value
            assert value.split(".")[3] == parsed.payload


@st.composite
def _networks_and_an_address(draw: st.DrawFn) -> tuple[list[Any], Any]:
    networks = []
    for _ in range(draw(st.integers(0, 8))):
        version = draw(st.sampled_from([4, 6]))
        address = draw(st.ip_addresses(v=version))
        prefix = draw(st.integers(0, 32 if version == 4 else 128))
        networks.append(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
    inside = [st.ip_addresses(network=str(network)) for network in networks]
    address = draw(st.one_of(st.ip_addresses(), *inside))
    return networks, address


@given(_networks_and_an_address())
def test_trusted_proxy_networks_answer_as_ipaddress_does(
    case: tuple[list[Any], Any],
) -> None:
    # The prefix tables stand in for asking each network; Cloudflare's 22 ranges made
    # that 30 µs a beacon.
    networks, address = case
    trusted = TrustedNetworks(tuple(networks))
    assert (address in trusted) == any(address in network for network in networks)


def test_a_client_behind_a_cdn_is_found_through_its_ranges() -> None:
    cdn = ["173.245.48.0/20", "104.16.0.0/13", "172.64.0.0/13", "2606:4700::/32"]
    forwarded = {"x-forwarded-for": "8.8.4.4, 172.70.1.2"}
    assert client_ip("172.70.1.3:443", forwarded, cdn) == "8.8.4.4"
    assert client_ip("[2606:4700::1]:443", forwarded, cdn) == "8.8.4.4"
    # A peer outside the ranges is the client itself; what it forwards is not believed.
    assert client_ip("9.9.9.9", forwarded, cdn) == "9.9.9.9"
    # A forwarded hop outside the ranges is the client, even with more hops left of it.
    assert client_ip("104.16.0.1", {"x-forwarded-for": "1.1.1.1, 8.8.8.8"}, cdn) == "8.8.8.8"
