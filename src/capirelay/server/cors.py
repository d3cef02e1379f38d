"""CORS for the browser beacon: allowed per pixel (``allowed_origins``).

A preflight cannot name the pixel (the body is not sent), so it is answered for
any origin some pixel allows; the POST itself is then checked against its own
pixel.  A request without ``Origin`` is not a cross-site browser request and is
served (CORS is a browser protection, not authentication).  Credentials are
allowed so the ``_fbp``/``_fbc`` cookies flow, which rules out ``*`` in the
answer: the origin is echoed.
"""

from __future__ import annotations

from starlette.responses import Response

from capirelay.config import PixelSettings, Settings
from capirelay.server.http import JSONResponse

__all__ = ["cors_headers", "origin_allowed", "origin_allowed_anywhere", "preflight"]

_CORS_METHODS = "POST, OPTIONS"
_CORS_MAX_AGE = "600"


def preflight(settings: Settings, origin: str | None, requested_headers: str | None) -> Response:
    """The answer to ``OPTIONS``: 204 with the CORS headers, or 403 for an unknown origin."""
    if not origin_allowed_anywhere(settings, origin):
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
    headers["access-control-allow-headers"] = requested_headers or "content-type"
    headers["access-control-max-age"] = _CORS_MAX_AGE
    return Response(status_code=204, headers=headers)


def _normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def origin_allowed(pixel: PixelSettings, origin: str) -> bool:
    wanted = _normalize_origin(origin)
    return any(
        allowed == "*" or _normalize_origin(allowed) == wanted for allowed in pixel.allowed_origins
    )


def origin_allowed_anywhere(settings: Settings, origin: str | None) -> bool:
    if not origin:
        return False
    return any(origin_allowed(pixel, origin) for pixel in settings.pixels.values())


def cors_headers(origin: str | None) -> dict[str, str]:
    return {
        "access-control-allow-origin": origin or "",
        "access-control-allow-credentials": "true",
        "vary": "Origin",
    }
