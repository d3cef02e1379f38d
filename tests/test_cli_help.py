"""Every `--help` screen reads well at 80 columns: no `<bool>` on flags, nothing cut off."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from capirelay.cli import app

runner = CliRunner(env={"COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"})


def _commands() -> list[list[str]]:
    root = typer.main.get_command(app)
    paths: list[list[str]] = [[]]

    def walk(group: object, prefix: list[str]) -> None:
        # Typer 0.29 ships its own copy of Click: look for sub-commands, not a Click class.
        commands = getattr(group, "commands", None)
        if isinstance(commands, dict):
            for name, command in commands.items():
                paths.append([*prefix, name])
                walk(command, [*prefix, name])

    walk(root, [])
    return paths


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c) or "capirelay")
def test_help_at_80_columns(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "<bool>" not in text
    assert "…" not in text, text  # an example or a help text cut off by the table
    assert max(len(line) for line in text.splitlines()) <= 80


def test_flags_show_no_type_but_values_do() -> None:
    text = runner.invoke(app, ["dlq", "purge", "--help"]).stdout
    help_line = next(line for line in text.splitlines() if "--help" in line)
    assert "Show this message" in help_line and "<" not in help_line
    config_line = next(line for line in text.splitlines() if "--config" in line)
    assert "<path>" in config_line


def test_emulator_fault_examples_are_whole() -> None:
    text = runner.invoke(app, ["emulator", "--help"]).stdout
    assert """--fault '{"kind":"throttle","code":613,"duration":60}'""" in text
    assert "ID:TOKEN" in text
    # How to expire a --pixel token: the route, whole, with a body it accepts.
    assert """POST /_emulator/tokens/expiry {"access_token":"TOKEN","expires_in":-1}""" in text
