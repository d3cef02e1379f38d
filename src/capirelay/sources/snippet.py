"""``GET /capirelay.js``: the browser snippet, served from the gateway itself.

The script (``browser.js`` beside this file) is read once at import and
served as-is: no build step, no templating, so the bytes the tests check are
the bytes browsers run.  Its ETag is a hash of those bytes, so a new release
is picked up as soon as a cache revalidates; browsers may reuse it for an
hour without asking (a snippet fix should not take a day to reach pages).
"""

from __future__ import annotations

import hashlib
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["SNIPPET_CACHE_CONTROL", "SNIPPET_ETAG", "SNIPPET_PATH", "get_snippet", "snippet_source"]

SNIPPET_PATH = "/capirelay.js"
SNIPPET_CACHE_CONTROL = "public, max-age=3600"
_MEDIA_TYPE = "application/javascript; charset=utf-8"


def snippet_source() -> bytes:
    """The snippet's bytes as shipped in the package."""
    return resources.files("capirelay.sources").joinpath("browser.js").read_bytes()


_SOURCE = snippet_source()
SNIPPET_ETAG = '"' + hashlib.sha256(_SOURCE).hexdigest()[:32] + '"'


def _etag_matches(if_none_match: str | None) -> bool:
    if not if_none_match:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in candidates or SNIPPET_ETAG in candidates


async def get_snippet(request: Request) -> Response:
    headers = {
        "cache-control": SNIPPET_CACHE_CONTROL,
        "etag": SNIPPET_ETAG,
        "x-content-type-options": "nosniff",
    }
    if _etag_matches(request.headers.get("if-none-match")):
        return Response(status_code=304, headers=headers)
    return Response(_SOURCE, media_type=_MEDIA_TYPE, headers=headers)
