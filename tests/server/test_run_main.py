"""`python -m capirelay.server` exits 2 with a clear message on any configuration mistake."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import capirelay.server.run as run_module
from capirelay.server.run import describe_storage, main


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[delivery]\nbatch_size = 0\n", "delivery.batch_size"),
        (
            '[webhooks.shop]\npreset = "nosuch"\npixel_id = "123"\nsecret = {env = "X"}\n',
            "unknown webhook preset",
        ),
    ],
)
def test_config_mistakes_exit_2_with_the_setting_named(
    tmp_path: Path, body: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "capirelay.toml"
    config.write_text(f'storage = "sqlite:///{tmp_path / "q.db"}"\n' + body)
    assert main(["--config", str(config), "--port", "0"]) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize("workers", [1, 2])
def test_config_mistakes_exit_2_before_any_worker_starts(
    tmp_path: Path, workers: int, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "capirelay.toml"
    config.write_text(
        f'storage = "sqlite:///{tmp_path / "q.db"}"\n'
        '[webhooks.shop]\npreset = "nosuch"\npixel_id = "123"\nsecret = {env = "X"}\n'
    )
    assert main(["--config", str(config), "--port", "0", "--workers", str(workers)]) == 2
    assert "unknown webhook preset" in capsys.readouterr().err


def test_workers_below_one_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "capirelay.toml"
    config.write_text(f'storage = "sqlite:///{tmp_path / "q.db"}"\n')
    assert main(["--config", str(config), "--port", "0", "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


class _Server:
    """What ``main`` runs, standing in for uvicorn: returns at once."""

    ran = False

    def run(self) -> None:
        self.ran = True


def test_the_startup_line_names_the_sqlite_file_a_relative_url_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # sqlite:///var/lib/... is relative (three slashes): the line said only the URL, and
    # serve created ./var/lib/capirelay/ in whatever directory it ran in without a word.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAPIRELAY_CONFIG", raising=False)
    config = tmp_path / "capirelay.toml"
    config.write_text(
        'storage = "sqlite:///var/lib/capirelay/capirelay.db"\n'
        '[pixels.1234567890]\naccess_token = { env = "CAPIRELAY_TEST_RUN_MAIN_TOKEN" }\n'
    )
    server = _Server()
    monkeypatch.setattr(run_module, "build_server", lambda *args, **kwargs: server)
    assert main(["--config", str(config), "--port", "0"]) == 0
    assert server.ran
    [line] = [line for line in capsys.readouterr().err.splitlines() if "storage" in line]
    file = tmp_path / "var" / "lib" / "capirelay" / "capirelay.db"
    assert line.endswith(
        f"storage sqlite:///var/lib/capirelay/capirelay.db (SQLite file {file})"
    ), line


def test_a_postgresql_storage_is_described_without_its_password() -> None:
    url = "postgresql://capirelay:s3cret@db:5432/capirelay"
    assert "s3cret" not in describe_storage(url) and "SQLite" not in describe_storage(url)
    assert describe_storage("sqlite:////srv/q.db") == "sqlite:////srv/q.db (SQLite file /srv/q.db)"


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another program listens on for the test's length."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        yield other.getsockname()[1]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_in_use_exits_2_before_the_gateway_starts(
    tmp_path: Path, workers: int, taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "capirelay.toml"
    database = tmp_path / "q.db"
    config.write_text(
        f'storage = "sqlite:///{database}"\n[pixels.1234567890]\naccess_token = {{ env = "X" }}\n'
    )
    argv = ["--config", str(config), "--host", "127.0.0.1", "--port", str(taken_port)]
    assert main([*argv, "--workers", str(workers)]) == 2
    err = capsys.readouterr().err
    assert (
        f"cannot listen on 127.0.0.1:{taken_port} (Address already in use); "
        "stop what uses it or pass --port"
    ) in err, err
    assert "startup" not in err.lower() and "Errno" not in err
    assert not database.exists()  # nothing started: not even the storage was opened


def test_capirelay_serve_on_a_port_in_use_is_one_line_and_exit_2(
    tmp_path: Path, taken_port: int
) -> None:
    from typer.testing import CliRunner

    from capirelay.cli import app

    config = tmp_path / "capirelay.toml"
    config.write_text(
        f'storage = "sqlite:///{tmp_path / "q.db"}"\n'
        '[pixels.1234567890]\naccess_token = { env = "X" }\n'
    )
    argv = ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(taken_port)]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{taken_port} (Address already in use)" in result.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_no_pixel_configured_exits_2_before_the_gateway_starts(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("CAPIRELAY_CONFIG", raising=False)
    started: list[str] = []
    monkeypatch.setattr(run_module, "serve_workers", lambda *a, **k: started.append("workers"))
    server = _Server()
    monkeypatch.setattr(run_module, "build_server", lambda *args, **kwargs: server)
    config = tmp_path / "capirelay.toml"
    database = tmp_path / "q.db"
    config.write_text(f'storage = "sqlite:///{database}"\n')
    argv = ["--config", str(config), "--host", "127.0.0.1", "--port", "0"]
    assert main([*argv, "--workers", str(workers)]) == 2
    assert not started and not server.ran
    err = capsys.readouterr().err
    assert f"{config} has no [pixels.<PIXEL_ID>] table: nothing could be delivered" in err, err
    assert "run `capirelay init`" in err
    assert not database.exists()
