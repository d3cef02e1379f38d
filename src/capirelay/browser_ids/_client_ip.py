"""The client's IP address: from the socket peer, trusted proxies' ``X-Forwarded-For``, or ``_fbi``.

Part of :mod:`capirelay.browser_ids` (which exports :func:`client_ip`,
:func:`strip_ip_appendix` and :func:`request_address`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from functools import lru_cache

from capirelay.browser_ids._patterns import (
    _IP_APPENDIX_RE,
    _UNSAFE_COOKIE_VALUE_RE,
    _UNSAFE_HEADER_CHARS_RE,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_ip(text: str | None) -> IPAddress | None:
    """An address from an XFF hop or a socket peer; ports and brackets tolerated."""
    if not text:
        return None
    return _parse_ip_text(text)


# Pure and immutable (text in, address object out): a gateway sees the same few peers (its
# proxies) and the same clients again and again, and ipaddress parses slowly.
@lru_cache(maxsize=4096)
def _parse_ip_text(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    if "%" in text:  # zone ids mean nothing off the local link
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def strip_ip_appendix(value: str) -> str:
    """Drop the builder appendix from ``ip.<8-character appendix>`` (as in the ``_fbi`` cookie)."""
    match = _IP_APPENDIX_RE.fullmatch(value)
    if match is not None and _parse_ip(match.group(1)) is not None:
        return match.group(1)
    return value


class TrustedNetworks:
    """The trusted proxies' networks, asked about an address with one set look-up per
    distinct prefix length: ``address in network`` costs about a microsecond per network
    in ipaddress, and a gateway behind a CDN lists its ranges (Cloudflare publishes 22),
    which made finding a beacon's client 30 µs.  The same answers as asking each network
    (an address is never in a network of the other IP version)."""

    __slots__ = ("_prefixes",)

    def __init__(self, networks: tuple[IPNetwork, ...]) -> None:
        # version -> ((bits below the prefix, {network address >> those bits}), ...)
        tables: dict[int, dict[int, set[int]]] = {4: {}, 6: {}}
        for network in networks:
            shift = network.max_prefixlen - network.prefixlen
            prefix = int(network.network_address) >> shift
            tables[network.version].setdefault(shift, set()).add(prefix)
        self._prefixes = {
            version: tuple((shift, frozenset(found)) for shift, found in sorted(table.items()))
            for version, table in tables.items()
        }

    def __contains__(self, address: IPAddress) -> bool:
        value = int(address)
        return any((value >> shift) in found for shift, found in self._prefixes[address.version])


@lru_cache(maxsize=64)
def _trusted_networks(trusted_proxies: tuple[str, ...]) -> TrustedNetworks:
    return TrustedNetworks(
        tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in trusted_proxies)
    )


@lru_cache(maxsize=4096)
def _is_global(address: IPAddress) -> bool:
    """``address.is_global``, which ipaddress recomputes (a walk over its special ranges)."""
    return address.is_global


def _is_trusted(address: IPAddress, networks: TrustedNetworks) -> bool:
    return address in networks


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that also works on a plain dict."""
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if key.lower() == name:
                value = candidate
                break
    if value is None or _UNSAFE_HEADER_CHARS_RE.search(value):
        return None
    return value


def _request_ip(
    remote_addr: str | None, headers: Mapping[str, str], networks: TrustedNetworks
) -> IPAddress | None:
    """The address of whoever connected to the first proxy we trust.

    ``X-Forwarded-For`` is read only when the socket peer is a trusted proxy,
    right to left, skipping trusted hops; the first untrusted hop is the
    client.  Entries left of it were written by the client and are ignored.
    """
    peer = _parse_ip(remote_addr)
    if peer is None or not _is_trusted(peer, networks):
        return peer
    forwarded = _header(headers, "x-forwarded-for")
    if not forwarded:
        return peer
    hops = [hop for hop in (part.strip() for part in forwarded.split(",")) if hop]
    closest: IPAddress = peer
    for hop in reversed(hops):
        address = _parse_ip(hop)
        if address is None:
            return None  # a trusted proxy never writes junk: this hop came from the client
        if not _is_trusted(address, networks):
            return address
        closest = address
    return closest


def client_ip(
    remote_addr: str | None,
    headers: Mapping[str, str],
    trusted_proxies: Sequence[str] = (),
    *,
    fbi_cookie: str | None = None,
    allow_private: bool = False,
) -> str | None:
    """The client IP to send as ``client_ip_address``, or ``None``.

    Priority, as in Meta's Node builder but with the full RFC 6890 special
    ranges (``is_global``): public IPv6 from ``_fbi`` > public IPv6 from the
    request > public IPv4 from ``_fbi`` > public IPv4 from the request.
    Special-range addresses (private, loopback, documentation...) are used only
    with ``allow_private`` (handy on a developer machine); Meta cannot match
    on them.  ``trusted_proxies`` holds IPs or CIDRs.
    """
    networks = _trusted_networks(tuple(trusted_proxies))
    candidates: list[IPAddress] = []
    if fbi_cookie and not _UNSAFE_COOKIE_VALUE_RE.search(fbi_cookie):
        from_cookie = _parse_ip(strip_ip_appendix(fbi_cookie))
        if from_cookie is not None:
            candidates.append(from_cookie)
    from_request_ip = _request_ip(remote_addr, headers, networks)
    if from_request_ip is not None:
        candidates.append(from_request_ip)
    ranked = sorted(
        (c for c in candidates if allow_private or _is_global(c)),
        key=lambda c: (not _is_global(c), c.version != 6),  # stable: cookie before request
    )
    return str(ranked[0]) if ranked else None
