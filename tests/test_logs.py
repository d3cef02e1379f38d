"""Structured JSON logs: line shape, redaction, and the delivery engine's one line per batch."""

from __future__ import annotations

import io
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from capirelay.config import DeliverySettings, PixelSettings, Secret, Settings
from capirelay.delivery import DeliveryEngine
from capirelay.emulator.testing import run_emulator
from capirelay.logs import (
    REDACTED,
    JsonFormatter,
    RedactionFilter,
    TextFormatter,
    configure_logging,
    logging_configured,
    redact_text,
)
from capirelay.metrics import Metrics
from capirelay.normalize import sha256_hex
from capirelay.outbox import NewEvent
from capirelay.outbox.memory import InMemoryOutbox
from capirelay.server.fast_path import log_access

PIXEL = "1234567890123456"
TOKEN = "EAAlogtestTOKEN0123456789abcdefXYZ"
TOKEN_ENV = "CAPIRELAY_TEST_LOGS_TOKEN"


def record(msg: str, *args: Any, extra: dict[str, Any] | None = None) -> logging.LogRecord:
    rec = logging.LogRecord("capirelay.test", logging.INFO, __file__, 1, msg, args, None)
    for key, value in (extra or {}).items():
        setattr(rec, key, value)
    return rec


def json_line(rec: logging.LogRecord) -> dict[str, Any]:
    RedactionFilter().filter(rec)
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    parsed: dict[str, Any] = orjson.loads(line)
    return parsed


def test_json_line_shape_with_extra_fields() -> None:
    rec = record(
        "pixel %s: %d events delivered",
        PIXEL,
        3,
        extra={"pixel": PIXEL, "count": 3, "result": "ok", "latency_ms": 12.5, "fbtrace_id": "A1"},
    )
    line = json_line(rec)
    assert line == {
        "ts": line["ts"],
        "level": "info",
        "logger": "capirelay.test",
        "message": f"pixel {PIXEL}: 3 events delivered",
        "pixel": PIXEL,
        "count": 3,
        "result": "ok",
        "latency_ms": 12.5,
        "fbtrace_id": "A1",
    }
    assert line["ts"].endswith("+00:00") and "T" in line["ts"]


REDACTION_CASES = [
    (f"token {TOKEN} refused", "token [token] refused"),
    (
        "POST /v26.0/1/events?access_token=abc123&x=1",
        "POST /v26.0/1/events?access_token=[token]&x=1",
    ),
    ("debug input_token=secret-ish", "debug input_token=[token]"),
    ("user Jane.Doe+shop@example.co.uk failed", "user [email] failed"),
    ("call +1 (555) 123-4567 now", "call [phone] now"),
    ("call +33612345678 now", "call [phone] now"),
    ("call 555-123-4567 now", "call [phone] now"),
    ("from 203.0.113.9 via proxy", "from [ip] via proxy"),
    ("from 2001:db8::1 via proxy", "from [ip] via proxy"),
    # Ids, versions, clock times and hashes are not identifiers: left alone.
    (f"pixel {PIXEL}: 12 events at 1732600000", f"pixel {PIXEL}: 12 events at 1732600000"),
    ("api v26.0 at 04:03:07", "api v26.0 at 04:03:07"),
    ("em " + sha256_hex("a@b.co"), "em " + sha256_hex("a@b.co")),
    ("version 1.2.3", "version 1.2.3"),
    ("running on http://127.0.0.1:8080 and [::1]", "running on http://127.0.0.1:8080 and [::1]"),
    ("bound to 0.0.0.0", "bound to 0.0.0.0"),
]


@pytest.mark.parametrize(("text", "expected"), REDACTION_CASES)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_redaction_covers_args_extras_and_exceptions() -> None:
    try:
        raise ValueError(f"bad token {TOKEN} for jane@example.com")
    except ValueError:
        rec = logging.LogRecord(
            "capirelay.test",
            logging.ERROR,
            __file__,
            1,
            "failed for %s",
            ("jane@example.com",),
            exc_info=sys.exc_info(),
        )
    rec.client = {"ip": "203.0.113.9", "emails": ["x@example.org"]}
    line = json_line(rec)
    text = orjson.dumps(line).decode()
    for secret in (TOKEN, "jane@example.com", "203.0.113.9", "x@example.org"):
        assert secret not in text
    assert line["message"] == "failed for [email]"
    assert line["client"] == {"ip": "[ip]", "emails": ["[email]"]}
    assert "ValueError: bad token [token] for [email]" in line["exc"]


def test_text_formatter_appends_extras() -> None:
    rec = record("batch sent", extra={"pixel": PIXEL, "count": 2})
    assert TextFormatter().format(rec).endswith(f"batch sent [pixel={PIXEL} count=2]")


def test_a_text_record_stays_on_one_line_whatever_its_message_carries() -> None:
    """Text quoted from Meta's answers (a Diagnostics check's message) or sent by a
    caller may hold line breaks; each record is still one line, its extras on it."""
    rec = record(
        "pixel %s: Meta check %s started failing: %s",
        PIXEL,
        "ssapi",
        "Events are missing.\nFix your setup:\r\n2025-01-01 ERROR forged line",
        extra={"pixel": PIXEL, "note": "two\nlines"},
    )
    line = TextFormatter().format(rec)
    assert "\n" not in line and "\r" not in line
    assert line.endswith(
        "started failing: Events are missing.\\nFix your setup:\\r\\n2025-01-01 ERROR "
        f"forged line [pixel={PIXEL} note=two\\nlines]"
    )


def test_a_traceback_still_follows_its_record_and_the_extras_stay_on_its_first_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord(
            "capirelay.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    rec.pixel = PIXEL
    first, *rest = TextFormatter().format(rec).split("\n")
    assert first.endswith(f"failed [pixel={PIXEL}]")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: boom"


def test_configure_logging_json_routes_every_logger_through_redaction() -> None:
    stream = io.StringIO()
    # logging_configured puts back all that configure_logging changes, flags included.
    with logging_configured("info", json=True, stream=stream):
        configure_logging("info", json=True, stream=stream)  # idempotent: no doubled lines
        logging.getLogger("capirelay.x").info("sent", extra={"pixel": PIXEL, "count": 1})
        logging.getLogger("uvicorn.error").warning(
            "client 203.0.113.9 hung up", extra={"color_message": "\x1b[36mclient\x1b[0m"}
        )
        logging.getLogger("capirelay.x").debug("not at info level")
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [(x["logger"], x["message"]) for x in lines] == [
        ("capirelay.x", "sent"),
        ("uvicorn.error", "client [ip] hung up"),
    ]
    assert lines[0]["pixel"] == PIXEL
    assert "color_message" not in lines[1]


async def test_delivery_logs_one_json_line_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactionFilter())
    delivery_logger = logging.getLogger("capirelay.delivery")
    delivery_logger.addHandler(handler)
    level = delivery_logger.level
    delivery_logger.setLevel(logging.INFO)
    settings = Settings(
        pixels={PIXEL: PixelSettings(access_token=Secret(env=TOKEN_ENV))},
        delivery=DeliverySettings(linger_ms=0, poll_seconds=0.05, batch_size=1000),
    )
    outbox = InMemoryOutbox()  # the log lines are the subject, not the storage
    await outbox.open()
    try:
        async with run_emulator(pixels={PIXEL: TOKEN}) as emulator:
            settings.graph_url = emulator.url
            now = time.time()
            await outbox.enqueue([_event(i, now) for i in range(25)], now=now)
            engine = DeliveryEngine(outbox, settings, Metrics())
            await engine.start()
            try:
                assert await engine.drain(timeout=10)
            finally:
                await engine.stop(timeout=2)
    finally:
        await outbox.close()
        delivery_logger.removeHandler(handler)
        delivery_logger.setLevel(level)
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    batches = [line for line in lines if "count" in line and line.get("result") == "ok"]
    assert len(batches) == 1
    batch = batches[0]
    assert batch["pixel"] == PIXEL and batch["count"] == 25
    assert isinstance(batch["latency_ms"], float) and batch["fbtrace_id"]
    assert TOKEN not in stream.getvalue()
    assert "jane" not in stream.getvalue()


def _event(i: int, now: float) -> NewEvent:
    payload: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": int(now),
        "event_id": f"order-{i}",
        "action_source": "website",
        "event_source_url": "https://shop.example/checkout",
        "user_data": {
            "em": sha256_hex(f"jane{i}@example.com"),
            "client_user_agent": "Mozilla/5.0",
        },
        "custom_data": {"currency": "EUR", "value": 10.0},
    }
    return NewEvent(
        pixel_id=PIXEL,
        event_name="Purchase",
        event_id=f"order-{i}",
        payload=orjson.dumps(payload),
        event_time=int(now),
        deadline=now + 7 * 86400,
    )


@pytest.mark.parametrize(
    "created",
    [
        0.0,
        1.0,
        1.9996,
        59.999,
        1733570000.123456,
        1733570000.9999,
        1796630400.0005,
        1765000000.1549996,  # datetime rounds the microseconds up into the next millisecond
        1765000000.9999996,  # ... and into the next second
    ],
)
def test_timestamps_read_as_the_standard_formatters_write_them(created: float) -> None:
    # Both formatters remember the text of the current second; each line must still read
    # exactly as logging's own formatting (text) and datetime's (JSON) would give it.
    text, json = TextFormatter(), JsonFormatter()
    for moment in (created - 1.0005, created, created + 0.0004, created + 1):
        if moment < 0:
            continue
        rec = logging.makeLogRecord({"msg": "hello", "created": moment})
        rec.msecs = int((moment - int(moment)) * 1000)  # as logging computes it
        assert text.formatTime(rec) == logging.Formatter().formatTime(rec)
        expected = datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")
        assert json_line(rec)["ts"] == expected
        assert JsonFormatter().format(rec) == json.format(rec)


@pytest.mark.parametrize("json", [False, True])
def test_the_access_line_is_redacted_escaped_and_reads_as_before(json: bool) -> None:
    stream = io.StringIO()
    with logging_configured("info", json=json, stream=stream):
        scope = {"method": "GET", "path": f"/x/jane@example.com/{TOKEN}/203.0.113.9\n/end"}
        for _ in range(2):  # the second from the gateway's cache of shown paths
            log_access(scope, 404, time.perf_counter())
        log_access({"method": "POST", "path": "/v1/events"}, 202, time.perf_counter())
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    messages = [orjson.loads(line)["message"] if json else line for line in lines]
    for message in messages[:2]:
        assert "GET /x/[email]/[token]/[ip]\\n/end 404 " in message
        assert message.endswith("ms")
    assert "POST /v1/events 202 " in messages[2]
    if json:
        parsed = orjson.loads(lines[2])
        assert set(parsed) == {"ts", "level", "logger", "message"}
        assert parsed["logger"] == "capirelay.access" and parsed["level"] == "info"
    else:
        # No extra field shown: the marker that skips the second redaction is not one.
        assert lines[2].split(" ")[2:5] == ["INFO", "capirelay.access", "POST"]
        assert not lines[2].endswith("]")
    assert "jane" not in stream.getvalue() and TOKEN not in stream.getvalue()


@pytest.mark.parametrize(
    ("method", "path", "shown"),
    [
        # An escape ends in a word character, which hid what followed from the redaction.
        ("GET", "/v1/x\n8.8.8.8", "GET /v1/x\\n[ip] "),
        ("GET", "/u\x00+15551234567", "GET /u\\x00[phone] "),
        ("GET", f"/\x7f{TOKEN}", "GET /\\x7f[token] "),
        # h11, unlike httptools, takes any token as a method.
        ("+15551234567", "/", "[phone] / "),
        ("8.8.8.8", "/a", "[ip] /a "),
    ],
)
def test_the_access_line_redacts_around_escapes_and_odd_methods(
    method: str, path: str, shown: str
) -> None:
    stream = io.StringIO()
    with logging_configured("info", stream=stream):
        log_access({"method": method, "path": path}, 200, time.perf_counter())
    [line] = stream.getvalue().splitlines()
    assert f" capirelay.access {shown}200 " in line


def test_only_the_access_lines_own_mark_skips_the_redaction() -> None:
    stream = io.StringIO()
    with logging_configured("info", stream=stream):
        logging.getLogger("capirelay.test").info(
            "peer 8.8.8.8", extra={REDACTED: True, "client": "9.9.9.9"}
        )
    assert "8.8.8.8" not in stream.getvalue() and "9.9.9.9" not in stream.getvalue()
    assert REDACTED not in stream.getvalue()


def test_logging_configured_puts_the_record_flags_back() -> None:
    before = (logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    with logging_configured("info", stream=io.StringIO()):
        rec = logging.getLogger("capirelay.test").makeRecord(
            "capirelay.test", logging.INFO, __file__, 1, "x", None, None
        )
        assert rec.threadName is None and rec.processName is None
    assert (logging.logThreads, logging.logProcesses, logging.logMultiprocessing) == before


def test_warnings_are_json_lines_and_a_retiring_version_is_said_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import warnings

    from capirelay.graph.versions import warn_if_retiring

    stream = io.StringIO()
    with logging_configured("info", json=True, stream=stream):
        warn_if_retiring("v21.0")  # near its sunset on any day before 2027-01-21
        warnings.warn("some library's own warning", UserWarning, stacklevel=1)
    lines = stream.getvalue().splitlines()
    records = [orjson.loads(line) for line in lines]  # every line is JSON
    about_version = [r for r in records if "v21.0" in r["message"]]
    assert len(about_version) == 1 and about_version[0]["logger"] == "capirelay.graph"
    assert any("some library's own warning" in r["message"] for r in records)
    assert capsys.readouterr().err == ""  # nothing raw on stderr beside the log
    # Afterwards warnings are as they were: a library user still gets the warning.
    with pytest.warns(UserWarning, match="v21.0"):
        warn_if_retiring("v21.0")
