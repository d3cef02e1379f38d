"""`python -m capirelay.server` exits 2 with a clear message on any configuration mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from capirelay.server.run import main


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
