"""`capirelay init`: prompts with defaults or flags only; secrets in 0600 files; no overwrite."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from capirelay.cli import app
from capirelay.config import load_settings
from capirelay.emulator.testing import RunningEmulator, run_emulator
from capirelay.sources.snippet import SNIPPET_STUB, page_snippet

PIXEL = "1234567890"
TOKEN = "init-test-token"
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "CAPIRELAY_CONFIG": None})


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with run_emulator(pixels={PIXEL: TOKEN}) as running:
        yield running


def _flags(tmp_path: Path, emulator: RunningEmulator) -> list[str]:
    return [
        "init",
        "--no-input",
        "--config",
        str(tmp_path / "capirelay.toml"),
        "--pixel",
        PIXEL,
        "--token-env",
        "META_TOKEN_FOR_INIT",
        "--origin",
        "https://Shop.example/",
        "--origin",
        "https://www.shop.example",
        "--country",
        "US",
        "--public-url",
        "https://capi.shop.example",
        "--graph-url",
        emulator.url,
    ]


def test_non_interactive_init_writes_a_working_config(
    tmp_path: Path, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("META_TOKEN_FOR_INIT", TOKEN)
    result = runner.invoke(app, _flags(tmp_path, emulator))
    assert result.exit_code == 0, result.output
    config = tmp_path / "capirelay.toml"
    text = config.read_text()
    assert text.startswith("# capirelay gateway configuration, written by `capirelay init`.")

    settings = load_settings(config)
    pixel = settings.pixels[PIXEL]
    assert pixel.access_token is not None and pixel.access_token.env == "META_TOKEN_FOR_INIT"
    assert pixel.allowed_origins == ["https://shop.example", "https://www.shop.example"]
    assert pixel.default_country == "us"
    assert settings.storage == f"sqlite:///{tmp_path / 'capirelay.db'}"
    secrets = tmp_path / "capirelay-secrets"
    for secret, path in (
        (settings.ingest_keys["backend"].key, secrets / "ingest-key"),
        (settings.dashboard.admin_token, secrets / "dashboard-token"),
    ):
        assert secret is not None and secret.file == path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        value = secret.resolve()
        assert value is not None and len(value) >= 40
        assert value not in text  # referenced as { file = ... }, never written into the TOML
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700

    out = result.stdout
    # The queueing stub, then the async tag: an inline capirelay.track(...) after it works.
    pasted = page_snippet("https://capi.shop.example/capirelay.js", PIXEL)
    assert "\n".join(f"  {line}" for line in pasted.splitlines()) in out
    assert "No site origin is allowed" not in out
    bearer = f'-H "Authorization: Bearer $(cat {secrets / "ingest-key"})"'
    assert f"curl -s https://capi.shop.example/v1/events {bearer}" in out
    # Go-live step 3 sends it to the `serve` just started, which the public URL may not
    # reach yet: the same request to the local address comes first.
    local = f"curl -s http://127.0.0.1:8080/v1/events {bearer}"
    assert local in out and out.index(local) < out.index("curl -s https://capi.shop")
    assert "on this machine, to the gateway `serve` starts (http://127.0.0.1:8080)" in out
    # The doctor ran on what was written, against the (emulated) Graph API.
    assert "capirelay doctor" in out
    assert f"token {PIXEL}" in out
    assert "ingest keys" in out and "1 key(s) set and readable" in out
    assert not (tmp_path / "capirelay.db").exists()  # the doctor only reads


def test_init_refuses_to_overwrite_without_force_and_keeps_secrets_with_it(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    assert runner.invoke(app, _flags(tmp_path, emulator)).exit_code == 0
    config = tmp_path / "capirelay.toml"
    key_file = tmp_path / "capirelay-secrets" / "ingest-key"
    key = key_file.read_text()
    config.write_text("# edited by hand\n" + config.read_text())

    again = runner.invoke(app, _flags(tmp_path, emulator))
    assert again.exit_code == 2  # a usage error, as init's others are
    assert "already exists; pass --force" in again.stderr
    assert config.read_text().startswith("# edited by hand")

    forced = runner.invoke(app, [*_flags(tmp_path, emulator), "--force"])
    assert forced.exit_code == 0
    assert not config.read_text().startswith("# edited by hand")
    assert key_file.read_text() == key  # not rotated behind the user's back
    assert f"kept existing {key_file}" in forced.stdout


def test_interactive_init_asks_with_defaults_and_asks_again_on_mistakes(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    answers = "\n".join(
        [
            "12ab",  # not a pixel id: asked again
            PIXEL,
            "file",  # the token comes from a file
            "",  # default file path
            TOKEN,  # pasted: stored in that file
            "shop.example",  # not an origin: asked again
            "https://shop.example",
            "Germany",  # not alpha-2: asked again
            "de",
            "",  # default gateway URL
        ]
    )
    result = runner.invoke(
        app,
        ["init", "--config", str(tmp_path / "capirelay.toml"), "--graph-url", emulator.url],
        input=answers + "\n",
    )
    assert result.exit_code == 0, result.output
    assert "the pixel (dataset) id is the number in Events Manager" in result.stderr
    assert "'shop.example' is not an origin" in result.stderr
    assert "'Germany' is not an ISO 3166 alpha-2 code" in result.stderr
    written = tomllib.loads((tmp_path / "capirelay.toml").read_text())
    pixel = written["pixels"][PIXEL]
    token_file = tmp_path / "capirelay-secrets" / "access-token"
    # Beside the config, so written relative to it (read from the config's directory).
    assert pixel["access_token"] == {"file": "capirelay-secrets/access-token"}
    assert token_file.read_text().strip() == TOKEN
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert pixel["allowed_origins"] == ["https://shop.example"]
    assert pixel["default_country"] == "de"
    assert 'src="http://127.0.0.1:8080/capirelay.js"' in result.stdout
    # The token in the file works: the doctor's token check passes against the emulator.
    assert re.search(r"token 1234567890\s+│ ok", result.stdout)


def test_every_page_snippet_in_the_docs_is_what_init_prints() -> None:
    """The README and the demo shop show the stub and the async tag, as init prints them."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert page_snippet("https://track.shop.example/capirelay.js", PIXEL) in readme
    shop = (root / "src/capirelay/demo/shop.html").read_text(encoding="utf-8")
    assert page_snippet("/capirelay.js", "{{ pixel_id }}") in shop
    # No other copy of the stub, or a tag without it, anywhere a user reads.
    for path in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        tags = re.findall(r"<script[^>]*capirelay\.js[^>]*>", text)
        assert text.count(SNIPPET_STUB) == len(tags), path


def test_init_with_no_origin_says_the_snippet_is_refused_and_the_doctor_warns(
    tmp_path: Path, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPIRELAY_ACCESS_TOKEN", TOKEN)
    # Pixel, token from env (default variable), then Enter at every other question.
    answers = "\n".join([PIXEL, "env", "", "", "", ""])
    config = tmp_path / "capirelay.toml"
    result = runner.invoke(
        app, ["init", "--config", str(config), "--graph-url", emulator.url], input=answers + "\n"
    )
    assert result.exit_code == 0, result.output
    assert tomllib.loads(config.read_text())["pixels"][PIXEL]["allowed_origins"] == []
    [line] = [line for line in result.stdout.splitlines() if "No site origin" in line]
    assert line.strip() == (
        "No site origin is allowed yet, so the gateway refuses this snippet's events (403 "
        f"origin_not_allowed): set allowed_origins under [pixels.{PIXEL}] in {config}, e.g. "
        'allowed_origins = ["https://shop.example"].'
    )
    # It follows the snippet it is about; the doctor's table warns about the same setting.
    assert result.stdout.index("capirelay.js") < result.stdout.index(line)
    assert re.search(
        r"beacon\s+│ warn\s+│ pixels\.1234567890\.allowed_origins is empty", result.stdout
    )


def test_no_input_needs_the_pixel(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", "--no-input", "--config", str(tmp_path / "c.toml")])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Pixel (dataset) id from Events Manager: required with --no-input: pass --pixel ID"
    )
    assert not (tmp_path / "c.toml").exists()


@pytest.mark.parametrize("origin", ["ftp://nope", "https://[::1"])
def test_bad_flags_are_named(tmp_path: Path, origin: str) -> None:
    result = runner.invoke(
        app,
        [
            "init",
            "--no-input",
            "--config",
            str(tmp_path / "c.toml"),
            "--pixel",
            PIXEL,
            "--token-env",
            "X",
            "--origin",
            origin,
        ],
    )
    assert result.exit_code == 2
    assert f"{origin!r} is not an origin" in result.stderr
    assert not (tmp_path / "c.toml").exists()
    assert not (tmp_path / "capirelay-secrets").exists()


def test_a_graph_url_with_the_version_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    config = tmp_path / "c.toml"
    result = runner.invoke(
        app,
        [
            "init",
            "--no-input",
            "--config",
            str(config),
            "--pixel",
            PIXEL,
            "--token-env",
            "X",
            "--graph-url",
            "http://127.0.0.1:8765/v26.0",
        ],
    )
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "--graph-url must not include the Graph API version (/v26.0): capirelay adds each "
        "pixel's api_version itself"
    )
    assert not config.exists()
    assert not (tmp_path / "capirelay-secrets").exists()


def _files_under(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if not path.is_dir())


@pytest.mark.parametrize(
    ("flags", "directory", "option"),
    [
        # The token file given as a directory: the current one, or one with a slash.
        (["--token-file", "."], ".", "--token-file"),
        (["--token-file", "tokens/"], "tokens", "--token-file"),
        # A directory where a generated secret file goes.
        (["--token-env", "X", "--secrets-dir", "s"], "s/ingest-key", "--secrets-dir"),
        (["--token-env", "X", "--secrets-dir", "s"], "s/dashboard-token", "--secrets-dir"),
    ],
)
def test_a_secret_file_option_naming_a_directory_is_refused_before_anything_is_written(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    directory: str,
    option: str,
) -> None:
    """``--token-file .`` was accepted and wrote ``access_token = { file = "." }``, a token
    that can never be read; a directory where a generated secret goes stopped init with
    a traceback.  Each is one line naming the option and the fix, and nothing is written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / directory).mkdir(parents=True, exist_ok=True)
    before = _files_under(tmp_path)
    config = tmp_path / "c.toml"
    # A closed port for Graph: a run that does not refuse checks no token over the network.
    graph = ["--graph-url", "http://127.0.0.1:9"]
    result = runner.invoke(
        app, ["init", "--no-input", "--config", str(config), "--pixel", PIXEL, *graph, *flags]
    )
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{option} "), line
    assert "is a directory" in line and "Traceback" not in result.output
    assert not config.exists()
    assert _files_under(tmp_path) == before


def test_a_secrets_dir_that_is_a_file_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    secrets = tmp_path / "secrets"
    secrets.write_text("not a directory\n")
    config = tmp_path / "c.toml"
    result = runner.invoke(
        app,
        [
            *["init", "--no-input", "--config", str(config), "--pixel", PIXEL],
            *["--token-env", "X", "--graph-url", "http://127.0.0.1:9"],
            *["--secrets-dir", str(secrets)],
        ],
    )
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"--secrets-dir {secrets} is a file"), line
    assert not config.exists()
    assert secrets.read_text() == "not a directory\n"


def test_interactive_init_asks_again_for_a_token_file_that_is_a_directory(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    answers = [PIXEL, "file", str(tmp_path), str(tmp_path / "meta-token"), TOKEN, "", "", ""]
    result = runner.invoke(
        app,
        ["init", "--config", str(tmp_path / "capirelay.toml"), "--graph-url", emulator.url],
        input="\n".join(answers) + "\n",
    )
    assert result.exit_code == 0, result.output
    assert f"{tmp_path} is a directory" in result.stderr
    written = tomllib.loads((tmp_path / "capirelay.toml").read_text())
    assert written["pixels"][PIXEL]["access_token"] == {"file": "meta-token"}
    assert (tmp_path / "meta-token").read_text().strip() == TOKEN


def test_secret_files_beside_the_config_are_written_relative_so_the_project_can_move(
    tmp_path: Path, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative secret paths are read from the config file's directory: init writes the
    generated ones (and a token file under the config's directory) relative to it, so
    the directory can be moved or committed with its config and still load."""
    project = tmp_path / "project"
    token_file = project / "private" / "meta-token"
    token_file.parent.mkdir(parents=True)
    token_file.write_text(TOKEN + "\n")
    flags = _flags(project, emulator)
    flags[flags.index("--token-env") : flags.index("--token-env") + 2] = [
        "--token-file",
        str(token_file),
    ]
    monkeypatch.chdir(tmp_path)  # init runs from elsewhere than the config's directory
    result = runner.invoke(app, flags)
    assert result.exit_code == 0, result.output
    written = tomllib.loads((project / "capirelay.toml").read_text())
    assert written["pixels"][PIXEL]["access_token"] == {"file": "private/meta-token"}
    assert written["ingest_keys"]["backend"]["key"] == {"file": "capirelay-secrets/ingest-key"}
    assert written["dashboard"]["admin_token"] == {"file": "capirelay-secrets/dashboard-token"}
    key = (project / "capirelay-secrets" / "ingest-key").read_text().strip()

    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(project, moved)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    settings = load_settings(moved / "capirelay.toml")
    token = settings.pixels[PIXEL].access_token
    assert token is not None and token.file == moved / "private" / "meta-token"
    assert token.resolve() == TOKEN
    assert settings.ingest_keys["backend"].key.resolve() == key
    admin = settings.dashboard.admin_token
    assert admin is not None and admin.file == moved / "capirelay-secrets" / "dashboard-token"
    # The doctor, run from another directory, reads the moved files.
    doctor = runner.invoke(app, ["doctor", "--config", str(moved / "capirelay.toml")])
    assert "1 key(s) set and readable" in doctor.stdout, doctor.output
    assert re.search(rf"token {PIXEL}\s+│ ok", doctor.stdout), doctor.output


def test_secret_files_outside_the_config_directory_stay_absolute(
    tmp_path: Path, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    outside = tmp_path / "vault"
    token_file = tmp_path / "tokens" / "meta"
    token_file.parent.mkdir()
    token_file.write_text(TOKEN)
    monkeypatch.chdir(project)
    flags = _flags(project, emulator)
    flags[flags.index("--token-env") : flags.index("--token-env") + 2] = [
        "--token-file",
        # Spelt through the config's directory, but outside it.
        os.path.join("..", "tokens", "meta"),
    ]
    result = runner.invoke(app, [*flags, "--secrets-dir", str(outside)])
    assert result.exit_code == 0, result.output
    written = tomllib.loads((project / "capirelay.toml").read_text())
    assert written["pixels"][PIXEL]["access_token"] == {"file": str(token_file)}
    assert written["ingest_keys"]["backend"]["key"] == {"file": str(outside / "ingest-key")}
    assert written["dashboard"]["admin_token"] == {"file": str(outside / "dashboard-token")}
    settings = load_settings(project / "capirelay.toml")
    token = settings.pixels[PIXEL].access_token
    assert token is not None and token.resolve() == TOKEN


def _token_file_flags(config_dir: Path, emulator: RunningEmulator, token_file: str) -> list[str]:
    flags = _flags(config_dir, emulator)
    flags[flags.index("--token-env") : flags.index("--token-env") + 2] = [
        "--token-file",
        token_file,
    ]
    return flags


def test_a_token_file_that_is_a_symlink_is_written_as_given_so_rotation_keeps_working(
    tmp_path: Path, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Kubernetes secret mounted inside the project: ``secrets/meta-token`` links to
    ``..data/meta-token`` and ``..data`` to a timestamped directory that a rotation
    replaces and deletes.  The config names the link the user gave, not its target of
    the day, so the rotated token is read without a restart."""
    project = tmp_path / "project"
    secrets = project / "secrets"
    (secrets / "..2024_01_01").mkdir(parents=True)
    (secrets / "..2024_01_01" / "meta-token").write_text(TOKEN)
    (secrets / "..data").symlink_to("..2024_01_01")
    (secrets / "meta-token").symlink_to("..data/meta-token")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, _token_file_flags(project, emulator, "project/secrets/meta-token"))
    assert result.exit_code == 0, result.output
    written = tomllib.loads((project / "capirelay.toml").read_text())
    assert written["pixels"][PIXEL]["access_token"] == {"file": "secrets/meta-token"}

    # The rotation: a new timestamped directory, ..data swapped to it, the old one gone.
    (secrets / "..2024_02_01").mkdir()
    (secrets / "..2024_02_01" / "meta-token").write_text("rotated-token")
    (secrets / "..data_tmp").symlink_to("..2024_02_01")
    os.replace(secrets / "..data_tmp", secrets / "..data")
    shutil.rmtree(secrets / "..2024_01_01")
    token = load_settings(project / "capirelay.toml").pixels[PIXEL].access_token
    assert token is not None and token.resolve() == "rotated-token"


def test_dot_dot_after_a_symlink_is_kept_so_the_file_opened_is_the_one_given(
    tmp_path: Path, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``link/../x`` opens ``x`` beside the link's target, not ``x`` beside the link:
    the path is not shortened past a symbolic link (``dir/../x`` still is)."""
    project = tmp_path / "project"
    (project / "real").mkdir(parents=True)
    (tmp_path / "elsewhere" / "deep").mkdir(parents=True)
    (project / "link").symlink_to(tmp_path / "elsewhere" / "deep")
    (project / "meta-token").write_text("the-wrong-token")  # what normpath would name
    (tmp_path / "elsewhere" / "meta-token").write_text(TOKEN)  # what the kernel opens
    monkeypatch.chdir(project)
    result = runner.invoke(app, _token_file_flags(project, emulator, "link/../meta-token"))
    assert result.exit_code == 0, result.output
    written = tomllib.loads((project / "capirelay.toml").read_text())
    given = written["pixels"][PIXEL]["access_token"]["file"]
    assert given == str(project / "link" / ".." / "meta-token")
    token = load_settings(project / "capirelay.toml").pixels[PIXEL].access_token
    assert token is not None and token.resolve() == TOKEN
    # Through a real directory, `..` is collapsed (and the file is inside the project).
    result = runner.invoke(
        app, [*_token_file_flags(project, emulator, "real/../meta-token"), "--force"]
    )
    assert result.exit_code == 0, result.output
    written = tomllib.loads((project / "capirelay.toml").read_text())
    assert written["pixels"][PIXEL]["access_token"] == {"file": "meta-token"}


def test_dot_dot_is_collapsed_only_where_the_same_file_is_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from capirelay.cli.init import _absolute, _as_written

    (tmp_path / "dir" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "dir" / "sub")
    monkeypatch.chdir(tmp_path)
    assert _absolute(Path("dir/sub/../../x")) == tmp_path / "x"
    assert _absolute(Path("link/../x")) == tmp_path / "link" / ".." / "x"
    assert _absolute(Path("dir/link-free/../x")) == tmp_path / "dir" / "link-free" / ".." / "x"
    # After a kept `..`, a real directory's `..` still goes (checked through the link).
    assert _absolute(Path("link/../sub/../x")) == tmp_path / "link" / ".." / "x"
    # The config's directory reached through a link: a file given by the real path is
    # inside it all the same; one given past a link's `..` is not written relative.
    (tmp_path / "project").symlink_to(tmp_path / "dir")
    assert _as_written(tmp_path / "dir" / "sub" / "t", tmp_path / "project") == "sub/t"
    assert _as_written(_absolute(Path("link/../t")), tmp_path / "dir") == str(
        tmp_path / "link" / ".." / "t"
    )


def test_the_default_storage_is_absolute_without_dot_dot_where_that_opens_the_same_file(
    tmp_path: Path, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SQLite file beside the config is written absolute (a relative storage path is
    read from the current directory, not the config's), spelt without ``..`` through a
    real directory (it was ``sqlite:////tmp/t/work/../deploy/capirelay.db``) and kept as
    given after a symbolic link, where dropping ``..`` would name another directory."""
    (tmp_path / "work").mkdir()
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "a" / "b")
    monkeypatch.chdir(tmp_path)
    for given, storage in (
        ("work/../deploy", tmp_path / "deploy" / "capirelay.db"),
        ("link/../deploy", tmp_path / "link" / ".." / "deploy" / "capirelay.db"),
    ):
        flags = _flags(tmp_path, emulator)
        flags[flags.index("--config") + 1] = f"{given}/capirelay.toml"
        result = runner.invoke(app, flags)
        assert result.exit_code == 0, result.output
        written = tomllib.loads((Path(given) / "capirelay.toml").read_text())
        assert written["storage"] == f"sqlite:///{storage}"
        assert storage.parent.samefile(Path(given))
    assert (tmp_path / "a" / "deploy" / "capirelay.toml").is_file()  # link/.. is a/
