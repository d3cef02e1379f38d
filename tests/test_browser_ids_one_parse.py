"""``from_request`` splits each URL once: the same context as the helper-per-question version.

The reference below is ``from_request`` as it was before (``_safe_url``, ``_hostname`` and
``_fbclid`` each splitting the URL again, ``build_fbc`` checking the click id again); the
current one must answer exactly the same over odd URLs, query strings, cookies and proxies.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capirelay import browser_ids
from capirelay.browser_ids import (
    _CLICK_ID_RE,
    COOKIE_MAX_AGE,
    FBC_COOKIE,
    FBI_COOKIE,
    FBP_COOKIE,
    BrowserContext,
    CookieToSet,
    ParsedClickCookie,
    _cookie_domain,
    _header,
    _is_https,
    _is_trusted,
    _parse_ip,
    _safe_cookie,
    _safe_url,
    _trusted_networks,
    build_fbc,
    client_ip,
    from_request,
    mint_fbp,
    parse_fbc,
    parse_fbp,
)

NOW_MS = 1_795_664_015_001


def _old_hostname(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _old_fbclid(url: str | None) -> str | None:
    if not url:
        return None
    try:
        values = parse_qs(urlsplit(url).query).get("fbclid")
    except ValueError:
        return None
    if not values:
        return None
    candidate = values[0]
    if parse_fbc(candidate) is not None or _CLICK_ID_RE.fullmatch(candidate):
        return candidate
    return None


def _old_resolve_fbc(
    existing: ParsedClickCookie | None, fbclid: str | None, host: str, now_ms: int
) -> tuple[str | None, bool]:
    if fbclid is None:
        return (existing.raw if existing else None), False
    if existing is not None and (existing.payload == fbclid or existing.raw == fbclid):
        return existing.raw, False
    return build_fbc(fbclid, host, now_ms=now_ms), True


def reference_from_request(
    *,
    url: str,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    remote_addr: str | None,
    trusted_proxies: Sequence[str] = (),
    page_url: str | None = None,
    page_referrer: str | None = None,
    now_ms: int,
    refresh_existing: bool = True,
    rng: random.Random | None = None,
) -> BrowserContext:
    now = now_ms
    page = _safe_url(page_url) if page_url is not None else _safe_url(url)
    referrer = _safe_url(page_referrer if page_url is not None else _header(headers, "referer"))
    page_host = _old_hostname(page) or _old_hostname(url) or ""
    fbclid = _old_fbclid(page) or _old_fbclid(referrer)
    fbc, fbc_is_new = _old_resolve_fbc(
        parse_fbc(_safe_cookie(cookies, FBC_COOKIE)), fbclid, page_host, now
    )
    existing_fbp = parse_fbp(_safe_cookie(cookies, FBP_COOKIE))
    fbp = existing_fbp.raw if existing_fbp else mint_fbp(page_host, now_ms=now, rng=rng)
    networks = _trusted_networks(tuple(trusted_proxies))
    peer = _parse_ip(remote_addr)
    proxied = peer is not None and _is_trusted(peer, networks)
    can_set, domain = _cookie_domain(page_host, _old_hostname(url))
    secure = _is_https(url, headers, proxied)
    to_set: list[CookieToSet] = []
    if can_set:
        for name, value, is_new in (
            (FBC_COOKIE, fbc, fbc_is_new),
            (FBP_COOKIE, fbp, existing_fbp is None),
        ):
            if value and (is_new or refresh_existing):
                to_set.append(CookieToSet(name, value, domain, COOKIE_MAX_AGE, secure=secure))
    return BrowserContext(
        fbc=fbc,
        fbp=fbp,
        client_ip_address=client_ip(
            remote_addr, headers, trusted_proxies, fbi_cookie=_safe_cookie(cookies, FBI_COOKIE)
        ),
        client_user_agent=_header(headers, "user-agent") or None,
        event_source_url=page,
        referrer_url=referrer,
        cookies_to_set=to_set,
    )


CLICK = "IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2o"
FBC = f"fb.1.1700000000000.{CLICK}"

URLS = [
    None,
    "",
    "https://shop.example.com/p/1",
    f"https://shop.example.com/p/1?fbclid={CLICK}",
    f"https://shop.example.com/p/1?a=1&fbclid={CLICK}&fbclid=second",
    f"https://shop.example.com/p/1?fbclid=&fbclid={CLICK}",  # the blank one is skipped
    f"https://shop.example.com/p/1?fb%63lid={CLICK}",  # the name percent-encoded
    f"https://shop.example.com/p/1?fbclid={FBC}",  # already an fbc value
    "https://shop.example.com/p/1?fbclid=not%20a%20click",  # not a click id
    "https://shop.example.com/p/1?fbclid",  # no value
    "https://shop.example.com/p/1?x=%zz&fbclid=abc",  # a bad escape
    "http://a.b.example.co.uk:8080/x?fbclid=Ab_9-z#frag",
    "http://[::1]:8080/?fbclid=abc",
    "http://[::1/?fbclid=abc",  # urlsplit refuses it
    "http://127.0.0.1/?fbclid=abc",
    "http://localhost/?fbclid=abc",
    "ftp://shop.example.com/?fbclid=abc",  # not http(s)
    "https:///no-host?fbclid=abc",
    "https://shop.example.com/with space?fbclid=abc",  # unsafe
    "/relative?fbclid=abc",
]
REQUEST_URLS = [
    "http://127.0.0.1:8000/v1/collect",
    "https://gw.shop.example.com/v1/collect",
    f"https://shop.example.com/landing?fbclid={CLICK}",
    "http://[::1/",
]
COOKIES: list[dict[str, str]] = [
    {},
    {"_fbp": "fb.1.1700000000000.123"},
    {"_fbp": "junk", "_fbc": FBC},
    {"_fbc": f"fb.1.1700000000000.{CLICK}.AQ", "_fbi": "203.0.113.9"},
    {"_fbc": "fb.1.1700000000000.other"},
]


def _both(**kw: object) -> tuple[BrowserContext, BrowserContext]:
    ours = from_request(now_ms=NOW_MS, rng=random.Random(7), **kw)  # type: ignore[arg-type]
    theirs = reference_from_request(now_ms=NOW_MS, rng=random.Random(7), **kw)  # type: ignore[arg-type]
    return ours, theirs


@pytest.mark.parametrize("request_url", REQUEST_URLS)
@pytest.mark.parametrize("page_url", URLS)
def test_the_same_context_for_odd_page_urls(request_url: str, page_url: str | None) -> None:
    for cookies in COOKIES:
        for referrer in (None, f"https://ref.example.org/?fbclid={CLICK}x", "javascript:x"):
            ours, theirs = _both(
                url=request_url,
                headers={"referer": "https://other.example.net/?fbclid=fromheader"},
                cookies=cookies,
                remote_addr="198.51.100.7",
                page_url=page_url,
                page_referrer=referrer,
            )
            assert ours == theirs


@pytest.mark.parametrize("request_url", URLS[2:] + REQUEST_URLS)
def test_the_same_context_without_a_page_url(request_url: str) -> None:
    for referer in (None, f"https://ref.example.org/p?fbclid={CLICK}", "https://x.example/ bad"):
        for proxies, forwarded in (((), {}), (("10.0.0.0/8",), {"x-forwarded-proto": "https"})):
            headers = {**({"referer": referer} if referer else {}), **forwarded}
            ours, theirs = _both(
                url=request_url,
                headers=headers,
                cookies={"_fbp": "fb.1.1700000000000.123"},
                remote_addr="10.1.2.3",
                trusted_proxies=proxies,
            )
            assert ours == theirs


query_parts = st.sampled_from(
    ["fbclid=", "fbclid=abc", f"fbclid={FBC}", "fb%63lid=Z9", "fbclid=a+b", "x=1", "&", ";", "%"]
)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(query_parts | st.text(max_size=12), max_size=5), refresh=st.booleans())
def test_the_same_context_for_any_query(parts: list[str], refresh: bool) -> None:
    page = "https://shop.example.com/p?" + "&".join(parts)
    ours, theirs = _both(
        url="http://127.0.0.1:8000/v1/collect",
        headers={},
        cookies={"_fbc": FBC},
        remote_addr=None,
        page_url=page,
        refresh_existing=refresh,
    )
    assert ours == theirs
    assert browser_ids._fbclid(page) == _old_fbclid(page)
