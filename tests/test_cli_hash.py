"""`capirelay hash` warns on stderr about every input it had to guess at or cut down."""

from __future__ import annotations

import hashlib

import pytest
from typer.testing import CliRunner

from capirelay.cli import app

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


@pytest.mark.parametrize(
    ("args", "normalized", "warning"),
    [
        (["ph", "(650)555-1212"], "6505551212", "no country code and no --country"),
        # Ten digits that are a US number without its 1 and also Norway's +47 98570523
        # written without its "+": both readings are told (test below).
        (["ph", "(479) 857-0523"], "4798570523", "reads two ways and no --country"),
        (["ph", "4798570523"], "4798570523", "reads two ways and no --country"),
        (["phone", "650-555-1212 ext. 12", "--country", "US"], "16505551212", "extension"),
        (["zp", "94025-1234"], "94025", "ZIP+4"),
        (["zp", "SW1A 1AA"], "sw1a1aa", "no --country given"),
        (["st", "Bavaria"], "bavaria", "not a 2-letter state code"),
        (["db", "01/02/1990"], "19900102", "read month first (US)"),
        (["db", "01.02.1990"], "19900201", "read day first"),
        (["db", "2/16/97"], "19970216", "two-digit year"),
        (["fn", "Jo3"], "jo3", "contains digits"),
    ],
)
def test_lossy_inputs_warn_on_stderr(args: list[str], normalized: str, warning: str) -> None:
    result = runner.invoke(app, ["hash", *args])
    assert result.exit_code == 0, result.output
    digest = hashlib.sha256(normalized.encode()).hexdigest()
    # stdout keeps exactly the two result lines; the warning is on stderr only.
    assert result.stdout.splitlines() == [f"normalized: {normalized}", f"sha256:     {digest}"]
    assert result.stderr.startswith("warning: ")
    assert warning in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["ph", "+1 (650) 555-1212"],
        ["ph", "(650) 555-1212", "--country", "US"],
        ["em", " Foo@Example.COM "],
        ["st", "California"],
        ["zp", "94025"],
        ["db", "1990-02-01"],
        ["ct", "St. Louis"],
        ["fn", "José"],
    ],
)
def test_faithful_inputs_do_not_warn(args: list[str]) -> None:
    result = runner.invoke(app, ["hash", *args])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


@pytest.mark.parametrize(
    "args",
    [
        # Meta's documented normalized phone (Customer Information Parameters: 16505551212),
        # and a UK number written with its calling code and no "+": nothing is missing.
        ["ph", "16505551212"],
        ["ph", "442079460958"],
        # Outside the US, Meta's rule for st is the name lowercased without punctuation or
        # spaces, not a code: bayern is what Meta hashes.
        ["st", "Bayern", "--country", "DE"],
        ["st", "New South Wales", "--country", "AU"],
    ],
)
def test_values_already_as_meta_documents_them_do_not_warn(args: list[str]) -> None:
    result = runner.invoke(app, ["hash", *args])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_a_us_state_name_that_is_no_state_still_warns() -> None:
    result = runner.invoke(app, ["hash", "st", "Calfornia", "--country", "US"])
    assert result.exit_code == 0, result.output
    assert "not a 2-letter state code" in result.stderr


@pytest.mark.parametrize(
    ("value", "as_written", "us"),
    [
        ("4798570523", "+47 98 57 05 23 (Norway)", "(479) 857-0523"),
        ("(479) 857-0523", "+47 98 57 05 23 (Norway)", "(479) 857-0523"),
        # A Belgian number written with its code but no "+" is also a US number's digits.
        ("3212345678", "+32 12 34 56 78 (Belgium)", "(321) 234-5678"),
        ("4687654321", "+46 8 765 43 21 (Sweden)", "(468) 765-4321"),
    ],
)
def test_ten_digits_that_read_two_ways_are_told_both_readings(
    value: str, as_written: str, us: str
) -> None:
    """Such a phone was told 'looks like it has no country code', false for the Belgian
    number written with its code; the hash (of the digits, the first reading) is unchanged."""
    result = runner.invoke(app, ["hash", "ph", value])
    assert result.exit_code == 0, result.output
    digits = "".join(ch for ch in value if ch.isdigit())
    digest = hashlib.sha256(digits.encode()).hexdigest()
    assert result.stdout.splitlines() == [f"normalized: {digits}", f"sha256:     {digest}"]
    [line] = result.stderr.strip().splitlines()
    assert f"as {as_written}, written with its country code" in line
    assert f"or as the US number {us} without its 1" in line
    assert "hashed as the first" in line and "+1" in line
    assert "looks like it has no country code" not in line
    us_reading = runner.invoke(app, ["hash", "ph", value, "--country", "US"])
    assert us_reading.stderr == ""
    assert digest not in us_reading.stdout  # the US reading hashes differently: say which


def test_digits_that_read_only_as_a_national_number_keep_the_plain_warning() -> None:
    result = runner.invoke(app, ["hash", "ph", "6505551212"])
    assert "looks like it has no country code" in result.stderr
    assert "reads two ways" not in result.stderr
