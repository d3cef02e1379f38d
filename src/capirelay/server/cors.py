"""CORS for the browser beacon: allowed per pixel (``allowed_origins``).

A preflight cannot name the pixel (the body is not sent), so it is answered for
any origin some pixel allows; the POST itself is then checked against its own
pixel.  A request without ``Origin`` is not a cross-site browser request and is
served (CORS is a browser protection, not authentication).  Credentials are
allowed so the ``_fbp``/``_fbc`` cookies flow, which rules out ``*`` in the
answer: the origin is echoed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from starlette.responses import Response

from capirelay.config import PixelSettings, Settings
from capirelay.server.http import JSONResponse

__all__ = [
    "BeaconOrigins",
    "cors_headers",
    "origin_allowed",
    "preflight",
]

_CORS_METHODS = "POST, OPTIONS"
_CORS_MAX_AGE = "600"


def preflight(origins: BeaconOrigins, origin: str | None) -> Response:
    """The answer to ``OPTIONS``: 204 with the CORS headers, or 403 for an origin no pixel
    allows (``origins``: the gateway's, built from its settings at start)."""
    if not origins.allows(origin):
        return JSONResponse(
            {
                "error": {
                    "code": "origin_not_allowed",
                    "message": "this origin may not send beacons; "
                    "add it to allowed_origins of the pixel",
                }
            },
            403,
        )
    headers = cors_headers(origin)
    headers["access-control-allow-methods"] = _CORS_METHODS
    # The snippet sends one header of its own; what else a preflight asks for is not
    # granted (it was echoed back, credentials allowed).
    headers["access-control-allow-headers"] = "content-type"
    headers["access-control-max-age"] = _CORS_MAX_AGE
    return Response(status_code=204, headers=headers)


def _normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


@functools.lru_cache(maxsize=256)
def _allowed(origins: tuple[str, ...]) -> tuple[bool, frozenset[str]]:
    """A pixel's ``allowed_origins``: whether one is ``*``, and the set of them normalized
    (keyed by the list's contents, so a changed list is a new entry, never a stale one)."""
    return "*" in origins, frozenset(_normalize_origin(allowed) for allowed in origins)


def origin_allowed(pixel: PixelSettings, origin: str) -> bool:
    anything, allowed = _allowed(tuple(pixel.allowed_origins))
    return anything or _normalize_origin(origin) in allowed


class BeaconOrigins:
    """Every origin some pixel allows, as one set: the gateway builds it when it starts
    (with the rest of what it derives from its settings), so the preflight and every
    beacon ask one set instead of each pixel in turn (100 pixels cost 110-130 µs a
    beacon, and as much for each preflight of an origin none of them allows)."""

    __slots__ = ("_anything", "_origins")

    def __init__(self, pixels: Iterable[PixelSettings]) -> None:
        anything, origins = False, set[str]()
        for pixel in pixels:
            any_origin, allowed = _allowed(tuple(pixel.allowed_origins))
            anything = anything or any_origin
            origins |= allowed
        self._anything = anything
        self._origins = frozenset(origins)

    @classmethod
    def from_settings(cls, settings: Settings) -> BeaconOrigins:
        return cls(settings.pixels.values())

    def allows(self, origin: str | None) -> bool:
        """Whether some pixel allows ``origin`` (never a request without one)."""
        if not origin:
            return False
        return self._anything or _normalize_origin(origin) in self._origins


def cors_headers(origin: str | None) -> dict[str, str]:
    return {
        "access-control-allow-origin": origin or "",
        "access-control-allow-credentials": "true",
        "vary": "Origin",
    }
