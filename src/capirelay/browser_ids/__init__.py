"""Browser identifiers: ``fbc``/``fbp``, the cookie domain, and the client IP.

This module owns what Meta's Parameter Builder does for a web request, in
Python and without its known defects:

* ``_fbc``/``_fbp`` cookies are parsed with Meta's grammar
  ``fb.{subdomain_index}.{creation_time_ms}.{payload}`` plus the optional
  5th "appendix" segment the builder writes (a 2-char legacy language token
  or an 8-char appendix).  Values are accepted unchanged: the click id is
  case-sensitive and is never lowercased, and an existing ``fb.`` value is
  never wrapped a second time.
* ``fbc`` is built or refreshed from ``fbclid`` (the page URL first, then the
  referrer's), ``fbp`` is minted when missing, and the cookies to set come back
  as :class:`CookieToSet` (90 days, eTLD+1 domain, ``SameSite=Lax``).
* The eTLD+1 comes from the Public Suffix List (``publicsuffixlist``), not the
  builder's "drop the first label", which gets ``example.co.uk`` wrong.
* The client IP is taken from ``X-Forwarded-For`` only through trusted
  proxies; public addresses win over RFC 6890 special ranges and IPv6 wins
  over IPv4, with the ``_fbi`` cookie of Meta's client-JS builder as a
  candidate.

Values we mint carry no appendix: the appendix encodes *Meta's* builder
language and version, and we are not that builder.  We also never append it to
``event_source_url``/``referrer_url`` as the Python builder 1.3.2 does, because
that turns a real URL into one that does not exist.

Everything read from a request is untrusted: cookie and header values holding
control characters, ``;`` or ``,`` are ignored, so nothing read here can inject
a header when it is written back in ``Set-Cookie``.
"""

from __future__ import annotations

import ipaddress
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

from publicsuffixlist import PublicSuffixList

from capirelay.browser_ids._client_ip import (
    _header,
    _is_trusted,
    _parse_ip,
    _request_ip,
    _trusted_networks,
    client_ip,
)
from capirelay.browser_ids._patterns import (
    _CLICK_ID_RE,
    _COOKIE_NAME_RE,
    _COOKIE_OCTETS_RE,
    _UNSAFE_COOKIE_VALUE_RE,
    _UNSAFE_URL_RE,
    APPENDIX_RE,
    FBC_RE,
    FBP_RE,
)

__all__ = [
    "APPENDIX_RE",
    "COOKIE_MAX_AGE",
    "FBC_COOKIE",
    "FBC_RE",
    "FBI_COOKIE",
    "FBP_COOKIE",
    "FBP_RE",
    "UNKNOWN_ADDRESS",
    "BrowserContext",
    "CookieToSet",
    "ParsedClickCookie",
    "address_key",
    "build_fbc",
    "client_ip",
    "etld_plus_one",
    "from_asgi_scope",
    "from_request",
    "mint_fbp",
    "parse_fbc",
    "parse_fbp",
    "request_address",
    "strip_ip_appendix",
    "subdomain_index",
]

FBC_COOKIE = "_fbc"
FBP_COOKIE = "_fbp"
FBI_COOKIE = "_fbi"
COOKIE_MAX_AGE = 90 * 24 * 3600  # 7,776,000 s, the Pixel's and the builder's lifetime
FBP_RANDOM_MAX = 2_147_483_647


@dataclass(frozen=True, slots=True)
class ParsedClickCookie:
    """An ``fbc`` or ``fbp`` value split into its segments; ``raw`` is the value as given."""

    subdomain_index: int
    creation_time_ms: int
    payload: str
    appendix: str | None
    raw: str


def _parse(pattern: re.Pattern[str], value: str | None) -> ParsedClickCookie | None:
    if not isinstance(value, str):
        return None
    match = pattern.fullmatch(value)
    if match is None:
        return None
    index, created, payload, appendix = match.groups()
    return ParsedClickCookie(int(index), int(created), payload, appendix, value)


def parse_fbc(value: str | None) -> ParsedClickCookie | None:
    """Parse ``fb.{idx}.{ms}.{fbclid}[.{appendix}]``; ``None`` when it is not that shape."""
    return _parse(FBC_RE, value)


def parse_fbp(value: str | None) -> ParsedClickCookie | None:
    """Parse ``fb.{idx}.{ms}.{random}[.{appendix}]``; ``None`` when it is not that shape."""
    return _parse(FBP_RE, value)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def build_fbc(fbclid: str, host: str, *, now_ms: int | None = None) -> str:
    """Build ``fb.{idx}.{now_ms}.{fbclid}`` for a click landing on ``host``.

    The click id keeps its case.  A value that already is an ``fbc`` is returned
    unchanged rather than wrapped again (a common cause of Meta's 2804001).
    """
    if parse_fbc(fbclid) is not None:
        return fbclid
    if not isinstance(fbclid, str) or _CLICK_ID_RE.fullmatch(fbclid) is None:
        raise ValueError("fbclid must be a non-empty click id of letters, digits, '-' or '_'")
    created = _now_ms() if now_ms is None else now_ms
    return f"fb.{subdomain_index(host)}.{created}.{fbclid}"


# SystemRandom, not the module generator: forked workers share the module
# generator's state and would mint the same fbp sequence.
_SYSTEM_RANDOM = random.SystemRandom()


def mint_fbp(host: str, *, now_ms: int | None = None, rng: random.Random | None = None) -> str:
    """Mint a new ``fb.{idx}.{now_ms}.{random 0..2147483647}`` browser id for ``host``."""
    created = _now_ms() if now_ms is None else now_ms
    number = (rng or _SYSTEM_RANDOM).randint(0, FBP_RANDOM_MAX)
    return f"fb.{subdomain_index(host)}.{created}.{number}"


# ---------------------------------------------------------------------------
# Hosts, eTLD+1 and the subdomain index


@lru_cache(maxsize=1)
def _public_suffix_list() -> PublicSuffixList:
    # Includes the list's private section (github.io, herokuapp.com...), as
    # browsers do when they decide which Domain a cookie may take.
    return PublicSuffixList()


def _bare_host(host: str) -> str:
    """Lowercase host without scheme, port, brackets or trailing dot."""
    host = host.strip().lower()
    if "://" in host:
        host = urlsplit(host).netloc
    host = host.rsplit("@", 1)[-1]
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=4096)
def etld_plus_one(host: str) -> str | None:
    """The registrable domain of ``host`` (``a.b.example.co.uk`` -> ``example.co.uk``).

    ``None`` for IP literals, ``localhost``, single-label hosts and public
    suffixes themselves: no cookie ``Domain`` can be set for those.
    """
    bare = _bare_host(host)
    if not bare or _is_ip_literal(bare):
        return None
    try:
        ascii_host = bare.encode("idna").decode("ascii") if not bare.isascii() else bare
    except UnicodeError:
        return None
    registrable: str | None = _public_suffix_list().privatesuffix(ascii_host)
    return registrable


def subdomain_index(host: str) -> int:
    """Meta's ``subdomain_index``: dots in the eTLD+1 (``example.com`` -> 1), 0 without one."""
    registrable = etld_plus_one(host)
    return 0 if registrable is None else registrable.count(".")


# ---------------------------------------------------------------------------
# Cookies to set


@dataclass(frozen=True, slots=True)
class CookieToSet:
    """A first-party cookie the caller should write with ``Set-Cookie``.

    Construction refuses names and values that could break out of the header
    (``;``, ``,``, CR, LF, other control characters, whitespace, quotes).
    """

    name: str
    value: str
    domain: str | None
    max_age: int
    path: str = "/"
    secure: bool = False
    same_site: str = "Lax"

    def __post_init__(self) -> None:
        if not _COOKIE_NAME_RE.fullmatch(self.name):
            raise ValueError("cookie name must be an RFC 6265 token")
        if not _COOKIE_OCTETS_RE.fullmatch(self.value):
            raise ValueError(f"cookie {self.name} value holds characters not allowed in a cookie")
        for attribute in (self.domain or "", self.path):
            if _UNSAFE_COOKIE_VALUE_RE.search(attribute):
                raise ValueError(f"cookie {self.name} domain/path holds unsafe characters")
        if self.same_site not in ("Lax", "Strict", "None"):
            raise ValueError("same_site must be Lax, Strict or None")

    def header_value(self) -> str:
        """The full ``Set-Cookie`` header value."""
        parts = [f"{self.name}={self.value}"]
        if self.domain:
            parts.append(f"Domain={self.domain}")
        parts.append(f"Path={self.path}")
        parts.append(f"Max-Age={self.max_age}")
        parts.append(f"SameSite={self.same_site}")
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)


# ---------------------------------------------------------------------------
# Whole request


@dataclass
class BrowserContext:
    """What a web request tells us about the browser, ready for ``user_data``."""

    fbc: str | None
    fbp: str | None
    client_ip_address: str | None
    client_user_agent: str | None
    event_source_url: str | None
    referrer_url: str | None
    cookies_to_set: list[CookieToSet] = field(default_factory=list)

    def user_data(self) -> dict[str, str]:
        """The ``user_data`` keys this context fills (unset ones left out)."""
        pairs = {
            "fbc": self.fbc,
            "fbp": self.fbp,
            "client_ip_address": self.client_ip_address,
            "client_user_agent": self.client_user_agent,
        }
        return {key: value for key, value in pairs.items() if value}


def _safe_cookie(cookies: Mapping[str, str], name: str) -> str | None:
    value = cookies.get(name)
    if not isinstance(value, str) or not value or _UNSAFE_COOKIE_VALUE_RE.search(value):
        return None
    return value


def _safe_url(url: str | None) -> str | None:
    """``url`` if it is an absolute http(s) URL without whitespace or control characters."""
    return url if _safe_parts(url) is not None else None


def _safe_parts(url: str | None) -> SplitResult | None:
    """``urlsplit(url)`` when :func:`_safe_url` accepts ``url``, else ``None``: one parse
    that :func:`from_request` reads the host and the query of."""
    if not url or _UNSAFE_URL_RE.search(url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts


def _fbclid(url: str | None) -> str | None:
    if not url:
        return None
    try:
        query = urlsplit(url).query
    except ValueError:
        return None
    found = _query_fbclid(query)
    return None if found is None else found[0]


def _query_fbclid(query: str) -> tuple[str, bool] | None:
    """The usable ``fbclid`` of a query string and whether it already is an ``fbc`` value
    (else it is a bare click id), or ``None``."""
    if "fbclid" not in query and "%" not in query:  # parse_qs would find no such name
        return None
    try:
        values = parse_qs(query).get("fbclid")
    except ValueError:
        return None
    if not values:
        return None
    candidate = values[0]
    if parse_fbc(candidate) is not None:
        return candidate, True
    if _CLICK_ID_RE.fullmatch(candidate):
        return candidate, False
    return None


def _hostname(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _resolve_fbc(
    existing: ParsedClickCookie | None, found: tuple[str, bool] | None, host: str, now_ms: int
) -> tuple[str | None, bool]:
    """The ``fbc`` to use and whether it is new (the cookie must be written); ``found`` is
    :func:`_query_fbclid`'s answer, already checked, so what :func:`build_fbc` would
    answer is built here without checking it again."""
    if found is None:
        return (existing.raw if existing else None), False
    fbclid, is_fbc = found
    if existing is not None and (existing.payload == fbclid or existing.raw == fbclid):
        return existing.raw, False
    if is_fbc:
        return fbclid, True
    return f"fb.{subdomain_index(host)}.{now_ms}.{fbclid}", True


def _is_https(url: str, headers: Mapping[str, str], proxied: bool) -> bool:
    if proxied:
        forwarded_proto = _header(headers, "x-forwarded-proto")
        if forwarded_proto:
            return forwarded_proto.split(",")[0].strip().lower() == "https"
    return url.lower().startswith("https://")


def _cookie_domain(page_host: str, request_host: str | None) -> tuple[bool, str | None]:
    """Whether cookies can be set for the page from this request, and their Domain.

    A beacon to a gateway on another site cannot set first-party cookies for
    the page, so none are proposed then.
    """
    page_domain = etld_plus_one(page_host)
    if request_host is None:
        return True, page_domain
    if page_domain is None:
        # IP, localhost: only a host-only cookie from that very host works.
        return _bare_host(request_host) == _bare_host(page_host), None
    return page_domain == etld_plus_one(request_host), page_domain


def from_request(
    *,
    url: str,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    remote_addr: str | None,
    trusted_proxies: Sequence[str] = (),
    page_url: str | None = None,
    page_referrer: str | None = None,
    now_ms: int | None = None,
    refresh_existing: bool = True,
    rng: random.Random | None = None,
) -> BrowserContext:
    """Everything the browser tells us about itself in one request.

    ``url`` is the request URL.  For a beacon it is the gateway's
    ``/v1/collect``; then pass ``page_url`` (from the body, or the ``Referer``
    header) and ``page_referrer`` (the page's ``document.referrer``): the page
    URL gives ``event_source_url``, ``fbclid`` and the cookie domain.  Without
    ``page_url`` the request URL is the page and ``Referer`` its referrer.

    ``refresh_existing`` re-emits existing valid cookies: a server-set cookie
    lives its full 90 days where browsers cap script-set ones (Safari ITP).
    """
    now = _now_ms() if now_ms is None else now_ms
    # Each URL is split once (what _safe_url, _hostname and _fbclid would each do again).
    page_text = page_url if page_url is not None else url
    page_parts = _safe_parts(page_text)
    page = page_text if page_parts is not None else None
    referrer_text = page_referrer if page_url is not None else _header(headers, "referer")
    referrer_parts = _safe_parts(referrer_text)
    referrer = referrer_text if referrer_parts is not None else None
    request_host = _hostname(url)
    # A safe page URL always has a host name.
    page_host = (page_parts.hostname if page_parts is not None else None) or request_host or ""

    fbclid = None
    for parts in (page_parts, referrer_parts):
        if parts is not None and (fbclid := _query_fbclid(parts.query)) is not None:
            break
    fbc, fbc_is_new = _resolve_fbc(
        parse_fbc(_safe_cookie(cookies, FBC_COOKIE)), fbclid, page_host, now
    )
    existing_fbp = parse_fbp(_safe_cookie(cookies, FBP_COOKIE))
    fbp = existing_fbp.raw if existing_fbp else mint_fbp(page_host, now_ms=now, rng=rng)

    networks = _trusted_networks(tuple(trusted_proxies))
    peer = _parse_ip(remote_addr)
    proxied = peer is not None and _is_trusted(peer, networks)
    can_set, domain = _cookie_domain(page_host, request_host)
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


def _parse_cookie_header(header: str) -> dict[str, str]:
    """``a=1; b=2`` -> dict; first occurrence wins (the most specific path comes first)."""
    cookies: dict[str, str] = {}
    for pair in header.split(";"):
        name, sep, value = pair.strip().partition("=")
        if sep and name and name not in cookies:
            cookies[name] = value.strip()
    return cookies


def _asgi_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    """Header dict from an ASGI scope; repeated list headers joined as HTTP allows."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers") or ():
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name in headers:
            joiner = "; " if name == "cookie" else ", "
            headers[name] = headers[name] + joiner + value
        else:
            headers[name] = value
    return headers


def _asgi_url(scope: Mapping[str, Any], headers: Mapping[str, str]) -> str:
    scheme = scope.get("scheme") or "http"
    host = headers.get("host") or headers.get(":authority")
    if not host:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else "localhost"
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope.get("path") or "/"
    query = (scope.get("query_string") or b"").decode("latin-1")
    return f"{scheme}://{host}{path}" + (f"?{query}" if query else "")


def from_asgi_scope(
    scope: Mapping[str, Any],
    *,
    trusted_proxies: Sequence[str] = (),
    page_url: str | None = None,
    page_referrer: str | None = None,
    now_ms: int | None = None,
) -> BrowserContext:
    """:func:`from_request` fed from an ASGI HTTP scope (Starlette's ``request.scope``)."""
    headers = _asgi_headers(scope)
    client = scope.get("client")
    return from_request(
        url=_asgi_url(scope, headers),
        headers=headers,
        cookies=_parse_cookie_header(headers.get("cookie", "")),
        remote_addr=client[0] if client else None,
        trusted_proxies=trusted_proxies,
        page_url=page_url,
        page_referrer=page_referrer,
        now_ms=now_ms,
    )


def request_address(
    remote_addr: str | None, headers: Mapping[str, str], trusted_proxies: Sequence[str] = ()
) -> str | None:
    """The address of the client behind a request, any range, for rate limiting.

    The same proxy rules as :func:`client_ip` (``X-Forwarded-For`` only through
    ``trusted_proxies``), without the ``_fbi`` cookie (the client writes it) and
    without dropping private or loopback addresses.
    """
    address = _request_ip(remote_addr, headers, _trusted_networks(tuple(trusted_proxies)))
    return str(address) if address is not None else None


UNKNOWN_ADDRESS = "unknown"


def address_key(
    remote_addr: str | None, headers: Mapping[str, str], trusted_proxies: Sequence[str]
) -> str:
    """Whom a rate limit or the dashboard's login throttle counts a request against: the
    client's address (:func:`request_address`), an IPv6 one by /64, the block one
    subscriber gets, so rotating addresses inside it does not make a new client.

    Private ranges are included: a gateway behind a private network still tells its
    clients apart.
    """
    address = request_address(remote_addr, headers, trusted_proxies)
    if address is None:
        return UNKNOWN_ADDRESS
    return _address_block(address)


@lru_cache(maxsize=4096)
def _address_block(address: str) -> str:
    parsed = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return address
