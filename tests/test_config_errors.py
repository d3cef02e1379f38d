"""Every config mistake is one `FILE:LINE:COL: what is wrong` line and exit status 2.

Each command that reads the config is run as a user would (Typer's runner,
and the console script for `serve`), so the file named is the real one and
nothing but that line reaches stderr.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from capirelay.cli import app
from capirelay.config import ConfigError, load_settings

runner = CliRunner(env={"COLUMNS": "80", "NO_COLOR": "1", "CAPIRELAY_CONFIG": None})
CAPIRELAY = Path(sys.executable).with_name("capirelay")

READING_COMMANDS = [["doctor"], ["dlq", "list"], ["migrate"], ["serve", "--port", "0"]]


@pytest.fixture
def syntax_error(tmp_path: Path) -> Path:
    path = tmp_path / "broken.toml"
    path.write_text('port = 8080\n[pixels.123]\naccess_token = {env = "TOKEN"\n')
    return path


@pytest.fixture
def typo(tmp_path: Path) -> Path:
    path = tmp_path / "typo.toml"
    path.write_text(
        f'storage = "sqlite:///{tmp_path / "q.db"}"\n\n[pixels.123]\n  default_contry = "US"\n'
    )
    return path


@pytest.mark.parametrize("command", READING_COMMANDS, ids=" ".join)
def test_a_toml_syntax_error_is_one_line_from_every_command(
    command: list[str], syntax_error: Path
) -> None:
    result = runner.invoke(app, [*command, "--config", str(syntax_error)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"{syntax_error}:3:30: TOML syntax error: unclosed inline table"
    ]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", READING_COMMANDS, ids=" ".join)
def test_an_unknown_key_names_the_file_the_line_and_the_closest_key(
    command: list[str], typo: Path
) -> None:
    result = runner.invoke(app, [*command, "--config", str(typo)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"{typo}:4:3: unknown key `pixels.123.default_contry`; did you mean `default_country`?"
    ]


def test_capirelay_config_names_the_file_in_the_message(
    typo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPIRELAY_CONFIG", str(typo))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith(f"{typo}:4:3: unknown key")
    assert caught.value.path == typo


def test_a_bad_value_points_at_its_line_and_never_echoes_it(tmp_path: Path) -> None:
    path = tmp_path / "values.toml"
    path.write_text('[delivery]\nbatch_size = 5000\n[dashboard]\nadmin_tokn = "s3cret-value"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    lines = str(caught.value).splitlines()
    assert f"{path}:2:1: delivery.batch_size: input should be less than or equal to 1000" in lines
    assert f"{path}:4:1: unknown key `dashboard.admin_tokn`; did you mean `admin_token`?" in lines
    assert "s3cret-value" not in str(caught.value)


def test_a_missing_config_named_by_the_environment_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPIRELAY_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"nope\.toml does not exist \(named by CAPIRELAY_CONFIG"):
        load_settings()


def test_serve_without_pixels_exits_2_and_points_at_init(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [str(CAPIRELAY), "serve", "--port", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no capirelay.toml found" in result.stderr
    assert "run `capirelay init`" in result.stderr
    assert not list(tmp_path.glob("*.db"))  # refused before opening any storage


def test_serve_takes_its_log_handler_with_it(syntax_error: Path) -> None:
    # A handler left on the root logger after the command's stderr is gone turns every
    # later log line into a "--- Logging error ---" traceback.
    import logging

    from capirelay.server.run import main

    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    assert main(["--config", str(syntax_error)]) == 2
    assert (list(root.handlers), root.level) == before


def test_mistakes_found_after_loading_point_at_their_table(tmp_path: Path) -> None:
    path = tmp_path / "hooks.toml"
    path.write_text(
        f'storage = "sqlite:///{tmp_path / "q.db"}"\n[pixels.123]\n\n'
        '[webhooks.shop]\npreset = "nosuch"\npixel_id = "123"\nsecret = { env = "X" }\n'
    )
    result = runner.invoke(app, ["serve", "--config", str(path), "--port", "0"])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if "WARNING" not in line]
    assert len(errors) == 1
    # Checked with the other settings now: the preset's own line.
    assert errors[0].startswith(f"{path}:5:1: webhooks.shop.preset: ")
    assert "unknown webhook preset 'nosuch'" in errors[0]


def test_mistakes_inside_and_around_tables_are_told_in_one_round(tmp_path: Path) -> None:
    # A reviewer's first hour: six mistakes took four edit-and-run rounds, because the
    # pixel id and the preset were checked only once everything else loaded.
    path = tmp_path / "capirelay.toml"
    path.write_text(
        "[pixels.act_1234567890]\n"
        'default_contry = "US"\n'
        "[pixels.1234567890]\n"
        "[webhooks.shop]\n"
        'preset = "shopfy"\n'
        'pixel_id = "1234567890"\n'
        'secret = { env = "SHOP_SECRET" }\n'
        "[webhooks.woo]\n"
        'preset = "woocommerce"\n'
        'pixel_id = "1234567890"\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    lines = str(raised.value).splitlines()
    assert any("pixel id 'act_1234567890' must be the numeric id" in line for line in lines)
    assert any("default_contry" in line and "default_country" in line for line in lines)
    assert any("'shopfy'; did you mean 'shopify'?" in line for line in lines)
    assert any("webhooks.woo.secret: field required" in line for line in lines)
    assert all(line.startswith(f"{path}:") for line in lines), lines  # each at its line


def test_a_webhook_naming_an_unconfigured_pixel_is_told_in_the_first_round(
    tmp_path: Path,
) -> None:
    # It was checked only once everything else loaded: told in a round of its own, after
    # the user had fixed the rest.
    path = tmp_path / "capirelay.toml"
    path.write_text(
        "[pixels.1234567890]\n"
        'default_contry = "US"\n'
        "[pixels.5550001111]\n"
        "[webhooks.shop]\n"
        'preset = "shopify"\n'
        'pixel_id = "999"\n'
        'secret = { env = "SHOP_SECRET" }\n'
        "[webhooks.woo]\n"
        'preset = "woocommerce"\n'
        'pixel_id = "5550001111"\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    lines = str(raised.value).splitlines()
    assert any("default_contry" in line for line in lines), lines
    assert any("webhooks.woo.secret: field required" in line for line in lines), lines
    assert f"{path}:6:1: webhooks.shop.pixel_id: pixel_id 999 is not configured under " \
        "[pixels]; add a [pixels.999] table, or set pixel_id to a configured pixel " \
        "(1234567890, 5550001111)" in lines, lines  # fmt: skip
    assert len(lines) == 3, lines

    # Alone, once the rest is right: the same line.
    path.write_text(
        path.read_text().replace("default_contry", "default_country")
        + 'secret = { env = "WOO_SECRET" }\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert str(raised.value).splitlines() == [
        f"{path}:6:1: webhooks.shop.pixel_id: pixel_id 999 is not configured under [pixels]; "
        "add a [pixels.999] table, or set pixel_id to a configured pixel "
        "(1234567890, 5550001111)"
    ]


def test_a_webhook_pixel_id_that_is_no_pixel_id_is_told_to_use_the_numeric_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "add a [pixels.{pixel}] table" would itself be refused ("must be the numeric id").
    monkeypatch.setenv("SHOP_SECRET", "s")
    path = tmp_path / "capirelay.toml"
    path.write_text(
        '[pixels.1234567890]\n[webhooks.shop]\npreset = "shopify"\npixel_id = "{pixel}"\n'
        'secret = { env = "SHOP_SECRET" }\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert str(raised.value).splitlines() == [
        f"{path}:4:1: webhooks.shop.pixel_id: pixel_id '{{pixel}}' is not a pixel id: use the "
        "numeric dataset id from Events Manager, one of the configured pixels (1234567890)"
    ]


def test_a_webhook_naming_a_pixel_whose_id_is_refused_is_told_once(tmp_path: Path) -> None:
    # The pixel's table is there under an id that is itself a mistake: that mistake is
    # the one to fix, and the webhook is not also called unconfigured.
    path = tmp_path / "capirelay.toml"
    path.write_text(
        "[pixels.act_1234567890]\n"
        "[webhooks.shop]\n"
        'preset = "shopify"\n'
        'pixel_id = "act_1234567890"\n'
        'secret = { env = "SHOP_SECRET" }\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    lines = str(raised.value).splitlines()
    assert any("pixel id 'act_1234567890' must be the numeric id" in line for line in lines)
    assert not any("is not configured" in line for line in lines), lines


def test_the_config_knows_every_webhook_preset() -> None:
    from capirelay.config import WEBHOOK_PRESETS
    from capirelay.sources.webhooks import PRESETS

    assert set(WEBHOOK_PRESETS) == set(PRESETS)


# Every secret-typed setting, as (the TOML that holds it around a {SECRET} mark, its
# dotted name).  The rest of each snippet is valid, so the secret's is the only mistake.
SECRET_SETTINGS = [
    ("[pixels.123]\naccess_token = {SECRET}\n", "pixels.123.access_token"),
    ("[pixels.123]\napp_secret = {SECRET}\n", "pixels.123.app_secret"),
    ("[pixels.123]\nverification_secret = {SECRET}\n", "pixels.123.verification_secret"),
    ("[ingest_keys.shop]\nkey = {SECRET}\n", "ingest_keys.shop.key"),
    (
        '[pixels.123]\n[webhooks.shop]\npreset = "shopify"\npixel_id = "123"\nsecret = {SECRET}\n',
        "webhooks.shop.secret",
    ),
    ("[dashboard]\nadmin_token = {SECRET}\n", "dashboard.admin_token"),
    ('[dashboard]\nbasic_user = "ops"\nbasic_password = {SECRET}\n', "dashboard.basic_password"),
    ("metrics_token = {SECRET}\n", "metrics_token"),
]


@pytest.mark.parametrize(("snippet", "setting"), SECRET_SETTINGS, ids=lambda v: v)
@pytest.mark.parametrize(
    ("wrong", "right"),
    [
        ("path", "file"),
        ("filename", "file"),
        ("file_path", "file"),
        ("var", "env"),
        ("environment", "env"),
        ("env_var", "env"),
    ],
)
def test_a_secret_with_a_wrong_key_names_the_setting_and_suggests_file_or_env(
    tmp_path: Path, snippet: str, setting: str, wrong: str, right: str
) -> None:
    path = tmp_path / "secret.toml"
    path.write_text(snippet.replace("{SECRET}", f'{{ {wrong} = "s3cret-value" }}'))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    (line,) = str(caught.value).splitlines()
    key = setting.rpartition(".")[2]
    last = len(snippet.splitlines())  # the secret is each snippet's last line
    assert line.startswith(f"{path}:{last}:"), line
    assert f"unknown key `{setting}.{wrong}`; did you mean `{right}`?" in line
    # The fix, written as the user would write it.
    assert f'{key} = {{ {right} = "' in line
    assert "s3cret-value" not in line


def test_a_secret_with_an_unguessable_key_is_shown_both_forms(tmp_path: Path) -> None:
    path = tmp_path / "secret.toml"
    path.write_text('[pixels.123]\naccess_token = { token = "EAAsecret" }\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    (line,) = str(caught.value).splitlines()
    assert line.startswith(f"{path}:2:")
    assert "unknown key `pixels.123.access_token.token`" in line
    assert 'access_token = { file = "' in line and 'access_token = { env = "' in line
    assert "EAAsecret" not in line


@pytest.mark.parametrize("snippet", [s for s, _ in SECRET_SETTINGS], ids=lambda v: v)
def test_a_secret_written_as_a_number_is_told_to_quote_it_or_use_file_or_env(
    tmp_path: Path, snippet: str
) -> None:
    """``key = 123456`` in TOML is a number, which no secret is: the message names the
    setting and the forms that work, without echoing the digits."""
    setting = dict((s, n) for s, n in SECRET_SETTINGS)[snippet]
    key = setting.rpartition(".")[2]
    path = tmp_path / "secret.toml"
    path.write_text(snippet.replace("{SECRET}", "987654321987"))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    (line,) = str(caught.value).splitlines()
    assert line.startswith(f"{path}:{len(snippet.splitlines())}:1: {setting}: "), line
    assert f'{key} = {{ file = "..." }}' in line and f'{key} = {{ env = "..." }}' in line
    assert "quote" in line
    assert "987654321987" not in line


WEBHOOK_FROM_ENV = (
    '[pixels.123]\n[webhooks.shop]\npreset = "shopify"\npixel_id = "123"\n'
    'secret = { env = "SHOP_SECRET" }\n'
)


@pytest.mark.parametrize("value", ["null", "[1]", '["s3cret-value"]'])
def test_a_secret_variable_that_is_no_text_is_named_with_the_fix_for_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """``CAPIRELAY_WEBHOOKS__SHOP__SECRET=null`` (or a JSON list) overrides the file's
    valid line: the message names the variable as where the bad value is and says what
    to set it to, not the file's line and "quote it in the file"."""
    path = tmp_path / "c.toml"
    path.write_text(WEBHOOK_FROM_ENV)
    monkeypatch.setenv("CAPIRELAY_WEBHOOKS__SHOP__SECRET", value)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    (line,) = str(caught.value).splitlines()
    assert line.startswith(
        "environment variable CAPIRELAY_WEBHOOKS__SHOP__SECRET: webhooks.shop.secret: "
    ), line
    assert str(path) not in line and "quote it in the file" not in line
    assert "set CAPIRELAY_WEBHOOKS__SHOP__SECRET to the secret itself" in line
    assert '{"file": "..."}' in line and '{"env": "..."}' in line
    assert "s3cret-value" not in line


def test_a_secret_variable_with_a_wrong_key_is_told_the_json_for_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(WEBHOOK_FROM_ENV)
    monkeypatch.setenv("CAPIRELAY_WEBHOOKS__SHOP__SECRET", '{"path": "/run/s3cret-value"}')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    (line,) = str(caught.value).splitlines()
    assert line.startswith("environment variable CAPIRELAY_WEBHOOKS__SHOP__SECRET: "), line
    assert "unknown key `webhooks.shop.secret.path`; did you mean `file`?" in line
    assert 'Set CAPIRELAY_WEBHOOKS__SHOP__SECRET to {"file": "..."}' in line
    assert "s3cret-value" not in line


def test_a_bad_value_in_a_variable_holding_a_table_names_that_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table given whole (``CAPIRELAY_WEBHOOKS__SHOP='{"secret": null}'``) is where the
    bad value is; a variable holding the table without that key is not."""
    path = tmp_path / "c.toml"
    path.write_text(WEBHOOK_FROM_ENV)
    monkeypatch.setenv("CAPIRELAY_WEBHOOKS__SHOP", '{"secret": null}')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    (line,) = str(caught.value).splitlines()
    assert line.startswith("environment variable CAPIRELAY_WEBHOOKS__SHOP: "), line
    path.write_text(WEBHOOK_FROM_ENV.replace('{ env = "SHOP_SECRET" }', "[1]"))
    monkeypatch.setenv("CAPIRELAY_WEBHOOKS__SHOP", '{"preset": "shopify"}')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    (line,) = str(caught.value).splitlines()
    assert line.startswith(f"{path}:5:1: webhooks.shop.secret: "), line
    assert "quote it in the file" in line


@pytest.mark.parametrize(
    ("variable", "value"),
    [("CAPIRELAY_PIXELS", "not json s3cr3t"), ("CAPIRELAY_DIAGNOSTICS", "nope s3cr3t")],
)
def test_a_table_variable_that_is_not_json_is_named_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    # pydantic-settings raised its own SettingsError, and every command printed a traceback.
    config = tmp_path / "capirelay.toml"
    config.write_text('storage = "sqlite:///./x.db"\n')
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert message.startswith(f"environment variable {variable}: not valid JSON")
    assert f"{variable}__KEY=value" in message
    assert "s3cr3t" not in message
    result = CliRunner().invoke(app, ["doctor", "--config", str(config)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"environment variable {variable}" in result.output


@pytest.mark.parametrize(
    ("variable", "value", "fix", "not_said"),
    [
        # A table's variable holds the secret: set it inside the JSON, don't replace it.
        ("CAPIRELAY_PIXELS", '{"1234567890": {"access_token": 5}}',
         'in the JSON of CAPIRELAY_PIXELS, set "1234567890.access_token" to the secret',
         "set CAPIRELAY_PIXELS to"),
        ("CAPIRELAY_PIXELS", '{"1234567890": {"access_token": {"pth": "x"}}}',
         'in the JSON of CAPIRELAY_PIXELS, set "1234567890.access_token" to {"file": "..."}',
         "set CAPIRELAY_PIXELS to"),
        # A variable naming a wrong key inside the secret: its sibling is the fix.
        ("CAPIRELAY_PIXELS__1234567890__ACCESS_TOKEN__PATH", "/x",
         "set CAPIRELAY_PIXELS__1234567890__ACCESS_TOKEN__FILE (a path) instead of "
         "CAPIRELAY_PIXELS__1234567890__ACCESS_TOKEN__PATH",
         "ACCESS_TOKEN__PATH to"),
    ],
)  # fmt: skip
def test_a_secret_inside_another_variable_is_told_where_in_it_to_fix(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    fix: str,
    not_said: str,
) -> None:
    config = tmp_path / "capirelay.toml"
    config.write_text('storage = "sqlite:///./x.db"\n[pixels.1234567890]\n')
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert message.startswith(f"environment variable {variable}:"), message
    assert fix.lower() in message.lower(), message
    assert not_said not in message, message
