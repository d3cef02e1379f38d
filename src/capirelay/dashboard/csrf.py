"""CSRF protection for every state-changing dashboard request (replay, purge, logout, login).

Synchronizer tokens without server state: the token is HMAC-SHA256 over the
principal's binding (its session nonce, or a constant per credential for
Bearer/basic callers) under the dashboard's signing key.  A page embeds it
in each form; the POST must send it back.  Another site can neither read the
page (same-origin policy, ``X-Frame-Options: DENY``) nor compute the token
(it lacks the key), and a token from one session is useless in another.

HTTP basic credentials are sent by browsers automatically, exactly like a
cookie, so basic callers need the token too; Bearer callers are held to the
same rule so that every POST has one behaviour.

The login form (which has no session yet) uses a double-submit pair instead:
a random pre-login cookie and the form field ``HMAC(key, "login|" + cookie)``.

As defence in depth a request whose ``Origin`` header names another origin
is refused regardless of the token (dashboard pages send ``Referrer-Policy:
same-origin`` so that browsers name the real origin on their own forms).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from starlette.requests import Request

from capirelay.dashboard.auth import Principal

__all__ = [
    "CSRF_FIELD",
    "LOGIN_COOKIE",
    "csrf_token",
    "login_token",
    "same_origin",
    "verify_csrf",
    "verify_login_token",
]

CSRF_FIELD: Final = "csrf_token"
LOGIN_COOKIE: Final = "capirelay_ui_login"


def csrf_token(key: bytes, principal: Principal) -> str:
    return _sign(key, f"csrf|{principal.kind}|{principal.binding}")


def verify_csrf(key: bytes, principal: Principal, submitted: str | None) -> bool:
    if not submitted:
        return False
    return hmac.compare_digest(submitted.encode(), csrf_token(key, principal).encode())


def login_token(key: bytes, login_nonce: str) -> str:
    return _sign(key, f"login|{login_nonce}")


def verify_login_token(key: bytes, login_nonce: str | None, submitted: str | None) -> bool:
    if not login_nonce or not submitted:
        return False
    return hmac.compare_digest(submitted.encode(), login_token(key, login_nonce).encode())


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from a page on another origin."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        # No usable claim (non-browser client, or a privacy setting): the token decides.
        return True
    own = f"{request.url.scheme}://{request.url.netloc}"
    return origin == own


def _sign(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
