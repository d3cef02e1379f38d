"""Dashboard credentials, sessions and CSRF tokens as tables (the HTTP side is in test_security)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from starlette.requests import Request

from capirelay.config import DashboardSettings
from capirelay.dashboard.auth import (
    SESSION_COOKIE,
    SESSION_TTL_SECONDS,
    DashboardAuth,
    Principal,
    dashboard_enabled,
)
from capirelay.dashboard.csrf import (
    csrf_token,
    login_token,
    same_origin,
    verify_csrf,
    verify_login_token,
)

T0 = 1_790_000_000.0
TOKEN = "admin-token-abc"
BASIC = {"basic_user": "ops", "basic_password": "pw"}


def _request(
    headers: dict[str, str] | None = None, cookies: dict[str, str] | None = None
) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if cookies:
        raw.append((b"cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()).encode()))
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/ui/",
        "headers": raw,
        "scheme": "http",
        "server": ("gw.example", 80),
        "query_string": b"",
    }
    return Request(scope)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("settings", "enabled"),
    [
        ({}, False),
        ({"admin_token": TOKEN}, True),
        ({"basic_user": "ops"}, False),
        ({"basic_password": "pw"}, False),
        ({"basic_user": "ops", "basic_password": "pw"}, True),
    ],
)
def test_dashboard_enabled(settings: dict[str, Any], enabled: bool) -> None:
    assert dashboard_enabled(DashboardSettings(**settings)) is enabled


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("settings", "authorization", "expected"),
    [
        ({"admin_token": TOKEN}, f"Bearer {TOKEN}", Principal("bearer", "bearer")),
        ({"admin_token": TOKEN}, f"bearer {TOKEN}", Principal("bearer", "bearer")),
        ({"admin_token": TOKEN}, "Bearer admin-token-abd", None),
        ({"admin_token": TOKEN}, "Bearer ", None),
        ({"admin_token": TOKEN}, _basic("ops", TOKEN), None),
        (BASIC, _basic("ops", "pw"), Principal("basic", "basic:ops")),
        (BASIC, _basic("ops", "pw:x"), None),
        (BASIC, _basic("opsx", "pw"), None),
        (BASIC, "Basic b3Bz", None),  # "ops", no colon
        (BASIC, "Basic ***", None),
        (BASIC, "Bearer pw", None),
        ({"admin_token": {"env": "CAPIRELAY_NO_SUCH_VAR_FOR_TEST"}}, "Bearer ", None),
    ],
)  # fmt: skip
def test_authenticate_headers(
    settings: dict[str, Any], authorization: str, expected: Principal | None
) -> None:
    auth = DashboardAuth(DashboardSettings(**settings))
    assert auth.authenticate(_request({"Authorization": authorization})) == expected


def test_session_round_trip_and_expiry() -> None:
    clock = Clock()
    auth = DashboardAuth(DashboardSettings(admin_token=TOKEN), clock=clock)
    issued = auth.new_session()
    assert issued is not None
    cookie, principal = issued
    assert TOKEN not in cookie
    assert auth.authenticate(_request(cookies={SESSION_COOKIE: cookie})) == principal
    clock.now += SESSION_TTL_SECONDS + 1
    assert auth.authenticate(_request(cookies={SESSION_COOKIE: cookie})) is None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda c: c + "0",
        lambda c: c.replace(".", "-", 1),
        lambda c: str(int(c.split(".")[0]) + 1) + c[c.index(".") :],
        lambda c: c.split(".")[0] + ".othernonce." + c.split(".")[2],
        lambda c: "",
        lambda c: "a.b.c",
        # str.isdigit() takes these; int() did not (a 500 for anyone who sent them):
        lambda c: "\u00b2" + c[c.index(".") :],
        lambda c: "1" * 5000 + c[c.index(".") :],
        lambda c: "\u0661\u0662" + c[c.index(".") :],
    ],
    ids=[
        "mac",
        "shape",
        "expiry",
        "nonce",
        "empty",
        "garbage",
        "superscript",
        "5000-digits",
        "arabic-indic",
    ],
)
def test_tampered_sessions_are_refused(mangle: Any) -> None:
    auth = DashboardAuth(DashboardSettings(admin_token=TOKEN), clock=Clock())
    issued = auth.new_session()
    assert issued is not None
    assert auth.authenticate(_request(cookies={SESSION_COOKIE: mangle(issued[0])})) is None


def test_rotating_the_admin_token_ends_sessions() -> None:
    old = DashboardAuth(DashboardSettings(admin_token=TOKEN), clock=Clock())
    issued = old.new_session()
    assert issued is not None
    rotated = DashboardAuth(DashboardSettings(admin_token="a-new-token"), clock=Clock())
    assert rotated.authenticate(_request(cookies={SESSION_COOKIE: issued[0]})) is None


def test_basic_only_setups_issue_no_sessions() -> None:
    auth = DashboardAuth(DashboardSettings(basic_user="ops", basic_password="pw"))
    assert auth.new_session() is None
    assert not auth.has_login_form


KEY = b"k" * 32


@pytest.mark.parametrize(
    ("issued_for", "checked_for", "mutate", "ok"),
    [
        (Principal("session", "n1"), Principal("session", "n1"), False, True),
        (Principal("session", "n1"), Principal("session", "n2"), False, False),
        (Principal("bearer", "bearer"), Principal("session", "bearer"), False, False),
        (Principal("session", "n1"), Principal("session", "n1"), True, False),
    ],
)
def test_csrf_tokens_are_bound_to_their_principal(
    issued_for: Principal, checked_for: Principal, mutate: bool, ok: bool
) -> None:
    token = csrf_token(KEY, issued_for)
    if mutate:
        token = token[:-1] + ("0" if token[-1] != "0" else "1")
    assert verify_csrf(KEY, checked_for, token) is ok
    assert verify_csrf(KEY, checked_for, None) is False
    assert verify_csrf(b"other-key", issued_for, csrf_token(KEY, issued_for)) is False


@pytest.mark.parametrize(
    ("nonce", "token_for", "ok"),
    [("abc", "abc", True), ("abc", "abd", False), (None, "abc", False), ("", "", False)],
)
def test_login_double_submit(nonce: str | None, token_for: str, ok: bool) -> None:
    assert verify_login_token(KEY, nonce, login_token(KEY, token_for)) is ok


@pytest.mark.parametrize(
    ("origin", "ok"),
    [(None, True), ("null", True), ("http://gw.example", True), ("https://gw.example", False),
     ("http://evil.example", False), ("http://gw.example:8080", False)],
)  # fmt: skip
def test_same_origin(origin: str | None, ok: bool) -> None:
    headers = {"host": "gw.example"} | ({"origin": origin} if origin else {})
    assert same_origin(_request(headers)) is ok


@pytest.mark.parametrize(
    ("settings", "authorization"),
    [
        ({"admin_token": TOKEN}, "Bearer x"),
        ({"admin_token": TOKEN}, f"Bearer {TOKEN}-and-much-longer"),
        (BASIC, "Basic " + base64.b64encode(b"o:a-much-longer-password").decode()),
        (BASIC, "Basic " + base64.b64encode(b"ops:pw").decode()),
    ],
)
def test_credential_compares_do_not_leak_the_secret_length(
    settings: dict[str, Any], authorization: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # compare_digest returns early when lengths differ: both sides must be digests.
    import hmac

    real = hmac.compare_digest
    lengths: list[tuple[int, int]] = []

    def recording(a: bytes, b: bytes) -> bool:
        lengths.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    DashboardAuth(DashboardSettings(**settings)).authenticate(
        _request({"authorization": authorization})
    )
    assert lengths
    assert set(lengths) == {(32, 32)}
