"""``capirelay pixel status|enable-aam|first-party-cookies`` against the live emulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from meta_data import PIXEL, TOKEN
from rich.console import Console
from typer.testing import CliRunner

from capirelay.cli import app
from capirelay.cli import pixel as pixel_cli
from capirelay.emulator import RunningEmulator, run_emulator

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
TOKEN_ENV = "CAPIRELAY_TEST_PIXEL_CLI_TOKEN"


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with run_emulator(pixels={PIXEL: TOKEN}) as running:
        yield running


@pytest.fixture
def config(tmp_path: Path, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("CAPIRELAY_CONFIG", raising=False)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    path = tmp_path / "capirelay.toml"
    path.write_text(
        f'graph_url = "{emulator.url}"\n'
        f'[pixels.{PIXEL}]\naccess_token = {{ env = "{TOKEN_ENV}" }}\n',
        encoding="utf-8",
    )
    return path


def status(config: Path) -> dict[str, object]:
    result = runner.invoke(app, ["pixel", "status", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    rows = orjson.loads(result.stdout)
    assert len(rows) == 1
    return dict(rows[0])


def test_status_enable_aam_and_cookies(config: Path, emulator: RunningEmulator) -> None:
    assert status(config)["enable_automatic_matching"] is True  # Meta's default today
    assert status(config)["warnings"] == []
    # Someone turned AAM off in Events Manager.
    turn_off = {"enable_automatic_matching": "false", "access_token": TOKEN}
    httpx.post(f"{emulator.url}/v26.0/{PIXEL}", data=turn_off).raise_for_status()
    before = status(config)
    assert before["enable_automatic_matching"] is False
    assert any("enable-aam" in str(w) for w in before["warnings"])  # type: ignore[attr-defined]
    table = runner.invoke(app, ["pixel", "status", "--config", str(config)])
    assert table.exit_code == 0 and "off" in table.stdout and PIXEL in table.stdout

    result = runner.invoke(app, ["pixel", "enable-aam", "--config", str(config)])
    assert result.exit_code == 0, result.output
    after = status(config)
    assert after["enable_automatic_matching"] is True
    assert after["automatic_matching_fields"] == [
        "em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id"
    ]  # fmt: skip
    runner.invoke(app, ["pixel", "enable-aam", "--config", str(config), "--fields", "em,ph"])
    assert status(config)["automatic_matching_fields"] == ["em", "ph"]

    result = runner.invoke(app, ["pixel", "first-party-cookies", "off", "--config", str(config)])
    assert result.exit_code == 0, result.output
    off = status(config)
    assert off["first_party_cookie_status"] == "FIRST_PARTY_COOKIE_DISABLED"
    assert any("first-party-cookies on" in str(w) for w in off["warnings"])  # type: ignore[attr-defined]
    runner.invoke(app, ["pixel", "first-party-cookies", "on", "--config", str(config)])
    assert status(config)["first_party_cookie_status"] == "FIRST_PARTY_COOKIE_ENABLED"
    assert all(TOKEN not in str(entry) for entry in emulator.state.request_log())


def test_status_at_80_columns_shows_the_cookie_state_and_the_pixel_whole(
    config: Path, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both states were cut to `FIRST_PARTY_COOKIE…`: enabled and disabled looked the same.
    monkeypatch.setattr(pixel_cli, "console", Console(width=80, color_system=None))

    def table() -> str:
        result = runner.invoke(app, ["pixel", "status", "--config", str(config)])
        assert result.exit_code == 0, result.output
        assert "…" not in result.stdout
        assert all(len(line) <= 80 for line in result.stdout.splitlines())
        assert PIXEL in result.stdout
        return result.stdout

    assert "enabled" in table() and "disabled" not in table()
    runner.invoke(app, ["pixel", "first-party-cookies", "off", "--config", str(config)])
    off = table()
    assert "disabled" in off and "enabled" not in off.replace("disabled", "")
    assert "first-party-cookies on" in " ".join(off.replace("│", " ").split())


def test_a_token_without_permission_gets_the_fix(config: Path, emulator: RunningEmulator) -> None:
    httpx.post(
        f"{emulator.url}/_emulator/tokens/scopes",
        json={"access_token": TOKEN, "scopes": ["ads_read"]},
    ).raise_for_status()
    result = runner.invoke(app, ["pixel", "first-party-cookies", "off", "--config", str(config)])
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())  # Rich wraps long lines
    assert "Permissions error" in message
    assert "assign the user to this dataset with full control (Manage)" in message
    assert TOKEN not in result.output
    assert status(config)["first_party_cookie_status"] == "FIRST_PARTY_COOKIE_ENABLED"


def test_user_errors_name_the_field(config: Path) -> None:
    bad = runner.invoke(app, ["pixel", "enable-aam", "--config", str(config), "--fields", "email"])
    assert bad.exit_code == 2 and "--fields: unknown field(s) email" in bad.stderr
    bad = runner.invoke(app, ["pixel", "first-party-cookies", "maybe", "--config", str(config)])
    assert bad.exit_code == 2 and "on or off" in bad.stderr
    bad = runner.invoke(app, ["pixel", "status", "--config", str(config), "--pixel", "42"])
    assert bad.exit_code == 2 and "--pixel 42: not in the config" in bad.stderr
    # The table's name is printed as written (Rich took "[pixels]" for markup and dropped it).
    assert "not in the config's [pixels] (have:" in bad.stderr


def test_config_tables_named_in_errors_keep_their_brackets(tmp_path: Path) -> None:
    empty = tmp_path / "no-pixels.toml"
    empty.write_text('storage = "sqlite:///' + str(tmp_path / "x.db") + '"\n')
    bad = runner.invoke(app, ["pixel", "status", "--config", str(empty)])
    assert bad.exit_code == 2 and 'add a [pixels."<id>"] table' in bad.stderr
    rows = tmp_path / "sales.jsonl"
    rows.write_text("{}\n")
    bad = runner.invoke(app, ["import", str(rows), "--pixel", "999", "--config", str(empty)])
    assert bad.exit_code == 2 and "add [pixels.999] to the config" in bad.stderr
