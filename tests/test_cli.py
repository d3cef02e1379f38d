"""The capirelay CLI: hash, send (against a live emulator) and emulator."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from capirelay.cli import app
from capirelay.config import PixelSettings
from capirelay.emulator import RunningEmulator, run_emulator
from capirelay.ingest import prepare_event

PIXEL = "1234567890"
TOKEN = "EAAclitokenfortests0123456789abcdef"
RAW_EMAIL = "Buyer.One@Example.com"

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def raw_event(event_id: str = "cli-1", **overrides: Any) -> dict[str, Any]:
    event = {
        "event_name": "Purchase",
        "event_time": int(time.time()) - 60,
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop.example/checkout",
        "user_data": {
            "email": RAW_EMAIL,
            "client_ip_address": "203.0.113.7",
            "client_user_agent": "Mozilla/5.0",
        },
        "custom_data": {"value": 10, "currency": "USD"},
    }
    event.update(overrides)
    return event


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with run_emulator(pixels={PIXEL: TOKEN}) as running:
        yield running


def write_json(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(data))
    return path


# -- hash ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "normalized"),
    [
        (["email", "  Foo@Example.COM "], "foo@example.com"),
        (["em", "foo@example.com"], "foo@example.com"),
        (["ph", "(650) 555-1212", "--country", "US"], "16505551212"),
        (["ct", "San Francisco"], "sanfrancisco"),
    ],
)
def test_hash_prints_normalized_value_and_sha256(args: list[str], normalized: str) -> None:
    result = runner.invoke(app, ["hash", *args])
    assert result.exit_code == 0, result.output
    assert f"normalized: {normalized}" in result.output
    assert f"sha256:     {hashlib.sha256(normalized.encode()).hexdigest()}" in result.output


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["em", "not-an-email"], "cannot use this value for em"),
        (["nonsense", "x"], "unknown field"),
    ],
)
def test_hash_bad_input_exits_2(args: list[str], reason: str) -> None:
    result = runner.invoke(app, ["hash", *args])
    assert result.exit_code == 2
    assert reason in result.output


# -- send ----------------------------------------------------------------------------------


def send(emulator: RunningEmulator, path: Path, *extra: str, token: str | None = TOKEN) -> Any:
    env = {"CAPIRELAY_ACCESS_TOKEN": token} if token is not None else {}
    return runner.invoke(
        app,
        ["send", str(path), "--pixel", PIXEL, "--graph-url", emulator.url, *extra],
        env={**env, "COLUMNS": "200"},
    )


def test_send_hashes_and_delivers(emulator: RunningEmulator, tmp_path: Path) -> None:
    result = send(emulator, write_json(tmp_path, raw_event()), "--test-event-code", "TEST42")
    assert result.exit_code == 0, result.output
    assert "sent 1 event to pixel 1234567890: events_received 1, fbtrace_id " in result.output
    assert "it shows in Events Manager > Test events under TEST42" in result.output
    (stored,) = emulator.state.events(PIXEL, test_event_code="TEST42")
    email_hashes = stored["event"]["user_data"]["em"]
    expected = hashlib.sha256(RAW_EMAIL.strip().lower().encode()).hexdigest()
    assert expected in (email_hashes if isinstance(email_hashes, list) else [email_hashes])
    assert RAW_EMAIL.lower() not in json.dumps(stored)


@pytest.mark.parametrize("shape", ["list", "data"])
def test_send_accepts_a_list_or_a_data_envelope(
    emulator: RunningEmulator, tmp_path: Path, shape: str
) -> None:
    events = [raw_event("a"), raw_event("b")]
    payload = events if shape == "list" else {"data": events}
    result = send(emulator, write_json(tmp_path, payload))
    assert result.exit_code == 0, result.output
    assert "events_received 2" in result.output


def test_send_without_token_env_exits_2(emulator: RunningEmulator, tmp_path: Path) -> None:
    result = send(emulator, write_json(tmp_path, raw_event()), token=None)
    assert result.exit_code == 2
    assert "CAPIRELAY_ACCESS_TOKEN" in result.output


def test_send_with_a_bad_token_explains_and_exits_1(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    secret = "EAAwrongtokenwrongtoken123456789"
    result = send(emulator, write_json(tmp_path, raw_event()), token=secret)
    assert result.exit_code == 1
    assert "not sent: the request with 1 event failed (HTTP 400, code 190" in result.stderr
    assert "system-user token with the ads_management permission" in result.output
    assert "2 of" not in result.output and "the event was not sent" in result.output
    assert secret not in result.output


def test_send_an_invalid_event_names_its_index(emulator: RunningEmulator, tmp_path: Path) -> None:
    old = raw_event("old", event_time=int(time.time()) - 9 * 86400)
    result = send(emulator, write_json(tmp_path, [raw_event("ok"), old]))
    assert result.exit_code == 1
    assert "event 1 (Purchase, event_id old): not sent" in result.output
    assert "7 days" in result.output
    assert RAW_EMAIL not in result.output
    # The valid event was still sent: one bad event does not cost the others.
    assert [e["event"]["event_id"] for e in emulator.state.events(PIXEL)] == ["ok"]


def test_send_lists_every_problem_and_sends_the_valid_events(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    bad_purchase = raw_event("p-1", custom_data={"value": "lots", "currency": "DOLLARS"})
    del bad_purchase["action_source"]
    lead = raw_event("lead-1", event_name="Lead", custom_data={})
    result = send(emulator, write_json(tmp_path, [bad_purchase, lead]))
    assert result.exit_code == 1
    err = result.stderr
    assert "event 0 (Purchase, event_id p-1): not sent" in err
    problems = [line for line in err.splitlines() if line.startswith("  error   ")]
    assert len(problems) >= 3, err  # every problem, not only the first
    assert any("action_source" in line for line in problems)
    assert any("custom_data.value" in line for line in problems)
    assert any("currency" in line for line in err.splitlines())
    assert "1 of 2 events was not sent (why: above)" in err
    assert "send it again once fixed" in err
    assert "dead-letter" not in result.output and "replay" not in result.output
    assert "sent 1 event to pixel" in result.stdout
    assert [e["event"]["event_id"] for e in emulator.state.events(PIXEL)] == ["lead-1"]


@pytest.mark.parametrize(
    ("valid", "invalid", "summary"),
    [
        (0, 1, "the event was not sent (why: above)"),
        (1, 1, "1 of 2 events was not sent (why: above)"),
        (0, 2, "neither event was sent (why: above)"),
        (1, 2, "2 of 3 events were not sent (why: above)"),
        (0, 3, "none of the 3 events was sent (why: above)"),
        (2, 1, "1 of 3 events was not sent (why: above)"),
    ],
)
def test_send_counts_what_was_not_sent_in_plain_english(
    emulator: RunningEmulator, tmp_path: Path, valid: int, invalid: int, summary: str
) -> None:
    events = [raw_event(f"ok-{n}") for n in range(valid)]
    for n in range(invalid):
        bad = raw_event(f"bad-{n}")
        del bad["action_source"]
        events.append(bad)
    result = send(emulator, write_json(tmp_path, events))
    assert result.exit_code == 1
    assert summary in result.stderr, result.stderr
    assert f"send {'it' if invalid == 1 else 'them'} again once fixed" in result.stderr
    assert " 1 events " not in result.stderr and "event(s) was" not in result.stderr
    sent = [e["event"]["event_id"] for e in emulator.state.events(PIXEL)]
    assert sent == [f"ok-{n}" for n in range(valid)]


def test_send_names_the_dropped_field_when_it_was_the_only_user_data(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    # The e-mail was given but could not be normalized: user_data is not "missing", its
    # only value was dropped. send says so in the words the gateway's ingest uses.
    bad = raw_event("only-em", action_source="system_generated", user_data={"em": "nope"})
    result = send(emulator, write_json(tmp_path, bad))
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("  error   ")]
    assert len(errors) == 1, result.stderr
    assert "is required" not in errors[0]
    assert "user_data.em" in errors[0] and "dropped" in errors[0]
    assert "name@example.com" in errors[0]  # the fix
    assert "nope" not in result.output
    ingest = prepare_event(
        bad, pixel_id=PIXEL, pixel=PixelSettings(), now=time.time(), test_event_code=None,
        source="api", max_future_skew=300,
    )  # fmt: skip
    [gateway] = [p for p in ingest.problems if p.is_error]
    assert errors[0] == f"  error   {gateway.field}: {gateway.message}"
    assert emulator.state.events(PIXEL) == []


def test_send_tells_values_dropped_from_user_data_once(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    # Three bad e-mails printed the same sentence three times inside the error, then once
    # more as the field's warning: now the error names the field and its count, and says
    # the reason and the fix once; no warning line repeats it.
    user_data = {"em": ["bad", "bad2", "bad3"]}
    bad = raw_event("three-em", action_source="system_generated", user_data=user_data)
    result = send(emulator, write_json(tmp_path, bad))
    assert result.exit_code == 1
    [line] = [line for line in result.stderr.splitlines() if line.startswith("  error   ")]
    assert "user_data.em (3 values) could not be normalized and were dropped" in line
    assert not [line for line in result.stderr.splitlines() if line.startswith("  warning ")]
    assert result.stderr.count("exactly one '@'") == 1
    assert result.stderr.count("name@example.com") == 1
    assert "bad2" not in result.output
    assert emulator.state.events(PIXEL) == []


def test_send_prints_values_of_one_field_dropped_for_one_reason_as_one_counted_line(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    # The event still has an e-mail-free way to match, so it is sent; its three e-mails
    # without an '@' are one warning that says how many values it covers.
    emails = ["not-an-email", "also bad", "nope"]
    event = raw_event("three-bad-em")
    event["user_data"] = {**event["user_data"], "email": emails}
    result = send(emulator, write_json(tmp_path, event))
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("  warning ")]
    [line] = [line for line in warnings if "user_data.em" in line]
    assert line.startswith(
        "  warning user_data.em: 3 values of user_data.em could not be normalized"
    ), line
    assert not any(value in result.output for value in emails)
    assert [e["event"]["event_id"] for e in emulator.state.events(PIXEL)] == ["three-bad-em"]


def test_send_to_an_unreachable_graph_says_nothing_was_retried(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    result = runner.invoke(
        app,
        [
            "send",
            str(write_json(tmp_path, raw_event())),
            "--pixel",
            PIXEL,
            "--graph-url",
            f"http://127.0.0.1:{closed}",
        ],
        env={"CAPIRELAY_ACCESS_TOKEN": TOKEN},
    )
    assert result.exit_code == 1
    assert "not sent: the request with 1 event failed (no answer)" in result.stderr
    assert "nothing will be retried" in result.stderr
    assert "retried automatically" not in result.output
    assert "no action needed" not in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "not valid JSON"), ("[]", "holds no events")],
)
def test_send_rejects_bad_files(
    emulator: RunningEmulator, tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    result = send(emulator, path)
    assert result.exit_code == 2
    assert message in result.output


def test_send_model_errors_do_not_echo_values(emulator: RunningEmulator, tmp_path: Path) -> None:
    result = send(emulator, write_json(tmp_path, raw_event(event_time="yesterday at noon")))
    assert result.exit_code == 1
    assert "event 0 (Purchase, event_id cli-1): not sent" in result.output
    assert "yesterday at noon" not in result.output


def test_send_names_events_that_are_not_objects(emulator: RunningEmulator, tmp_path: Path) -> None:
    result = send(emulator, write_json(tmp_path, [1, raw_event("fine")]))
    assert result.exit_code == 1
    assert "event 0 (?): not sent" in result.stderr
    assert "the event must be a JSON object" in result.stderr
    assert [e["event"]["event_id"] for e in emulator.state.events(PIXEL)] == ["fine"]


def test_send_rejects_a_non_numeric_pixel(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["send", str(write_json(tmp_path, raw_event())), "--pixel", "abc"],
        env={"CAPIRELAY_ACCESS_TOKEN": TOKEN},
    )
    assert result.exit_code == 2


# -- emulator ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--pixel", "nocolon"],
        ["--pixel", "abc:T"],
        ["--latency-ms", "fast"],
        ["--fail-rate", "2"],
        ["--fault", "not json"],
        ["--fault", "[1]"],
        ["--fault", '{"kind":"meteor"}'],
        ["--fault", '{"kind":"timeout","count":0}'],
    ],
)
def test_emulator_rejects_bad_options(args: list[str]) -> None:
    result = runner.invoke(app, ["emulator", *args])
    assert result.exit_code == 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_emulator_command_serves_in_the_foreground() -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "capirelay.emulator",
            "--port",
            str(port),
            "--pixel",
            f"{PIXEL}:{TOKEN}",
            "--latency-ms",
            "1-3",
            "--fault",
            '{"kind": "throttle", "code": 613, "count": 1}',
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"{url}/_emulator/stats", timeout=0.5)
                break
            except httpx.TransportError:
                assert process.poll() is None, "the emulator exited"
                assert time.monotonic() < deadline, "the emulator did not start"
                time.sleep(0.1)
        kinds = sorted(f["kind"] for f in httpx.get(f"{url}/_emulator/faults").json()["data"])
        assert kinds == ["latency", "throttle"]
        post = lambda: httpx.post(  # noqa: E731
            f"{url}/v26.0/{PIXEL}/events",
            json={
                "data": [
                    raw_event()
                    | {
                        "user_data": {
                            "em": "a" * 64,
                            "client_user_agent": "UA",
                            "client_ip_address": "203.0.113.7",
                        }
                    }
                ],
                "access_token": TOKEN,
            },
        )
        throttled = post()  # the --fault from the command line, once
        assert throttled.status_code == 400
        assert throttled.json()["error"]["code"] == 613
        response = post()
        assert response.status_code == 200, response.text
        assert len(httpx.get(f"{url}/_emulator/faults").json()["data"]) == 1
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    banner = output.decode()
    assert f"capirelay emulator on http://127.0.0.1:{port}" in banner
    assert TOKEN not in banner


def test_hash_passes_an_existing_sha256_through() -> None:
    digest = hashlib.sha256(b"john_smith@gmail.com").hexdigest()
    result = runner.invoke(app, ["hash", "em", digest.upper()])
    assert result.exit_code == 0, result.output
    assert "already a SHA-256 hash" in result.output
    assert f"sha256:     {digest}" in result.output


def send_under_fault(emulator: RunningEmulator, tmp_path: Path, fault: dict[str, Any]) -> Any:
    """``send`` of the sample event while the emulator answers with ``fault``."""
    httpx.post(f"{emulator.url}/_emulator/faults", json={"faults": [fault]}).raise_for_status()
    try:
        return send(emulator, write_json(tmp_path, raw_event()))
    finally:
        httpx.delete(f"{emulator.url}/_emulator/faults").raise_for_status()


@pytest.mark.parametrize(
    ("fault", "header", "fix"),
    [
        # An unknown code: the pixel is paused in the gateway; send says so, not nothing.
        ({"kind": "graph_error", "code": 2200}, "code 2200", "check Meta's status"),
        # LDU required: the specific fix, with the subcode in the header.
        (
            {"kind": "invalid_event", "event_id": "cli-1", "subcode": 2804030},
            "code 100/2804030",
            "data_processing_options",
        ),
        ({"kind": "graph_error", "code": 368}, "code 368", "policy"),
    ],
    ids=["unknown", "ldu", "policy"],
)
def test_send_explains_each_meta_error_with_its_own_fix(
    emulator: RunningEmulator, tmp_path: Path, fault: dict[str, Any], header: str, fix: str
) -> None:
    result = send_under_fault(emulator, tmp_path, fault)
    assert result.exit_code == 1
    assert header in result.stderr, result.stderr
    what_to_do = next(line for line in result.stderr.splitlines() if "what to do:" in line)
    assert fix.lower() in what_to_do.lower(), result.stderr


def test_send_does_not_offer_the_gateways_replay_or_retries(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    # 100/2804xxx: the gateway's sentence says "replay from the dead-letter queue"; send
    # keeps no queue (an adversarial review of the first version).
    fault = {"kind": "invalid_event", "event_id": "cli-1", "subcode": 2804050}
    result = send_under_fault(emulator, tmp_path, fault)
    assert result.exit_code == 1
    assert "dead-letter" not in result.stderr and "replay" not in result.stderr
    assert "run the command again" in result.stderr
