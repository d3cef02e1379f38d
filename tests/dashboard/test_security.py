"""Every ``/ui/`` route refuses callers without a credential, and every action refuses callers
without the CSRF token of their session (or from another origin).  The tables below list every
route; a route added to the dashboard without a row here fails ``test_every_route_is_listed``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.routing import Mount, Route

from capirelay.config import Settings
from capirelay.dashboard import create_dashboard
from capirelay.dashboard.auth import SESSION_COOKIE
from capirelay.metrics import Metrics
from capirelay.server import create_app
from loopback import another_client
from server.conftest import serve_in_thread
from waiting import wait_for

from .conftest import ADMIN_TOKEN, Gateway, csrf_from, dashboard_settings, purchase

PAGES = ["/ui/", "/ui/errors", "/ui/dlq", "/ui/dlq/1", "/ui/test-events", "/ui/quality",
         "/ui/diagnostics",
         "/ui/health", "/ui/search"]  # fmt: skip
ACTIONS = ["/ui/logout", "/ui/dlq/replay", "/ui/dlq/purge", "/ui/dlq/1/replay",
           "/ui/dlq/1/purge"]  # fmt: skip
PUBLIC = {("GET", "/ui/login"), ("POST", "/ui/login"), ("GET", "/ui/static"), ("GET", "/ui")}


def _route_table(settings: Settings) -> set[tuple[str, str]]:
    dashboard = create_dashboard(settings, Metrics())
    assert dashboard is not None
    [mount] = [r for r in dashboard.routes() if isinstance(r, Mount)]
    found = {("GET", "/ui")}  # the relative redirect to /ui/, in front of the mount
    for route in mount.routes:
        path = "/ui" + route.path.replace("{dlq_id:row_id}", "1")
        if isinstance(route, Route):
            found.update((method, path) for method in route.methods or () if method != "HEAD")
        else:
            found.add(("GET", path))
    return found


def test_every_route_is_listed(tmp_path: Path) -> None:
    settings = dashboard_settings(tmp_path / "x.db", "http://127.0.0.1:9")
    listed = {("GET", p) for p in PAGES} | {("POST", p) for p in ACTIONS} | PUBLIC
    assert _route_table(settings) == listed


@pytest.mark.parametrize("path", PAGES)
def test_pages_redirect_anonymous_callers_to_login(gateway: Gateway, path: str) -> None:
    answer = httpx.get(gateway.url + path, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login"


@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer wrong-token",
        f"Bearer {ADMIN_TOKEN}x",
        f"Basic {base64.b64encode(f'admin:{ADMIN_TOKEN}'.encode()).decode()}",
        ADMIN_TOKEN,
    ],
    ids=["wrong-bearer", "longer-bearer", "basic-not-configured", "no-scheme"],
)
def test_pages_refuse_wrong_credentials(gateway: Gateway, path: str, authorization: str) -> None:
    # Each guess from a client address of its own: wrong header credentials count towards
    # the login throttle, per client, and this module's gateway is shared.
    with another_client() as guesser:
        answer = guesser.get(
            gateway.url + path, headers={"Authorization": authorization}, follow_redirects=False
        )
    assert answer.status_code == 303


@pytest.mark.parametrize("path", ACTIONS)
def test_actions_refuse_anonymous_callers(gateway: Gateway, path: str) -> None:
    answer = httpx.post(gateway.url + path, data={"csrf_token": "0" * 64, "confirm": "yes"})
    assert answer.status_code == 401


@pytest.mark.parametrize("path", ACTIONS)
@pytest.mark.parametrize("token", [None, "", "0" * 64], ids=["missing", "empty", "forged"])
def test_actions_refuse_requests_without_the_csrf_token(
    gateway: Gateway, path: str, token: str | None
) -> None:
    with gateway.logged_in() as client:
        data = {"confirm": "yes"} if token is None else {"csrf_token": token, "confirm": "yes"}
        answer = client.post(path, data=data)
        assert answer.status_code == 403
        assert "CSRF" in answer.text


@pytest.mark.parametrize("path", ACTIONS)
def test_actions_refuse_a_token_from_another_session(gateway: Gateway, path: str) -> None:
    with gateway.logged_in() as first, gateway.logged_in() as second:
        token_of_first = csrf_from(first.get("/ui/dlq").text)
        answer = second.post(path, data={"csrf_token": token_of_first, "confirm": "yes"})
        assert answer.status_code == 403


@pytest.mark.parametrize("path", ACTIONS)
def test_actions_refuse_cross_origin_posts_even_with_a_token(gateway: Gateway, path: str) -> None:
    with gateway.logged_in() as client:
        token = csrf_from(client.get("/ui/dlq").text)
        answer = client.post(
            path,
            data={"csrf_token": token, "confirm": "yes"},
            headers={"Origin": "https://evil.example"},
        )
        assert answer.status_code == 403


@pytest.mark.parametrize("path", ACTIONS)
def test_bearer_callers_need_the_csrf_token_too(gateway: Gateway, path: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    refused = httpx.post(gateway.url + path, headers=headers, data={"confirm": "yes"})
    assert refused.status_code == 403
    page = httpx.get(gateway.url + "/ui/dlq", headers=headers)
    token = csrf_from(page.text)
    allowed = httpx.post(
        gateway.url + path, headers=headers, data={"csrf_token": token, "confirm": "yes"}
    )
    assert allowed.status_code == 303


def test_login_needs_its_csrf_pair(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        no_form = client.post("/ui/login", data={"token": ADMIN_TOKEN})
        assert no_form.status_code == 403
        token = csrf_from(client.get("/ui/login").text)
    with httpx.Client(base_url=gateway.url) as other_browser:
        # A token lifted from one browser's login page is useless without that browser's cookie.
        stolen = other_browser.post("/ui/login", data={"csrf_token": token, "token": ADMIN_TOKEN})
        assert stolen.status_code == 403
        assert SESSION_COOKIE not in other_browser.cookies


def test_wrong_admin_token_shows_the_form_again(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        token = csrf_from(client.get("/ui/login").text)
        answer = client.post("/ui/login", data={"csrf_token": token, "token": "nope"})
        assert answer.status_code == 401
        assert "not right" in answer.text
        assert SESSION_COOKIE not in client.cookies


def test_session_cookie_is_httponly_strict_and_scoped(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        token = csrf_from(client.get("/ui/login").text)
        answer = client.post("/ui/login", data={"csrf_token": token, "token": ADMIN_TOKEN})
        cookie = next(
            v for k, v in answer.headers.multi_items() if k == "set-cookie" and SESSION_COOKIE in v
        )
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
        assert "Path=/ui" in cookie
        assert ADMIN_TOKEN not in cookie
        assert client.get("/ui/").status_code == 200


def test_tampered_session_cookie_is_refused(gateway: Gateway) -> None:
    with gateway.logged_in() as client:
        value = client.cookies[SESSION_COOKIE]
        expires, nonce, mac = value.split(".")
        forged = f"{int(expires) + 86400}.{nonce}.{mac}"
    with httpx.Client(base_url=gateway.url, cookies={SESSION_COOKIE: forged}) as attacker:
        assert attacker.get("/ui/", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("expiry", ["\u00b2", "1" * 5000])
def test_a_forged_session_cookie_is_no_session_not_a_failure(gateway: Gateway, expiry: str) -> None:
    # Both were a 500 with a traceback in the log, for anyone.
    # As the bytes a client sends: Starlette reads the Cookie header as Latin-1.
    forged = {b"cookie": f"{SESSION_COOKIE}={expiry}.nonce.mac".encode("latin-1")}
    with httpx.Client(base_url=gateway.url) as anyone:
        assert anyone.get("/ui/", headers=forged, follow_redirects=False).status_code == 303
        assert anyone.get("/ui/login", headers=forged).status_code == 200


@pytest.mark.parametrize("digits", [19, 5000])
def test_a_dlq_id_too_long_for_a_row_matches_no_page(gateway: Gateway, digits: int) -> None:
    # A 5,000-digit id raised in routing, before authentication; a 23-digit one in SQLite.
    path = "/ui/dlq/" + "9" * digits
    assert httpx.get(gateway.url + path).status_code == 404
    assert httpx.post(gateway.url + path + "/purge").status_code == 404
    with gateway.logged_in() as client:
        assert client.get(path).status_code == 404
        assert client.get("/ui/dlq/" + "9" * 18).status_code == 404  # no such row, a page


def test_logout_ends_the_session(gateway: Gateway) -> None:
    with gateway.logged_in() as client:
        token = csrf_from(client.get("/ui/").text)
        answer = client.post("/ui/logout", data={"csrf_token": token})
        assert answer.status_code == 303
        assert client.get("/ui/", follow_redirects=False).status_code == 303


def test_pages_carry_a_strict_content_security_policy(gateway: Gateway) -> None:
    with gateway.logged_in() as client:
        page = client.get("/ui/")
        assert "script-src" not in page.headers["content-security-policy"]
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"


def test_pages_never_show_a_token(gateway: Gateway, uid: str) -> None:
    gateway.send(purchase(f"{uid}1"))
    wait_for(lambda: f"{uid}1" in gateway.accepted_ids())
    with gateway.logged_in() as client:
        for path in PAGES:
            body = client.get(path).text
            assert ADMIN_TOKEN not in body
            assert "dash-access-token" not in body
            assert "someone@example.com" not in body


# ------------------------------------------------------------- other setups


@pytest.fixture
def basic_gateway(tmp_path: Path, dashboard_env: pytest.MonkeyPatch) -> Iterator[str]:
    settings = dashboard_settings(
        tmp_path / "basic.db",
        "http://127.0.0.1:9",
        dashboard={"basic_user": "ops", "basic_password": {"env": "CAPIRELAY_DASH_BASIC"}},
    )
    dashboard_env.setenv("CAPIRELAY_DASH_BASIC", "correct horse")
    with serve_in_thread(create_app(settings)) as url:
        yield url


@pytest.fixture
def lone_gateway(tmp_path: Path, dashboard_env: pytest.MonkeyPatch) -> Iterator[str]:
    """A gateway of this test's own: the throttle's count of wrong guesses stays here."""
    settings = dashboard_settings(tmp_path / "lone.db", "http://127.0.0.1:9")
    with serve_in_thread(create_app(settings)) as url:
        yield url


def test_wrong_tokens_in_headers_are_throttled_like_the_login_form(lone_gateway: str) -> None:
    # Only the login form counted wrong tokens; a Bearer header on any page could guess
    # without limit.
    with httpx.Client(base_url=lone_gateway, follow_redirects=False) as guesser:
        answers = [
            guesser.get("/ui/dlq", headers={"Authorization": f"Bearer guess-{i}"}).status_code
            for i in range(7)
        ]
        assert answers == [303] * 5 + [429] * 2
        right = guesser.get("/ui/", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert right.status_code == 429 and int(right.headers["retry-after"]) >= 1
        # The login form of the same client is locked too: one throttle.
        form = guesser.get("/ui/login")
        login = guesser.post(
            "/ui/login", data={"csrf_token": csrf_from(form.text), "token": ADMIN_TOKEN}
        )
        assert login.status_code == 429


def test_a_right_token_in_a_header_clears_the_count(lone_gateway: str) -> None:
    with httpx.Client(base_url=lone_gateway, follow_redirects=False) as client:
        for i in range(4):
            client.get("/ui/", headers={"Authorization": f"Bearer guess-{i}"})
        assert (
            client.get("/ui/", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code
            == 200
        )
        for i in range(4):
            assert (
                client.get("/ui/", headers={"Authorization": f"Bearer again-{i}"}).status_code
                == 303
            )


def test_a_session_behind_a_proxys_own_authorization_header_is_never_locked_out(
    lone_gateway: str,
) -> None:
    # A proxy in front of the dashboard (nginx auth_basic, oauth2-proxy) forwards its own
    # Authorization header on every request: counted as a wrong guess, a logged-in admin
    # was locked out after five page loads (a reviewer's find).
    proxy = {"Authorization": "Basic " + base64.b64encode(b"proxy:secret").decode()}
    with httpx.Client(base_url=lone_gateway, follow_redirects=False) as browser:
        form = browser.get("/ui/login")
        browser.post("/ui/login", data={"csrf_token": csrf_from(form.text), "token": ADMIN_TOKEN})
        assert [browser.get("/ui/", headers=proxy).status_code for _ in range(8)] == [200] * 8
        # Nor does a wrong Bearer token count while a session lets the caller in, and the
        # page does not tell a right one from a wrong one: the session decides, whatever
        # the header (checked first, the header was an unthrottled oracle for the token).
        wrong = {"Authorization": "Bearer not-it"}
        assert [browser.get("/ui/", headers=wrong).status_code for _ in range(8)] == [200] * 8
        right = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        pages = [browser.get("/ui/", headers=h).text for h in (wrong, right)]
        assert "logout" in pages[0].lower() and "logout" in pages[1].lower()


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        (_basic("ops", "wrong"), 401),
        (_basic("someone", "correct horse"), 401),
        ({"Authorization": "Basic !!notbase64"}, 401),
        ({"Authorization": "Bearer correct horse"}, 401),
        (_basic("ops", "correct horse"), 200),
    ],
    ids=["none", "wrong-password", "wrong-user", "garbage", "bearer", "right"],
)
def test_basic_auth(basic_gateway: str, headers: dict[str, str], status: int) -> None:
    answer = httpx.get(basic_gateway + "/ui/", headers=headers, follow_redirects=False)
    assert answer.status_code == status
    if status == 401:
        assert answer.headers["www-authenticate"] == 'Basic realm="capirelay"'


def test_basic_auth_actions_need_csrf(basic_gateway: str) -> None:
    headers = _basic("ops", "correct horse")
    assert httpx.post(basic_gateway + "/ui/dlq/replay", headers=headers).status_code == 403
    token = csrf_from(httpx.get(basic_gateway + "/ui/dlq", headers=headers).text)
    answer = httpx.post(
        basic_gateway + "/ui/dlq/replay", headers=headers, data={"csrf_token": token}
    )
    assert answer.status_code == 303


def test_basic_auth_has_no_login_form(basic_gateway: str) -> None:
    assert httpx.get(basic_gateway + "/ui/login").status_code == 401


def test_dashboard_is_off_without_a_credential(
    tmp_path: Path, dashboard_env: pytest.MonkeyPatch
) -> None:
    settings = dashboard_settings(tmp_path / "off.db", "http://127.0.0.1:9", dashboard={})
    with serve_in_thread(create_app(settings)) as url:
        for path in ["/ui/", "/ui/login", "/ui/static/dashboard.css"]:
            assert httpx.get(url + path).status_code == 404
        assert httpx.post(url + "/ui/dlq/replay").status_code in (404, 405)


def test_unreadable_admin_token_locks_the_dashboard(
    tmp_path: Path, dashboard_env: pytest.MonkeyPatch
) -> None:
    settings = dashboard_settings(
        tmp_path / "locked.db",
        "http://127.0.0.1:9",
        dashboard={"admin_token": {"env": "CAPIRELAY_DASH_UNSET_TOKEN"}},
    )
    dashboard_env.delenv("CAPIRELAY_DASH_UNSET_TOKEN", raising=False)
    with serve_in_thread(create_app(settings)) as url:
        assert httpx.get(url + "/ui/", headers={"Authorization": "Bearer None"}).status_code == 303
        login = httpx.post(url + "/ui/login", data={"token": ""})
        assert login.status_code == 401
