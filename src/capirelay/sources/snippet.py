"""``GET /capirelay.js``: the browser snippet, served from the gateway itself.

The script (``browser.js`` beside this file) is read once at import and
served as-is: no build step, no templating, so the bytes the tests check are
the bytes browsers run.  Its ETag is a hash of those bytes, so a new release
is picked up as soon as a cache revalidates; browsers may reuse it for an
hour without asking (a snippet fix should not take a day to reach pages).

What a page pastes (:func:`page_snippet`, printed by ``capirelay init`` and shown
in the README) is two lines: an inline stub, then the ``async`` script tag.  The
stub is Meta's ``fbq`` pattern: until ``capirelay.js`` has loaded,
``window.capirelay`` records each ``init``/``track``/``consent`` call in
``capirelay.q`` (``track`` answers with the event id at once, minting one when
none is given, and records it with the call), so an inline
``capirelay.track(...)`` right after the tag is neither a ``ReferenceError`` nor
lost.  ``capirelay.js`` replays the queue in order when it runs, then takes the
stub's place.  The stub does nothing when the snippet is already there (loaded
synchronously, or pasted twice).
"""

from __future__ import annotations

import hashlib
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

__all__ = [
    "SNIPPET_CACHE_CONTROL",
    "SNIPPET_ETAG",
    "SNIPPET_PATH",
    "SNIPPET_STUB",
    "get_snippet",
    "page_snippet",
    "snippet_source",
]

SNIPPET_PATH = "/capirelay.js"
SNIPPET_CACHE_CONTROL = "public, max-age=3600"
_MEDIA_TYPE = "application/javascript; charset=utf-8"

# ES5, one line to paste.  id(): crypto.randomUUID where the page is a secure context, else
# a v4 UUID from getRandomValues (Math.random where there is no crypto at all).
SNIPPET_STUB = (
    "(function(w){if(w.capirelay)return;var q=[],c=w.capirelay={q:q},r=w.crypto;"
    "function id(){return r&&r.randomUUID?r.randomUUID():"
    '"10000000-1000-4000-8000-100000000000".replace(/[018]/g,function(x){'
    "return(x^(r?r.getRandomValues(new Uint8Array(1))[0]:Math.random()*256)&15>>x/4)"
    ".toString(16)})}"
    'function later(m){return function(){q.push([m,arguments])}}c.init=later("init");'
    'c.consent=later("consent");c.newEventId=id;'
    'c.track=function(n,p,u,o){var i=o&&o.eventId||id();q.push(["track",arguments,i]);'
    "return i}})(window);"
)


def page_snippet(script_url: str, pixel_id: str) -> str:
    """The two lines a page pastes: the stub, then the ``async`` tag for ``script_url``."""
    return (
        f"<script>{SNIPPET_STUB}</script>\n"
        f'<script src="{script_url}" data-pixel-id="{pixel_id}" async></script>'
    )


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
