"""Logout ends a session on every replica, DLQ replays and purges leave an audit trail,
wrong logins are throttled per client, and redirects never echo the Host header.

Two gateways (replicas) share one storage, on each backend.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.requests import Request
from typer.testing import CliRunner

from capirelay.cli import app as cli_app
from capirelay.dashboard.auth import SESSION_COOKIE
from capirelay.dashboard.sessions import LoginThrottle, client_key
from capirelay.emulator.testing import RunningEmulator, run_emulator
from capirelay.events import prepare_wire
from capirelay.outbox import Attempt, DeadLetterReason, NewEvent, open_outbox
from capirelay.server import create_app
from server.conftest import serve_in_thread

from .conftest import ACCESS_TOKEN, ADMIN_TOKEN, PIXEL_ID, csrf_from, dashboard_settings, purchase

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


@pytest.fixture
def storage(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path / 'shared.db'}"


@contextmanager
def running_replicas(storage: str, tmp_path: Path) -> Iterator[tuple[str, str, RunningEmulator]]:
    with ExitStack() as stack:
        emulator = stack.enter_context(run_emulator(pixels={PIXEL_ID: ACCESS_TOKEN}))
        settings = dashboard_settings(tmp_path / "unused.db", emulator.url, storage=storage)
        first = stack.enter_context(serve_in_thread(create_app(settings)))
        second = stack.enter_context(serve_in_thread(create_app(settings)))
        yield first, second, emulator


@pytest.fixture
def replicas(
    storage: str, dashboard_env: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[tuple[str, str, RunningEmulator]]:
    with running_replicas(storage, tmp_path) as running:
        yield running


def log_in(url: str) -> str:
    """Log in through the form as a browser does; the session cookie's value."""
    with httpx.Client(base_url=url, timeout=10) as browser:
        form = browser.get("/ui/login")
        answer = browser.post(
            "/ui/login", data={"csrf_token": csrf_from(form.text), "token": ADMIN_TOKEN}
        )
        assert answer.status_code == 303, answer.text
        return answer.cookies[SESSION_COOKIE]


def page(url: str, session: str, path: str = "/ui/") -> httpx.Response:
    return httpx.get(url + path, cookies={SESSION_COOKIE: session}, timeout=10)


def test_logout_ends_the_session_on_every_replica(
    replicas: tuple[str, str, RunningEmulator],
) -> None:
    first, second, _ = replicas
    session = log_in(first)
    assert page(second, session).status_code == 200  # the cookie works on any replica
    other = log_in(second)  # a second session, not logged out

    overview = page(first, session)
    logout = httpx.post(
        first + "/ui/logout",
        data={"csrf_token": csrf_from(overview.text)},
        cookies={SESSION_COOKIE: session},
        headers={"Origin": first},
        timeout=10,
    )
    assert logout.status_code == 303, logout.text

    for replica in (first, second):
        refused = page(replica, session)
        assert refused.status_code == 303
        assert refused.headers["location"] == "/ui/login"
        login_page = page(replica, session, "/ui/login")
        assert login_page.status_code == 200  # no redirect loop back to /ui/
    assert page(first, other).status_code == 200  # only the logged-out session ended


async def dead_letters(storage: str, ids: list[str]) -> None:
    box = open_outbox(storage)
    await box.open()
    now = time.time()
    try:
        events = [
            NewEvent(
                pixel_id=PIXEL_ID,
                event_name="Purchase",
                event_id=event_id,
                payload=orjson.dumps(prepare_wire(purchase(event_id)).payload),
                event_time=int(now),
                deadline=now + 86_400,
            )
            for event_id in ids
        ]
        await box.enqueue(events, now=now)
        leased = await box.lease(PIXEL_ID, limit=len(ids), lease_seconds=60, now=now)
        attempt = Attempt(at=now, status=400, code=100, subcode=2804050, message="bad")
        await box.dead_letter(
            [e.id for e in leased],
            reason=DeadLetterReason.INVALID,
            attempt=attempt,
            now=now,
            lease_id=leased[0].lease_id,
        )
    finally:
        await box.close()


def test_replays_and_purges_are_audited_on_the_dashboard_and_the_cli(
    storage: str, dashboard_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Dead letters first: a running gateway would lease (and deliver) the seed events.
    asyncio.run(dead_letters(storage, ["audit-1", "audit-2", "audit-3"]))
    with running_replicas(storage, tmp_path) as (first, second, _):
        audited_actions(storage, first, second)


def audited_actions(storage: str, first: str, second: str) -> None:
    session = log_in(first)
    listing = page(first, session, "/ui/dlq")
    csrf = csrf_from(listing.text)
    form_headers = {"Origin": first}
    replay = httpx.post(
        first + "/ui/dlq/replay",
        data={"csrf_token": csrf, "pixel": PIXEL_ID, "event": "", "reason": "invalid"},
        cookies={SESSION_COOKIE: session},
        headers=form_headers,
        timeout=10,
    )
    assert replay.status_code == 303, replay.text
    purge = httpx.post(
        first + "/ui/dlq/purge",
        data={"csrf_token": csrf, "pixel": "", "event": "", "reason": "", "confirm": "yes"},
        cookies={SESSION_COOKIE: session},
        headers=form_headers,
        timeout=10,
    )
    assert purge.status_code == 303, purge.text

    shown = page(second, log_in(second), "/ui/dlq").text  # the other replica shows it too
    assert "Replays and purges" in shown
    assert "filter pixel=1234567890 reason=invalid" in shown
    assert "filter (all)" in shown
    assert ADMIN_TOKEN not in shown

    result = runner.invoke(cli_app, ["dlq", "audit", "--storage", storage, "--json"])
    assert result.exit_code == 0, result.output
    records = orjson.loads(result.stdout)
    assert [r["action"] for r in records] == ["purge", "replay"]
    replayed = records[1]
    assert replayed["count"] == 3
    assert replayed["origin"] == "dashboard"
    assert replayed["actor"].startswith("session ")
    assert replayed["target"] == "filter pixel=1234567890 reason=invalid"
    assert records[0]["at"] >= replayed["at"]

    # The CLI's own actions are audited as the OS user.
    runner.invoke(cli_app, ["dlq", "purge", "--storage", storage, "--all", "--yes"])
    latest = orjson.loads(
        runner.invoke(cli_app, ["dlq", "audit", "--storage", storage, "--json"]).stdout
    )[0]
    assert (latest["origin"], latest["action"]) == ("cli", "purge")
    assert latest["actor"].startswith("cli:")


def test_wrong_logins_are_throttled_per_client(
    replicas: tuple[str, str, RunningEmulator],
) -> None:
    first, _, _ = replicas
    with httpx.Client(base_url=first, timeout=10) as browser:
        statuses = []
        for _ in range(7):
            form = browser.get("/ui/login")
            answer = browser.post(
                "/ui/login", data={"csrf_token": csrf_from(form.text), "token": "guess"}
            )
            statuses.append(answer.status_code)
        assert statuses == [401] * 5 + [429] * 2
        assert int(answer.headers["retry-after"]) >= 1
        # Locked out means locked out: the right token waits too.
        form = browser.get("/ui/login")
        right = browser.post(
            "/ui/login", data={"csrf_token": csrf_from(form.text), "token": ADMIN_TOKEN}
        )
        assert right.status_code == 429


def test_the_throttle_window_slides() -> None:
    now = [1000.0]
    throttle = LoginThrottle(max_failures=3, window=60, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.retry_after("a") is None
        throttle.failed("a")
    assert throttle.retry_after("a") == pytest.approx(60)
    assert throttle.retry_after("b") is None  # per client
    now[0] += 30
    assert throttle.retry_after("a") == pytest.approx(30)
    now[0] += 30.5
    assert throttle.retry_after("a") is None
    throttle.failed("a")
    throttle.succeeded("a")
    assert throttle.retry_after("a") is None


def behind_proxy(forwarded_for: str) -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/ui/login",
        "headers": [(b"x-forwarded-for", forwarded_for.encode())],
        "client": ("127.0.0.1", 40000),
    }
    return Request(scope)


def test_login_failures_from_one_ipv6_64_count_as_one_client() -> None:
    throttle = LoginThrottle(max_failures=5, window=60, clock=lambda: 1000.0)
    proxies = ["127.0.0.1"]
    answers = []
    for host in range(1, 31):  # a fresh address of the same /64 each time
        client = client_key(behind_proxy(f"2001:db8:1:2::{host:x}"), proxies)
        answers.append(throttle.retry_after(client))
        throttle.failed(client)
    assert answers[:5] == [None] * 5
    assert all(wait is not None for wait in answers[5:])
    other = client_key(behind_proxy("2001:db8:1:3::1"), proxies)
    assert throttle.retry_after(other) is None  # the next /64 is someone else
    assert client_key(behind_proxy("198.51.100.7"), proxies) == "198.51.100.7"


def test_redirects_are_relative_whatever_the_host_header(
    replicas: tuple[str, str, RunningEmulator],
) -> None:
    first, _, _ = replicas
    headers = {"Host": "evil.example"}
    to_slash = httpx.get(first + "/ui", headers=headers, timeout=10)
    assert to_slash.status_code == 303
    assert to_slash.headers["location"] == "/ui/"
    to_login = httpx.get(first + "/ui/", headers=headers, timeout=10)
    assert to_login.headers["location"] == "/ui/login"
    # A trailing slash is not "fixed" by an absolute redirect either.
    assert httpx.get(first + "/ui/dlq/", headers=headers, timeout=10).status_code == 404
    assert httpx.get(first + "/healthz/", headers=headers, timeout=10).status_code == 404


def test_numbers_in_dlq_query_strings_are_ascii_digits_within_range(
    replicas: tuple[str, str, RunningEmulator],
) -> None:
    # Each was a 500: a 23-digit OFFSET (OverflowError binding it for SQLite,
    # NumericValueOutOfRange from PostgreSQL), int() of "²" (str.isdigit() takes it).  A
    # value that is not a number within range is ignored, like any other bad filter value.
    first, _, _ = replicas
    session = log_in(first)
    for query in (
        "offset=99999999999999999999999",
        "offset=999999999999999999",  # 18 digits: within range, an empty page
        "offset=-5",
        "code=%C2%B2",  # "²"
        "subcode=%D9%A3",  # "٣", an Arabic-Indic digit that int() would take
        "code=" + "9" * 5000,
        "replayed=%C2%B2&purged=%C2%B2",  # the counts of the last action
        "offset=12%1C",  # str.strip() drops U+001C, int() does not (an adversarial review)
        "code=%1E5",
    ):
        listing = page(first, session, f"/ui/dlq?{query}")
        assert listing.status_code == 200, (query, listing.text[:300])
        assert 'name="code" value=""' in listing.text
    filtered = page(first, session, "/ui/dlq?code=190&subcode=-1&replayed=2")
    assert 'name="code" value="190"' in filtered.text
    assert 'name="subcode" value="-1"' in filtered.text
    assert "2 dead letter(s) re-queued for delivery." in filtered.text


def test_a_nul_in_a_dlq_filter_matches_nothing_and_fails_nothing(
    replicas: tuple[str, str, RunningEmulator], storage: str
) -> None:
    first, _, _ = replicas
    session = log_in(first)
    listing = page(first, session, "/ui/dlq?pixel=%00&event=a%00b")
    assert listing.status_code == 200
    purge = httpx.post(
        first + "/ui/dlq/purge",
        data={"csrf_token": csrf_from(listing.text), "pixel": "\x00", "confirm": "yes"},
        cookies={SESSION_COOKIE: session},
        headers={"Origin": first},
        timeout=10,
    )
    assert purge.status_code == 303, purge.text
    assert purge.headers["location"].endswith("purged=0")
    records = orjson.loads(
        runner.invoke(cli_app, ["dlq", "audit", "--storage", storage, "--json"]).stdout
    )
    assert records[0]["target"] == "filter pixel=?"
