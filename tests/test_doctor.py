"""``capirelay doctor``: verdicts and exit codes against the real emulator and a real SQLite file.

Scenarios from the issue: a healthy setup, a revoked token, an expired API
version, a stalled queue and a growing DLQ; plus the pure check functions as tables.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from rich.console import Console
from typer.testing import CliRunner

from capirelay.cli import app
from capirelay.cli.doctor import render
from capirelay.config import PixelSettings, Settings
from capirelay.emulator.testing import RunningEmulator, run_emulator
from capirelay.graph import explain
from capirelay.normalize import sha256_hex
from capirelay.ops.doctor import (
    Check,
    DoctorReport,
    Status,
    backlog_check,
    beacon_checks,
    clock_check,
    dlq_check,
    graph_check,
    run_doctor,
)
from capirelay.ops.health import GraphProbe
from capirelay.outbox import Attempt, DeadLetterReason, NewEvent, QueueStats, SQLiteOutbox
from not_graph import serve_not_graph

PIXEL = "1234567890"
TOKEN = "EAAdoctorTOKENabcdefghijklmnopqrstu"
TOKEN_ENV = "CAPIRELAY_TEST_DOCTOR_TOKEN"
ORIGINS = 'allowed_origins = ["https://shop.example"]\n'
DAY = 86400.0

runner = CliRunner()


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with run_emulator(pixels={PIXEL: TOKEN}) as running:
        yield running


@pytest.fixture(autouse=True)
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPIRELAY_CONFIG", raising=False)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


def write_config(
    tmp_path: Path, graph_url: str, *, pixel_extra: str = "", origins: str = ORIGINS
) -> Path:
    db = tmp_path / "capirelay.db"
    asyncio.run(_create_outbox(db))
    config = tmp_path / "capirelay.toml"
    config.write_text(
        f'storage = "sqlite:///{db}"\n'
        f'graph_url = "{graph_url}"\n'
        f"[pixels.{PIXEL}]\n"
        f'access_token = {{ env = "{TOKEN_ENV}" }}\n'
        f"{origins}"
        f"{pixel_extra}",
        encoding="utf-8",
    )
    return config


async def _create_outbox(db: Path) -> None:
    box = SQLiteOutbox(db)
    await box.open()
    await box.close()


def doctor(config: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, ["doctor", "--config", str(config), "--json", *args])
    return result.exit_code, orjson.loads(result.stdout)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in report["checks"]}


def wire_event(event_id: str, event_time: int, **user_data: Any) -> dict[str, Any]:
    return {
        "event_name": "Purchase",
        "event_time": event_time,
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop.example/checkout",
        "user_data": user_data,
        "custom_data": {"currency": "EUR", "value": 10.0},
    }


async def _enqueue(db: Path, events: list[dict[str, Any]], *, now: float) -> SQLiteOutbox:
    box = SQLiteOutbox(db)
    await box.open()
    await box.enqueue(
        [
            NewEvent(
                pixel_id=PIXEL,
                event_name=e["event_name"],
                event_id=e["event_id"],
                payload=orjson.dumps(e),
                event_time=e["event_time"],
                deadline=e["event_time"] + 7 * DAY,
            )
            for e in events
        ],
        now=now,
    )
    return box


async def stall_queue(db: Path) -> None:
    """Events queued 6.4 days ago that nobody delivered: 14 hours left."""
    now = time.time()
    event_time = int(now - 6.4 * DAY)
    events = [
        wire_event(f"stalled-{i}", event_time, em=sha256_hex(f"user{i}@example.com"), fbc="bad")
        for i in range(4)
    ]
    box = await _enqueue(db, events, now=event_time)
    await box.close()


async def dead_letter_recently(db: Path) -> None:
    now = time.time()
    events = [wire_event(f"dead-{i}", int(now - 60), fbc="IwAR-no-prefix") for i in range(3)]
    box = await _enqueue(db, events, now=now)
    leased = await box.lease(PIXEL, limit=10, lease_seconds=30, now=now)
    attempt = Attempt(
        at=now,
        status=400,
        code=100,
        subcode=2804001,
        message="Invalid parameter",
        fbtrace_id="TRACE1",
        retry_class="invalid",
    )
    await box.dead_letter(
        [e.id for e in leased],
        reason=DeadLetterReason.INVALID,
        attempt=attempt,
        now=now,
        lease_id=leased[0].lease_id,
    )
    await box.close()


def test_healthy_setup_passes_every_check(tmp_path: Path, emulator: RunningEmulator) -> None:
    code, report = doctor(write_config(tmp_path, emulator.url))
    assert code == 0
    assert report["status"] == "ok"
    assert {c["status"] for c in report["checks"]} == {"ok"}
    names = set(by_name(report))
    assert {"config", "beacon", "storage", "graph", "clock", f"token {PIXEL}"} <= names
    assert {f"api version {PIXEL}", "backlog", "dead letters", "match quality"} <= names
    graph = by_name(report)["graph"]["detail"]
    assert graph.startswith(f"reached {emulator.url}") and "proves the network path" in graph


def config_with_storage(tmp_path: Path, graph_url: str, db: Path) -> Path:
    config = tmp_path / "capirelay.toml"
    config.write_text(
        f'storage = "sqlite:///{db}"\ngraph_url = "{graph_url}"\n'
        f'[pixels.{PIXEL}]\naccess_token = {{ env = "{TOKEN_ENV}" }}\n'
        'allowed_origins = ["https://shop.example"]\n',
        encoding="utf-8",
    )
    return config


def test_a_new_install_before_its_first_serve_passes_the_storage_check(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    # `capirelay init` then `capirelay doctor`: no outbox yet is the normal state, not a
    # warning that "something degrades delivery".
    db = tmp_path / "data" / "capirelay.db"
    code, report = doctor(config_with_storage(tmp_path, emulator.url, db))
    storage = by_name(report)["storage"]
    assert (code, report["status"], storage["status"]) == (0, "ok", "ok"), storage
    assert storage["detail"].startswith(f"SQLite outbox {db} does not exist yet")
    assert "the first `capirelay serve` creates it" in storage["detail"]
    assert not db.parent.exists()  # the doctor creates nothing


def test_an_outbox_that_serve_could_not_create_fails(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    (tmp_path / "var").write_text("a file where a directory should be\n")
    db = tmp_path / "var" / "lib" / "capirelay.db"
    code, report = doctor(config_with_storage(tmp_path, emulator.url, db))
    storage = by_name(report)["storage"]
    assert (code, storage["status"]) == (1, "fail")
    assert storage["detail"] == (
        f"SQLite outbox {db} does not exist and cannot be created: "
        f"{tmp_path / 'var'} is not a directory"
    )
    assert "sqlite:////absolute/path/capirelay.db" in storage["fix"]


def test_an_outbox_in_a_directory_this_user_may_not_write_fails(
    tmp_path: Path, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access
    # Read-only for this user (a chmod would not stop root, who runs some test machines).
    monkeypatch.setattr(
        os, "access", lambda path, mode: access(path, mode) and Path(path) != locked
    )
    code, report = doctor(config_with_storage(tmp_path, emulator.url, locked / "capirelay.db"))
    storage = by_name(report)["storage"]
    assert (code, storage["status"]) == (1, "fail")
    assert storage["detail"].endswith(f"{locked} is not writable by this user")


def test_revoked_token_fails(tmp_path: Path, emulator: RunningEmulator) -> None:
    emulator.state.revoke_token(TOKEN)
    code, report = doctor(write_config(tmp_path, emulator.url))
    assert code == 1
    token = by_name(report)[f"token {PIXEL}"]
    assert token["status"] == "fail"
    assert "(190/463)" in token["detail"]
    assert token["fix"].startswith(explain(190, 463))
    assert TOKEN not in orjson.dumps(report).decode()


def test_a_bad_or_expiring_token_is_told_where_the_new_one_goes_and_if_to_restart(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    """The fix for a revoked or expiring token names the variable or file the new token
    goes in: a file is read again at its next use, a variable needs a restart (a running
    process keeps its environment), which "update the pixel's token" did not say."""
    emulator.state.revoke_token(TOKEN)
    _, report = doctor(write_config(tmp_path, emulator.url))
    fix = by_name(report)[f"token {PIXEL}"]["fix"]
    assert f"set the environment variable {TOKEN_ENV} (pixels.{PIXEL}.access_token)" in fix
    assert "restart the gateway" in fix

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    config = write_config(tmp_path, emulator.url)
    config.write_text(
        config.read_text().replace(f'{{ env = "{TOKEN_ENV}" }}', f'{{ file = "{token_file}" }}')
    )
    _, report = doctor(config)
    fix = by_name(report)[f"token {PIXEL}"]["fix"]
    assert fix.startswith(explain(190, 463))
    assert f"write the new value into the file {token_file} (pixels.{PIXEL}.access_token)" in fix
    assert "no restart needed" in fix

    emulator.state.restore_token(TOKEN)
    emulator.state.set_token_expiry(TOKEN, int(emulator.state.now()) + 5 * 86400)
    _, report = doctor(config)
    check = by_name(report)[f"token {PIXEL}"]
    assert check["status"] == "warn" and "expires in 5 days" in check["detail"]
    assert f"into the file {token_file}" in check["fix"]


def test_a_permission_error_is_fixed_by_a_grant_and_the_hint_is_for_a_new_token_only() -> None:
    """Codes 3, 10 and 200-299 are fixed by granting the token's system user a permission:
    the token stays and the breaker's probe resumes delivery, so "Then set ... and restart"
    was wrong there; it is said for a new token only.  A bad token (190) still gets it."""
    from datetime import UTC, datetime

    from capirelay.config import Secret
    from capirelay.ops.doctor import _token_check
    from capirelay.ops.health import TokenHealth

    hint = Secret(env="CAPI_TOK").how_to_replace("pixels.123.access_token")
    # As written in the config: the key under its table, not a dotted name inside it.
    assert 'access_token = { file = "..." } under [pixels.123]' in hint

    def fix_for(code: int) -> str:
        health = TokenHealth(
            "123", True, False, None, (), f"({code})", explain(code, None),
            error_code=code, replace_hint=hint,
        )  # fmt: skip
        fix = _token_check(health, datetime.now(UTC)).fix
        assert fix is not None
        return fix

    assert fix_for(200) == f"{explain(200, None)} If you generate a new token: {hint}"
    assert fix_for(190) == f"{explain(190, None)} Then {hint}"


def test_expired_version_fails(tmp_path: Path, emulator: RunningEmulator) -> None:
    config = write_config(tmp_path, emulator.url, pixel_extra='api_version = "v19.0"\n')
    code, report = doctor(config)
    assert code == 1
    checks = by_name(report)
    version = checks[f"api version {PIXEL}"]
    assert version["status"] == "fail"
    assert version["detail"] == "v19.0 was retired on 2026-05-21"
    assert version["fix"].startswith(f'set api_version = "v26.0" in [pixels.{PIXEL}]')
    # Graph refuses the retired version, so the token cannot be judged either way.
    assert checks[f"token {PIXEL}"]["status"] == "warn"


def test_stalled_queue_fails_with_match_hints(tmp_path: Path, emulator: RunningEmulator) -> None:
    config = write_config(tmp_path, emulator.url)
    asyncio.run(stall_queue(tmp_path / "capirelay.db"))
    code, report = doctor(config)
    assert code == 1
    checks = by_name(report)
    backlog = checks["backlog"]
    assert backlog["status"] == "fail"
    assert backlog["detail"] == "4 queued, oldest 6 days old, most urgent expires in 14 h"
    quality = checks["match quality Purchase"]
    assert quality["status"] == "warn"
    assert quality["detail"] == "predicted 2.5/10 from 4 sampled events"
    assert quality["fix"] == (
        "100% of Purchase events lack a phone; 100% of Purchase events lack a client IP "
        "address; 100% of Purchase events lack a first and last name"
    )


def test_growing_dlq_fails_and_names_the_error_class(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    config = write_config(tmp_path, emulator.url)
    asyncio.run(dead_letter_recently(tmp_path / "capirelay.db"))
    code, report = doctor(config)
    assert code == 1
    checks = by_name(report)
    assert checks["dead letters"]["status"] == "fail"
    assert checks["dead letters"]["detail"] == "3 dead-lettered, 3 in the last 24 h"
    errors = checks["errors 100/2804001"]
    assert errors["status"] == "warn"
    assert errors["detail"] == "3 dead letters (Purchase x3)"
    assert errors["fix"] == explain(100, 2804001)


def test_a_beacon_no_origin_may_use_warns_naming_the_setting_and_the_fix(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    # What interactive `capirelay init` writes when Enter is pressed at the origins question.
    config = write_config(tmp_path, emulator.url, origins="allowed_origins = []\n")
    code, report = doctor(config)
    assert (code, report["status"]) == (0, "warn")
    [row] = [c for c in report["checks"] if c["status"] != "ok"]
    assert (row["name"], row["status"]) == ("beacon", "warn")
    assert row["detail"] == (
        f"pixels.{PIXEL}.allowed_origins is empty: every browser event for pixel {PIXEL} "
        "(capirelay.js, POST /v1/collect) is refused with 403 origin_not_allowed"
    )
    assert row["fix"].startswith(
        f"list your site's origins under [pixels.{PIXEL}], e.g. allowed_origins = [\"https://"
    )
    assert doctor(config, "--strict")[0] == 1


def _pixels(**pixels: dict[str, Any]) -> Settings:
    return Settings(
        storage="sqlite:///unused.db",
        pixels={
            pid: PixelSettings(**{"access_token": {"env": TOKEN_ENV}, **p})
            for pid, p in pixels.items()
        },
    )


@pytest.mark.parametrize(
    ("pixels", "expected"),
    [
        # Every pixel takes browser events unless beacon_events = [].
        ({"1": {}}, [("warn", "pixels.1.allowed_origins is empty")]),
        ({"1": {"beacon_events": ["Purchase"]}}, [("warn", "pixels.1.allowed_origins is empty")]),
        ({"1": {"allowed_origins": ["*"]}}, [("ok", "1 pixel(s) take browser events from")]),
        (
            {"1": {"allowed_origins": ["https://shop.example"]}, "2": {}},
            [("warn", "pixels.2.allowed_origins is empty")],
        ),
        (
            {"1": {"allowed_origins": ["https://shop.example"]}, "2": {"beacon_events": []}},
            [("ok", "1 pixel(s) take browser events from")],
        ),
        ({"1": {"beacon_events": []}}, [("ok", "off: no pixel takes browser events")]),
    ],
)
def test_beacon_checks(pixels: dict[str, dict[str, Any]], expected: list[tuple[str, str]]) -> None:
    checks = beacon_checks(_pixels(**pixels))
    assert [
        (str(c.status), c.detail[: len(d)]) for c, (_, d) in zip(checks, expected, strict=True)
    ] == expected
    assert {c.name for c in checks} == {"beacon"}
    assert all((c.fix is None) == (c.status is Status.OK) for c in checks)


def test_warnings_exit_zero_unless_strict(tmp_path: Path, emulator: RunningEmulator) -> None:
    config = write_config(tmp_path, emulator.url)
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace(f'{{ env = "{TOKEN_ENV}" }}', f'"{TOKEN}"'), encoding="utf-8")
    code, report = doctor(config)
    assert (code, report["status"]) == (0, "warn")
    warned = [c for c in report["checks"] if c["status"] == "warn"]
    assert [c["name"] for c in warned] == ["config"]
    assert TOKEN not in orjson.dumps(report).decode()
    strict_code, _ = doctor(config, "--strict")
    assert strict_code == 1


def test_unreachable_graph_and_broken_config(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, report = doctor(write_config(tmp_path, f"http://127.0.0.1:{port}"))
    assert code == 1
    checks = by_name(report)
    assert checks["graph"]["status"] == "fail"
    # Not Meta's host: the fix names what graph_url points at, not a firewall to Meta.
    assert checks["graph"]["fix"].startswith(
        "graph_url points at 127.0.0.1, not Meta's graph.facebook.com: check that it runs"
    )
    assert "graph.facebook.com (firewall" not in checks["graph"]["fix"]
    assert checks["clock"] == {
        "name": "clock",
        "status": "warn",
        "detail": "clock skew unknown: Graph did not answer",
        "fix": None,
    }
    assert checks[f"token {PIXEL}"]["status"] == "warn"

    broken = tmp_path / "broken.toml"
    broken.write_text('port = "not a port"\n', encoding="utf-8")
    result = runner.invoke(app, ["doctor", "--config", str(broken)])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(f"{broken}:1:1: port: ")
    report = orjson.loads(orjson.dumps(asyncio.run(run_doctor(broken)).to_dict()))
    assert report["checks"][0]["detail"].startswith(f"{broken}:1:1: port: ")


def test_an_unreachable_meta_graph_asks_for_outbound_https() -> None:
    probe = GraphProbe(reachable=False, status=None, skew_seconds=None, latency_ms=None,
                       error="ConnectError")  # fmt: skip
    check = graph_check(probe, "https://graph.facebook.com")
    assert check.status == Status.FAIL
    assert check.fix == (
        "allow outbound HTTPS to graph.facebook.com (firewall, proxy, DNS); events wait in "
        "the queue until their deadline"
    )


PROXY_PASSWORD = "hunter2pass"


@pytest.mark.parametrize(
    ("probe", "shown"),
    [
        (GraphProbe(True, 400, 0.0, 12.0, None), "reached http://egress.example:8443 in 12 ms"),
        (
            GraphProbe(True, 502, None, 12.0, None, not_graph="HTTP 502 (text/html)"),
            "http://egress.example:8443 answered, but not as Graph",
        ),
        (
            GraphProbe(False, None, None, None, "ConnectError: refused"),
            "http://egress.example:8443 unreachable (ConnectError: refused)",
        ),
    ],
)
def test_the_graph_check_names_graph_url_without_its_credentials(
    probe: GraphProbe, shown: str
) -> None:
    url = f"http://relay:{PROXY_PASSWORD}@egress.example:8443/meta?access_token=EAAleak"
    check = graph_check(probe, url)
    assert check.detail.startswith(shown), check.detail
    text = f"{check.detail} {check.fix}"
    for secret in (PROXY_PASSWORD, "relay:", "relay@", "EAAleak", "access_token="):
        assert secret not in text


def test_doctor_never_prints_a_proxys_password_from_graph_url(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = write_config(tmp_path, f"http://relay:{PROXY_PASSWORD}@127.0.0.1:{port}/meta")
    for args in (["--json"], []):
        result = runner.invoke(app, ["doctor", "--config", str(config), *args])
        assert result.exit_code == 1, result.output
        assert f"http://127.0.0.1:{port} unreachable" in result.stdout, result.stdout
        assert PROXY_PASSWORD not in result.output and "relay:" not in result.output


def test_rich_table_output(tmp_path: Path, emulator: RunningEmulator) -> None:
    emulator.state.revoke_token(TOKEN)
    config = write_config(tmp_path, emulator.url)
    result = runner.invoke(app, ["doctor", "--config", str(config)], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "capirelay doctor" in result.stdout
    assert f"token {PIXEL}" in result.stdout
    assert "Failures: events are being lost or will be" in result.stdout


LONG_NAME = f"meta {PIXEL} dq:Lead:send_click_id_with_more_events"
LONG_DETAIL = (
    "Meta's dataset quality says 12% of Lead events carry a click ID (fbc); sending it "
    "with more events raises the share of conversions attributed to ads"
)
LONG_FIX = "send fbc from the _fbc cookie or the fbclid URL parameter with every Lead event"


@pytest.mark.parametrize("width", [80, 100, 120])
def test_a_long_check_name_leaves_the_detail_readable_at_any_width(width: int) -> None:
    # A pipe or an 80-column terminal: the long name once squeezed the detail column to
    # one character per line (over a thousand lines for a few checks).
    report = DoctorReport(
        [
            Check("storage", Status.OK, "sqlite outbox answers"),
            Check(LONG_NAME, Status.WARN, LONG_DETAIL, LONG_FIX),
            Check("graph", Status.OK, "reached https://graph.facebook.com in 80 ms"),
        ]
    )
    out = io.StringIO()
    render(report, Console(file=out, width=width, color_system=None))
    lines = out.getvalue().splitlines()
    assert all(len(line) <= width for line in lines)
    assert len(lines) <= 24, out.getvalue()
    words = {word.strip("│┃") for line in lines for word in line.split()}
    for word in f"{LONG_DETAIL} {LONG_FIX}".split():
        assert word in words, word
    assert "Warnings: delivery works" in out.getvalue()


async def test_clock_skew_from_a_frozen_emulator_clock(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    emulator.state.set_clock(time.time() + 3600)
    from capirelay.config import load_settings

    settings = load_settings(write_config_async_safe(tmp_path, emulator.url))
    report = await run_doctor(settings=settings)
    clock = {c.name: c for c in report.checks}["clock"]
    assert clock.status is Status.FAIL
    # The Date header has a one-second resolution.
    assert clock.detail in {f"local clock is {s} s behind Graph's" for s in (3599, 3600, 3601)}


def write_config_async_safe(tmp_path: Path, graph_url: str) -> Path:
    """write_config without creating the outbox (no nested event loop inside async tests)."""
    config = tmp_path / "capirelay.toml"
    config.write_text(
        f'storage = "sqlite:///{tmp_path / "absent.db"}"\n'
        f'graph_url = "{graph_url}"\n'
        f"[pixels.{PIXEL}]\n"
        f'access_token = {{ env = "{TOKEN_ENV}" }}\n',
        encoding="utf-8",
    )
    return config


# ---------------------------------------------------------------- pure checks


@pytest.mark.parametrize(
    ("skew", "status"),
    [
        (0.4, Status.OK),
        (-30.0, Status.OK),
        (45.0, Status.WARN),
        (-299.0, Status.WARN),
        (301.0, Status.FAIL),
        (-3600.0, Status.FAIL),
        (None, Status.WARN),
    ],
)
def test_clock_check(skew: float | None, status: Status) -> None:
    assert clock_check(skew, max_future_skew=300).status is status


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("stats", "status", "detail"),
    [
        (QueueStats(), Status.OK, "queue empty"),
        (
            QueueStats(depth=5, oldest_queued_at=NOW - 30, earliest_deadline=NOW + 6 * DAY),
            Status.OK,
            "5 queued, oldest 30 s old, most urgent expires in 6 days",
        ),
        (
            QueueStats(depth=5, oldest_queued_at=NOW - 7200, earliest_deadline=NOW + 6 * DAY),
            Status.WARN,
            "5 queued, oldest 2 h old, most urgent expires in 6 days",
        ),
        (
            QueueStats(depth=1, oldest_queued_at=NOW - 60, earliest_deadline=NOW + 3600),
            Status.FAIL,
            "1 queued, oldest 60 s old, most urgent expires in 60 min",
        ),
    ],
)
def test_backlog_check(stats: QueueStats, status: Status, detail: str) -> None:
    check = backlog_check(stats, NOW)
    assert (check.status, check.detail) == (status, detail)
    assert (check.fix is None) == (status is Status.OK)


@pytest.mark.parametrize(
    ("size", "recent", "status"),
    [(0, 0, Status.OK), (12, 0, Status.WARN), (12, 1, Status.FAIL)],
)
def test_dlq_check(size: int, recent: int, status: Status) -> None:
    assert dlq_check(size, recent).status is status


@pytest.mark.parametrize(
    ("statuses", "strict", "code"),
    [
        ([], False, 0),
        ([Status.OK, Status.OK], False, 0),
        ([Status.OK, Status.WARN], False, 0),
        ([Status.OK, Status.WARN], True, 1),
        ([Status.WARN, Status.FAIL], False, 1),
    ],
)
def test_exit_code(statuses: list[Status], strict: bool, code: int) -> None:
    report = DoctorReport([Check(f"c{i}", s, "seen") for i, s in enumerate(statuses)])
    assert report.exit_code(strict=strict) == code


def test_a_missing_token_fix_names_the_setting_and_how_to_set_it(
    tmp_path: Path, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    code, report = doctor(write_config(tmp_path, emulator.url))
    assert code == 1
    token = by_name(report)[f"token {PIXEL}"]
    assert token["status"] == "fail"
    assert token["fix"] == (
        f"pixels.{PIXEL}.access_token reads the environment variable {TOKEN_ENV}, which is "
        f"unset or empty: export {TOKEN_ENV}=<token> for the gateway's process"
    )
    # No access_token at all: the exact setting, its file and environment forms.
    bare = tmp_path / "bare.toml"
    bare.write_text(
        f'storage = "sqlite:///{tmp_path / "capirelay.db"}"\ngraph_url = "{emulator.url}"\n'
        f'[pixels.{PIXEL}]\ntest_event_code = "TEST1"\n',
        encoding="utf-8",
    )
    code, report = doctor(bare)
    fix = by_name(report)[f"token {PIXEL}"]["fix"]
    assert code == 1
    assert f"set pixels.{PIXEL}.access_token" in fix
    assert 'access_token = { env = "CAPIRELAY_TOKEN" }' in fix
    assert 'access_token = { file = "/run/secrets/capi_token" }' in fix
    assert f"CAPIRELAY_PIXELS__{PIXEL}__ACCESS_TOKEN=<token>" in fix


# ------------------------------------------------- graph_url, test codes, secrets, scopes


@pytest.fixture
def not_graph() -> Iterator[str]:
    with serve_not_graph() as url:
        yield url


def test_a_server_that_is_not_graph_fails_and_its_clock_is_not_graphs(
    tmp_path: Path, not_graph: str
) -> None:
    code, report = doctor(write_config(tmp_path, not_graph))
    assert code == 1
    checks = by_name(report)
    graph = checks["graph"]
    assert graph["status"] == "fail"
    assert graph["detail"] == (
        f"{not_graph} answered, but not as Graph: HTTP 404 (text/html) without Graph's JSON "
        "error or x-fb-* headers"
    )
    assert graph["fix"].startswith("graph_url must be Graph's bare origin")
    # Its Date header is an hour off, and says nothing about Graph's clock.
    assert checks["clock"]["status"] == "warn"
    assert "not Graph" in checks["clock"]["detail"]
    token = checks[f"token {PIXEL}"]
    assert "the server at graph_url is not Graph" in token["fix"]


def test_a_graph_url_with_the_version_stops_the_doctor_at_the_config(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    # Before: graph ok, token warn "check api_version", exit 0; serve then held the pixel
    # on error 2500 forever.
    config = write_config(tmp_path, f"{emulator.url}/v26.0")
    result = runner.invoke(app, ["doctor", "--config", str(config)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{config}:2:1: graph_url: ")
    assert "must not include the Graph API version (/v26.0)" in result.stderr


def test_an_unknown_path_on_the_token_check_points_at_graph_url(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    # A proxy prefix the config accepts but Graph does not serve: Graph answers 2500.
    code, report = doctor(write_config(tmp_path, f"{emulator.url}/graph"))
    assert code == 1
    token = by_name(report)[f"token {PIXEL}"]
    assert token["status"] == "fail"
    assert "(2500)" in token["detail"]
    assert "api_version v26.0 is a version Graph serves" in token["fix"]
    assert "comes from graph_url" in token["fix"]
    assert "check api_version" not in token["fix"]


def test_a_test_event_code_left_on_warns_and_fails_under_strict(
    tmp_path: Path, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPIRELAY_TEST_DOCTOR_SHOP_SECRET", "shpss_secret")
    config = write_config(
        tmp_path,
        emulator.url,
        pixel_extra=(
            'test_event_code = "TEST12345"\n'
            '[webhooks.shop]\npreset = "shopify"\n'
            f'pixel_id = "{PIXEL}"\nsecret = {{ env = "CAPIRELAY_TEST_DOCTOR_SHOP_SECRET" }}\n'
            'test_event_code = "TEST999"\n'
        ),
    )
    code, report = doctor(config)
    assert (code, report["status"]) == (0, "warn")
    rows = [c for c in report["checks"] if c["name"] == "test events"]
    assert [(c["status"], c["detail"].split(" is set")[0]) for c in rows] == [
        ("warn", f"pixels.{PIXEL}.test_event_code"),
        ("warn", "webhooks.shop.test_event_code"),
    ]
    assert "(TEST12345)" in rows[0]["detail"]
    assert rows[0]["fix"].startswith(
        f"once testing is done, remove test_event_code from [pixels.{PIXEL}] (or unset "
        f"CAPIRELAY_PIXELS__{PIXEL}__TEST_EVENT_CODE) and restart the gateway"
    )
    assert "test events are not dropped" in rows[0]["fix"]
    assert [c["name"] for c in report["checks"] if c["status"] == "warn"] == ["test events"] * 2
    strict_code, _ = doctor(config, "--strict")
    assert strict_code == 1


def test_an_unreadable_webhook_secret_fails_naming_the_variable_or_file(
    tmp_path: Path, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CAPIRELAY_TEST_DOCTOR_UNSET", raising=False)
    missing = tmp_path / "no" / "such" / "file"
    hooks = (
        f'[webhooks.shopify]\npreset = "shopify"\npixel_id = "{PIXEL}"\n'
        'secret = { env = "CAPIRELAY_TEST_DOCTOR_UNSET" }\n'
        f'[webhooks.stripe]\npreset = "stripe"\npixel_id = "{PIXEL}"\n'
        f'secret = {{ file = "{missing}" }}\n'
    )
    config = write_config(tmp_path, emulator.url, pixel_extra=hooks)
    code, report = doctor(config)
    assert code == 1
    rows = [c for c in report["checks"] if c["name"] == "webhooks"]
    assert [(c["status"], c["detail"]) for c in rows] == [
        (
            "fail",
            "webhooks.shopify.secret (environment variable CAPIRELAY_TEST_DOCTOR_UNSET) "
            "is missing or empty",
        ),
        ("fail", f"webhooks.stripe.secret (file {missing}) is missing or empty"),
    ]
    assert rows[0]["fix"].startswith("export CAPIRELAY_TEST_DOCTOR_UNSET=<the webhook's signing")
    assert rows[1]["fix"].startswith(
        f"write the webhook's signing secret (from the sender's settings) into {missing}"
    )
    assert "POST /v1/webhooks/stripe is answered 503 webhook_secret_missing" in rows[1]["fix"]
    # Both set: one ok row, and nothing fails.
    monkeypatch.setenv("CAPIRELAY_TEST_DOCTOR_UNSET", "shpss_secret")
    missing.parent.mkdir(parents=True)
    missing.write_text("whsec_secret\n", encoding="utf-8")
    code, report = doctor(config)
    assert code == 0
    assert [c for c in report["checks"] if c["name"] == "webhooks"] == [
        {
            "name": "webhooks",
            "status": "ok",
            "detail": "2 signing secret(s) set and readable",
            "fix": None,
        }
    ]


def grant_only(emulator: RunningEmulator, scopes: list[str]) -> None:
    """The emulator's token now holds only ``scopes`` (as Business Settings can leave it)."""
    answer = httpx.post(
        f"{emulator.url}/_emulator/tokens/scopes", json={"access_token": TOKEN, "scopes": scopes}
    )
    assert answer.status_code == 200


def test_a_token_without_ads_management_is_told_to_get_that_permission(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    grant_only(emulator, ["ads_read"])
    code, report = doctor(write_config(tmp_path, emulator.url))
    assert code == 1
    token = by_name(report)[f"token {PIXEL}"]
    assert token["status"] == "fail"
    assert token["detail"] == (
        "valid, but not granted ads_management or business_management (scopes: ads_read), "
        f"which sending events to pixel {PIXEL} needs"
    )
    assert token["fix"].startswith("generate a new token with the ads_management permission")
    assert f"set the environment variable {TOKEN_ENV} (pixels.{PIXEL}.access_token)" in token["fix"]
    assert token["fix"] != explain(100, 33)


def test_a_token_with_business_management_alone_passes_as_graph_takes_its_events(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    # Reference (official-sdk-and-spec.md): the only permission text for a dataset names
    # "ads_management or business_management"; the emulator takes events from such a
    # token, and the doctor failed it ("not granted ads_management").
    grant_only(emulator, ["business_management"])
    event = wire_event(
        "bm-only", int(time.time()), em=[sha256_hex("a@example.com")], client_user_agent="UA"
    )
    sent = httpx.post(
        f"{emulator.url}/v26.0/{PIXEL}/events",
        json={"data": [event], "access_token": TOKEN},
    )
    assert sent.status_code == 200, sent.text
    code, report = doctor(write_config(tmp_path, emulator.url))
    token = by_name(report)[f"token {PIXEL}"]
    assert (token["status"], token["fix"]) == ("ok", None), token
    assert token["detail"] == "valid, never expires; scopes: business_management"
    assert code == 0


def test_a_token_granted_on_another_pixel_is_told_to_get_access_to_this_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other_pixel, other_token = "5550001111", "EAAotherTOKENabcdefghijklmnopqrstu"
    monkeypatch.setenv(TOKEN_ENV, other_token)  # its grants name the other pixel only
    with run_emulator(pixels={PIXEL: TOKEN, other_pixel: other_token}) as emulator:
        code, report = doctor(write_config(tmp_path, emulator.url))
    assert code == 1
    token = by_name(report)[f"token {PIXEL}"]
    assert token["detail"] == (
        f"valid, but its ads_management and business_management grants do not include pixel {PIXEL}"
    )
    assert token["fix"] == explain(100, 33)


def test_a_webhook_for_an_unconfigured_pixel_is_told_which_pixels_exist(
    tmp_path: Path, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPIRELAY_TEST_DOCTOR_HOOK", "s3cret")
    hooks = (
        '[webhooks.shop]\npreset = "shopify"\npixel_id = "123456789"\n'
        'secret = { env = "CAPIRELAY_TEST_DOCTOR_HOOK" }\n'
    )
    config = write_config(tmp_path, emulator.url, pixel_extra=hooks)
    # A config mistake told with the others when the settings load (exit 2, one line at
    # the webhook's pixel_id), not a check that runs once everything else is right.
    result = runner.invoke(app, ["doctor", "--config", str(config), "--json"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"{config}:8:1: webhooks.shop.pixel_id: pixel_id 123456789 is not configured under "
        f"[pixels]; add a [pixels.123456789] table, or set pixel_id to a configured pixel "
        f"({PIXEL})"
    ]
