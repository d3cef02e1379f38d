"""``[diagnostics]`` settings: defaults from the issue, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from capirelay.config import ConfigError, load_settings


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPIRELAY_CONFIG", raising=False)
    config = tmp_path / "capirelay.toml"
    config.write_text("", encoding="utf-8")
    diagnostics = load_settings(config).diagnostics
    assert (diagnostics.interval_seconds, diagnostics.jitter) == (3600.0, 0.1)
    assert (diagnostics.reporting_lag_hours, diagnostics.tolerance) == (3.0, 0.02)


@pytest.mark.parametrize(
    ("line", "field"),
    [("interval_seconds = 5", "interval_seconds"), ("tolerance = 2", "tolerance"),
     ("intervall = 60", "intervall")],
)  # fmt: skip
def test_bad_values_name_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, field: str
) -> None:
    monkeypatch.delenv("CAPIRELAY_CONFIG", raising=False)
    config = tmp_path / "capirelay.toml"
    config.write_text(f"[diagnostics]\n{line}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"diagnostics.{field}"):
        load_settings(config)
