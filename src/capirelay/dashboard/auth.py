"""Who may see the dashboard: the admin token (Bearer header or a login session) or HTTP basic.

Credentials come from ``Settings.dashboard`` and are resolved at every request
(``Secret.resolve``), so a rotated token takes effect without a restart and a
secret that cannot be read locks the dashboard instead of opening it.

Sessions are stateless: the login form sets a cookie
``<expires>.<nonce>.<mac>`` where ``mac`` is HMAC-SHA256 over the expiry and
the nonce under a key derived from the admin token.  Nothing is stored on the
server, so sessions survive restarts and work across replicas, and rotating
the admin token logs every session out.  The cookie is ``HttpOnly`` (no
script reads it), ``SameSite=Strict`` (no other site's page sends it) and
``Secure`` when the dashboard is served over HTTPS.

Every comparison of a secret is constant-time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from starlette.requests import Request

from capirelay.config import DashboardSettings

__all__ = [
    "SESSION_COOKIE",
    "SESSION_TTL_SECONDS",
    "DashboardAuth",
    "Principal",
    "dashboard_enabled",
]

SESSION_COOKIE: Final = "capirelay_ui"
SESSION_TTL_SECONDS: Final = 12 * 3600
_KEY_LABEL: Final = b"capirelay-dashboard-v1"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    ``binding`` is what its CSRF token is bound to: the session nonce for a
    login session, a constant per credential otherwise.
    """

    kind: Literal["session", "bearer", "basic"]
    binding: str


def dashboard_enabled(settings: DashboardSettings) -> bool:
    """True when a credential is configured (the dashboard is not even routed otherwise)."""
    return settings.admin_token is not None or (
        settings.basic_user is not None and settings.basic_password is not None
    )


class DashboardAuth:
    """Checks requests against the configured credentials and issues login sessions."""

    def __init__(
        self, settings: DashboardSettings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._settings = settings
        self._clock = clock

    @property
    def has_login_form(self) -> bool:
        """The login form exists only for the admin token; basic auth uses the browser's prompt."""
        return self._settings.admin_token is not None

    def signing_key(self) -> bytes | None:
        """The HMAC key for sessions and CSRF tokens; ``None`` when no credential resolves."""
        secret = self._admin_token() or self._basic_password()
        if secret is None:
            return None
        return hmac.new(secret.encode(), _KEY_LABEL, hashlib.sha256).digest()

    def authenticate(self, request: Request) -> Principal | None:
        """The caller behind ``request``, or ``None`` when it shows no valid credential.

        A valid login session decides first, whatever ``Authorization`` header comes
        with it: checked first, the header let a session holder try tokens without limit
        (the throttle does not count a caller a session lets in) and read from the page
        whether one was right (a reviewer's find).  Headers are checked without a session.
        """
        session = self._session(request.cookies.get(SESSION_COOKIE))
        if session is not None:
            return session
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and self.check_admin_token(value.strip()):
            return Principal("bearer", "bearer")
        if scheme.lower() == "basic":
            user = self._check_basic(value.strip())
            if user is not None:
                return Principal("basic", f"basic:{user}")
        return None

    def presents_credential(self, request: Request) -> bool:
        """True when ``request`` carries a token or password of its own for a scheme this
        dashboard accepts (``Authorization: Bearer`` with an admin token configured,
        ``Basic`` with basic auth configured): a guess the login throttle counts.  A
        header for a scheme the dashboard does not use (a proxy's own basic auth in front
        of it, forwarded on every request) is nobody's guess."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if not value.strip():
            return False
        scheme = scheme.lower()
        if scheme == "bearer":
            return self._settings.admin_token is not None
        if scheme == "basic":
            return self._settings.basic_user is not None
        return False

    def check_admin_token(self, submitted: str) -> bool:
        expected = self._admin_token()
        if expected is None or not submitted:
            return False
        return _same_secret(submitted, expected)

    def new_session(self) -> tuple[str, Principal] | None:
        """A fresh session cookie value and its principal (``None`` when locked)."""
        key = self.signing_key()
        if key is None or self._admin_token() is None:
            return None
        expires = int(self._clock()) + SESSION_TTL_SECONDS
        nonce = secrets.token_urlsafe(18)
        return f"{expires}.{nonce}.{_mac(key, expires, nonce)}", Principal("session", nonce)

    # ---------------------------------------------------------------- helpers

    def _admin_token(self) -> str | None:
        token = self._settings.admin_token
        return token.resolve() if token is not None else None

    def _basic_password(self) -> str | None:
        if self._settings.basic_user is None or self._settings.basic_password is None:
            return None
        return self._settings.basic_password.resolve()

    def _check_basic(self, encoded: str) -> str | None:
        expected_user = self._settings.basic_user
        expected_password = self._basic_password()
        if expected_user is None or expected_password is None:
            return None
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        # Both compares always run, so timing tells nothing about which half was wrong.
        user_ok = _same_secret(user, expected_user)
        password_ok = _same_secret(password, expected_password)
        return expected_user if sep and user_ok and password_ok else None

    def _session(self, cookie: str | None) -> Principal | None:
        key = self.signing_key()
        if not cookie or key is None or self._admin_token() is None:
            return None
        parts = cookie.split(".")
        if len(parts) != 3 or _EXPIRY.fullmatch(parts[0]) is None:
            # str.isdigit() also takes "²" and digit strings longer than int() reads:
            # a forged cookie was a 500 for anyone.
            return None
        expires_text, nonce, mac = parts
        expires = int(expires_text)
        if not hmac.compare_digest(mac.encode(), _mac(key, expires, nonce).encode()):
            return None
        if expires <= self._clock():
            return None
        return Principal("session", nonce)


# A session's expiry: Unix seconds, ASCII digits, never longer than 12 of them.
_EXPIRY: Final = re.compile(r"[0-9]{1,12}")


def _mac(key: bytes, expires: int, nonce: str) -> str:
    message = f"session|{expires}|{nonce}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _same_secret(submitted: str, expected: str) -> bool:
    """Constant-time equality that does not leak the expected secret's length either:
    ``compare_digest`` returns early on a length mismatch, so both sides are hashed to
    32 bytes first (as :mod:`capirelay.server.auth` does)."""
    return hmac.compare_digest(
        hashlib.sha256(submitted.encode()).digest(), hashlib.sha256(expected.encode()).digest()
    )
