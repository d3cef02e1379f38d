"""Dashboard sessions that end at logout, failed-login throttling, and who did what.

Session cookies are stateless HMAC tokens (:mod:`capirelay.dashboard.auth`); what a
stateless cookie cannot do is stop working before it expires.  Logging out
therefore writes the session's id (SHA-256 of its nonce, never the cookie) to the
storage every replica shares (:meth:`Outbox.revoke_session`), and every dashboard
request made with a session checks it, so a logged-out cookie is refused by every
replica, also after restarts, until it would have expired anyway.

:class:`LoginThrottle` slows password guessing: after :data:`MAX_FAILURES` wrong
tokens from one client within :data:`WINDOW_SECONDS`, that client's further
attempts are answered 429 with ``Retry-After`` until the oldest failure leaves the
window.  The client is the socket peer, or the first untrusted hop of
``X-Forwarded-For`` behind ``trusted_proxies``, an IPv6 one by /64 (the key the
rate limits use, :func:`capirelay.browser_ids.address_key`).  It is per process (a replica
counts its own clients' failures): an attacker spread over replicas gets N times
the budget, still a handful of guesses a minute.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from starlette.requests import Request

from capirelay.browser_ids import address_key
from capirelay.dashboard.auth import SESSION_TTL_SECONDS, Principal
from capirelay.outbox import Outbox

__all__ = [
    "MAX_FAILURES",
    "WINDOW_SECONDS",
    "LoginThrottle",
    "actor_of",
    "client_key",
    "is_revoked",
    "revoke",
]

MAX_FAILURES = 5
WINDOW_SECONDS = 60.0
MAX_TRACKED_CLIENTS = 10_000


def session_hash(principal: Principal) -> str:
    return hashlib.sha256(f"capirelay-session|{principal.binding}".encode()).hexdigest()


def actor_of(principal: Principal) -> str:
    """Who, for the audit trail: the credential kind, never a secret."""
    if principal.kind == "session":
        return f"session {session_hash(principal)[:12]}"
    if principal.kind == "bearer":
        return "admin token"
    return principal.binding  # "basic:<user>"


async def is_revoked(outbox: Outbox, principal: Principal) -> bool:
    return principal.kind == "session" and await outbox.session_revoked(session_hash(principal))


async def revoke(outbox: Outbox, principal: Principal, *, now: float) -> None:
    """End a login session on every replica (a no-op for header credentials)."""
    if principal.kind == "session":
        await outbox.revoke_session(
            session_hash(principal), expires_at=now + SESSION_TTL_SECONDS, now=now
        )


def client_key(request: Request, trusted_proxies: Sequence[str]) -> str:
    """Whom failed logins are counted against: the rate limits' key, so an IPv6 client
    is one client per /64 and rotating addresses inside it does not reset the count."""
    peer = request.client.host if request.client else None
    return address_key(peer, request.headers, trusted_proxies)


class LoginThrottle:
    """Failed logins per client in a sliding window; see the module docstring."""

    def __init__(
        self,
        *,
        max_failures: int = MAX_FAILURES,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str) -> float | None:
        """Seconds this client must wait before trying again, ``None`` when it may try."""
        failures = self._recent(client)
        if len(failures) < self.max_failures:
            return None
        return max(failures[0] + self.window - self._clock(), 0.001)

    def failed(self, client: str) -> None:
        failures = self._recent(client)
        failures.append(self._clock())
        self._failures[client] = failures
        self._failures.move_to_end(client)
        while len(self._failures) > MAX_TRACKED_CLIENTS:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)

    def _recent(self, client: str) -> deque[float]:
        failures = self._failures.get(client, deque())
        cutoff = self._clock() - self.window
        while failures and failures[0] <= cutoff:
            failures.popleft()
        return failures
