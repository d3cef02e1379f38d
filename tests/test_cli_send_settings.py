"""`capirelay send` finds its settings like every other command: --config, CAPIRELAY_CONFIG,
./capirelay.toml, CAPIRELAY_* variables; it sends to their graph_url with the pixel's
api_version and access token, and its own flags and CAPIRELAY_ACCESS_TOKEN still win."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from capirelay.cli import app
from capirelay.emulator import RunningEmulator, run_emulator

PIXEL = "1234567890"
TOKEN = "EAAsendsettingstoken0123456789abcdef"
WRONG_TOKEN = "EAAnotthepixelstoken0123456789abcdef"
TOKEN_ENV = "META_ACCESS_TOKEN"

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with run_emulator(pixels={PIXEL: TOKEN}) as running:
        yield running


@pytest.fixture
def closed_url() -> str:
    """The URL of a loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def write_config(directory: Path, graph_url: str, pixel_extra: str = "") -> Path:
    """A config as `capirelay init --graph-url ... --token-env META_ACCESS_TOKEN` writes."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "capirelay.toml"
    config.write_text(
        f'graph_url = "{graph_url}"\n'
        f"[pixels.{PIXEL}]\n"
        f'access_token = {{ env = "{TOKEN_ENV}" }}\n'
        f"{pixel_extra}"
    )
    return config


def write_event(directory: Path, event_id: str = "send-settings-1") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "event.json"
    event: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": int(time.time()) - 60,
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop.example/checkout",
        "user_data": {"email": "buyer@example.com", "client_user_agent": "Mozilla/5.0"},
        "custom_data": {"value": 10, "currency": "USD"},
    }
    path.write_text(json.dumps(event))
    return path


def send(*args: str, env: dict[str, str | None]) -> Any:
    base: dict[str, str | None] = {
        "CAPIRELAY_ACCESS_TOKEN": None,
        "CAPIRELAY_CONFIG": None,
        "CAPIRELAY_GRAPH_URL": None,
        TOKEN_ENV: None,
    }
    return runner.invoke(app, ["send", *args, "--pixel", PIXEL], env={**base, **env})


def sent_ids(emulator: RunningEmulator) -> list[str]:
    return [e["event"]["event_id"] for e in emulator.state.events(PIXEL)]


@pytest.mark.parametrize("found_by", ["./capirelay.toml", "--config", "CAPIRELAY_CONFIG"])
def test_send_uses_the_configs_graph_url_and_the_pixels_token(
    emulator: RunningEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    found_by: str,
) -> None:
    config = write_config(tmp_path / "project", emulator.url)
    event = write_event(tmp_path / "events")
    monkeypatch.chdir(config.parent if found_by == "./capirelay.toml" else tmp_path)
    args = [str(event), *(["--config", str(config)] if found_by == "--config" else [])]
    env = {TOKEN_ENV: TOKEN}
    if found_by == "CAPIRELAY_CONFIG":
        env["CAPIRELAY_CONFIG"] = str(config)
    result = send(*args, env=env)
    assert result.exit_code == 0, result.output
    assert sent_ids(emulator) == ["send-settings-1"]


def test_send_reads_capirelay_graph_url_and_the_access_token_variable_without_a_config(
    emulator: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"CAPIRELAY_GRAPH_URL": emulator.url, "CAPIRELAY_ACCESS_TOKEN": TOKEN}
    result = send(str(write_event(tmp_path)), env=env)
    assert result.exit_code == 0, result.output
    assert sent_ids(emulator) == ["send-settings-1"]


def test_send_uses_the_pixels_api_version(
    emulator: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, emulator.url, 'api_version = "v24.0"\n')
    monkeypatch.chdir(tmp_path)
    result = send(str(write_event(tmp_path)), env={TOKEN_ENV: TOKEN})
    assert result.exit_code == 0, result.output
    [request] = emulator.state.request_log()
    assert request["path"] == f"/v24.0/{PIXEL}/events"


def test_flags_and_capirelay_access_token_win_over_the_config(
    emulator: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_url: str
) -> None:
    # The config points elsewhere, with another token and version: what the command line
    # says is what is used.
    write_config(tmp_path, closed_url, 'api_version = "v24.0"\n')
    monkeypatch.chdir(tmp_path)
    args = [str(write_event(tmp_path)), "--graph-url", emulator.url, "--api-version", "v25.0"]
    result = send(*args, env={TOKEN_ENV: WRONG_TOKEN, "CAPIRELAY_ACCESS_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    [request] = emulator.state.request_log()
    assert request["path"] == f"/v25.0/{PIXEL}/events"
    assert sent_ids(emulator) == ["send-settings-1"]


def test_the_access_token_variable_wins_in_the_reported_project(
    emulator: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The newcomer's project: init --graph-url (the emulator) --token-env META_ACCESS_TOKEN,
    # then send with CAPIRELAY_GRAPH_URL and CAPIRELAY_ACCESS_TOKEN, META_ACCESS_TOKEN unset.
    write_config(tmp_path, emulator.url)
    write_event(tmp_path)
    monkeypatch.chdir(tmp_path)
    env = {"CAPIRELAY_GRAPH_URL": emulator.url, "CAPIRELAY_ACCESS_TOKEN": TOKEN}
    result = send("event.json", env=env)
    assert result.exit_code == 0, result.output
    assert sent_ids(emulator) == ["send-settings-1"]


def test_a_configured_token_whose_variable_is_unset_is_named_with_both_fixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_url: str
) -> None:
    write_config(tmp_path, closed_url)
    monkeypatch.chdir(tmp_path)
    result = send(str(write_event(tmp_path)), env={})
    assert result.exit_code == 2
    assert f"pixels.{PIXEL}.access_token" in result.stderr, result.stderr
    assert TOKEN_ENV in result.stderr and "CAPIRELAY_ACCESS_TOKEN" in result.stderr


def test_no_token_anywhere_says_where_one_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = send(str(write_event(tmp_path)), env={})
    assert result.exit_code == 2
    assert "CAPIRELAY_ACCESS_TOKEN" in result.stderr
    assert f"[pixels.{PIXEL}]" in result.stderr, result.stderr


def test_a_config_mistake_stops_send_with_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "capirelay.toml").write_text('graph_url = "http://127.0.0.1:1"\nprot = 1\n')
    monkeypatch.chdir(tmp_path)
    result = send(str(write_event(tmp_path)), env={"CAPIRELAY_ACCESS_TOKEN": TOKEN})
    assert result.exit_code == 2
    assert "capirelay.toml:2:1: unknown key `prot`" in result.stderr, result.stderr


def test_an_unreachable_graph_url_is_named_with_what_to_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_url: str
) -> None:
    # A forwarding proxy's URL, with a password and a path prefix: neither is printed.
    proxy_url = closed_url.replace("http://", "http://relay:hunter2pass@") + "/meta"
    write_config(tmp_path, proxy_url)
    monkeypatch.chdir(tmp_path)
    result = send(str(write_event(tmp_path)), env={TOKEN_ENV: TOKEN})
    assert result.exit_code == 1
    err = result.stderr
    assert f"no answer from {closed_url}: connection error (ConnectError)" in err, err
    what_to_do = next(line for line in err.splitlines() if "what to do:" in line)
    assert "graph_url in capirelay.toml" in what_to_do, err
    assert "proxy" in what_to_do and "nothing will be retried" in err
    for secret in (TOKEN, "hunter2pass", "relay:", "/meta"):
        assert secret not in result.output
    assert "Meta says" not in err  # Meta said nothing: it was never reached


def test_an_unreachable_graph_url_flag_is_named_as_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_url: str
) -> None:
    monkeypatch.chdir(tmp_path)
    args = [str(write_event(tmp_path)), "--graph-url", closed_url]
    result = send(*args, env={"CAPIRELAY_ACCESS_TOKEN": TOKEN})
    assert result.exit_code == 1
    assert f"no answer from {closed_url}" in result.stderr
    what_to_do = next(line for line in result.stderr.splitlines() if "what to do:" in line)
    assert "--graph-url" in what_to_do, result.stderr


# The pixel's own settings, as the gateway applies them to the same pixel.

APP_SECRET_ENV = "META_APP_SECRET"
APP_SECRET = "send-settings-app-secret-0123456789"


def write_phone_event(directory: Path) -> Path:
    """An event whose phone number has no country code."""
    path = write_event(directory)
    event = json.loads(path.read_text())
    event["user_data"]["phone"] = "(650) 555-1212"
    path.write_text(json.dumps(event))
    return path


def gateway_phone_hash(config: Path, event_file: Path) -> str:
    """The ``ph`` the gateway's ingest queues for the file's event under the config."""
    from capirelay.config import load_settings
    from capirelay.ingest import prepare_event

    settings = load_settings(config)
    prepared = prepare_event(
        json.loads(event_file.read_text()),
        pixel_id=PIXEL,
        pixel=settings.pixels[PIXEL],
        now=time.time(),
        test_event_code=None,
        source="api",
        max_future_skew=settings.max_future_skew,
    )
    assert prepared.new_event is not None, prepared.problems
    return str(json.loads(prepared.new_event.payload)["user_data"]["ph"][0])


def sent_phone_hashes(emulator: RunningEmulator) -> list[str]:
    return [e["event"]["user_data"]["ph"][0] for e in emulator.state.events(PIXEL)]


def test_a_national_phone_is_completed_with_the_pixels_default_country(
    emulator: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, emulator.url, 'default_country = "US"\n')
    event = write_phone_event(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = send(str(event), env={TOKEN_ENV: TOKEN})
    assert result.exit_code == 0, result.output
    expected = hashlib.sha256(b"16505551212").hexdigest()
    assert sent_phone_hashes(emulator) == [expected]
    assert gateway_phone_hash(config, event) == expected


def test_the_default_country_flag_wins_over_the_pixels(
    emulator: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, emulator.url, 'default_country = "GB"\n')
    monkeypatch.chdir(tmp_path)
    result = send(
        str(write_phone_event(tmp_path)), "--default-country", "US", env={TOKEN_ENV: TOKEN}
    )
    assert result.exit_code == 0, result.output
    assert sent_phone_hashes(emulator) == [hashlib.sha256(b"16505551212").hexdigest()]


def test_the_pixels_test_event_code_reaches_graph(
    emulator: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, emulator.url, 'test_event_code = "TEST4242"\n')
    monkeypatch.chdir(tmp_path)
    result = send(str(write_event(tmp_path)), env={TOKEN_ENV: TOKEN})
    assert result.exit_code == 0, result.output
    [stored] = emulator.state.events(PIXEL)
    assert stored["test_event_code"] == "TEST4242"
    [request] = emulator.state.request_log()
    assert request["test_event_code"] == "TEST4242"
    assert "Test events under TEST4242" in result.stdout


def test_the_test_event_code_flag_wins_over_the_pixels(
    emulator: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, emulator.url, 'test_event_code = "TEST4242"\n')
    monkeypatch.chdir(tmp_path)
    args = [str(write_event(tmp_path)), "--test-event-code", "TEST777"]
    result = send(*args, env={TOKEN_ENV: TOKEN})
    assert result.exit_code == 0, result.output
    assert [e["test_event_code"] for e in emulator.state.events(PIXEL)] == ["TEST777"]


@pytest.fixture
def proof_checking_emulator() -> Iterator[RunningEmulator]:
    """An emulator that knows the app's secret, so it checks every appsecret_proof given."""
    with run_emulator(pixels={PIXEL: TOKEN}, app_secret=APP_SECRET) as running:
        yield running


@pytest.mark.parametrize(
    ("secret", "accepted"), [(APP_SECRET, True), ("not-the-app-secret", False)]
)
def test_the_pixels_app_secret_signs_the_request(
    proof_checking_emulator: RunningEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    secret: str,
    accepted: bool,
) -> None:
    # The emulator refuses a proof made with another secret (code 100): so a refusal with
    # the wrong secret shows that the proof is sent, and an acceptance with the right one
    # that it is the proof of the pixel's token under the configured secret.
    emulator = proof_checking_emulator
    extra = f'app_secret = {{ env = "{APP_SECRET_ENV}" }}\n'
    write_config(tmp_path, emulator.url, extra)
    monkeypatch.chdir(tmp_path)
    result = send(str(write_event(tmp_path)), env={TOKEN_ENV: TOKEN, APP_SECRET_ENV: secret})
    [request] = emulator.state.request_log()
    if accepted:
        assert result.exit_code == 0, result.output
        assert sent_ids(emulator) == ["send-settings-1"]
    else:
        assert result.exit_code == 1, result.output
        assert request.get("error_code") == 100
        assert "Invalid appsecret_proof" in result.stderr, result.stderr
    for value in (TOKEN, APP_SECRET, secret):
        assert value not in result.output
