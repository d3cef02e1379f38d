"""Storage-touching commands say which config and storage they use and never create a database
when they only read; the doctor checks the credentials a config refers to."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import psycopg
import pytest
from typer.testing import CliRunner

from capirelay.cli import app
from capirelay.secret_files import write_secret

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "CAPIRELAY_CONFIG": None})


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(tmp_path: Path, name: str = "capirelay.toml", extra: str = "") -> Path:
    path = tmp_path / name
    path.write_text(
        f'storage = "sqlite:///{tmp_path / (name + ".db")}"\n'
        f'graph_url = "http://127.0.0.1:{_closed_port()}"\n'
        '[pixels.123]\naccess_token = { env = "NO_SUCH_TOKEN_VARIABLE" }\n' + extra
    )
    return path


@pytest.mark.parametrize(
    "command", [["dlq", "list"], ["dlq", "show", "1"], ["trace", "order-1"]], ids=" ".join
)
def test_reading_a_missing_sqlite_queue_creates_nothing(tmp_path: Path, command: list[str]) -> None:
    config = _config(tmp_path)
    result = runner.invoke(app, [*command, "--config", str(config)])
    assert result.exit_code == 1
    assert f"config: {config}  storage: sqlite:///{tmp_path / 'capirelay.toml.db'}" in result.stderr
    assert "no database at" in result.stderr and "nothing was created" in result.stderr
    assert not (tmp_path / "capirelay.toml.db").exists()


def test_config_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    default = _config(tmp_path)
    named = _config(tmp_path, "named.toml")
    flagged = _config(tmp_path, "flag.toml")

    def used(*args: str, **env: Any) -> str:
        result = runner.invoke(app, ["dlq", "list", *args], env=env)
        return result.stderr.splitlines()[0]

    assert used() == f"config: capirelay.toml  storage: sqlite:///{default}.db"
    assert used(CAPIRELAY_CONFIG=str(named)).startswith(f"config: {named}  ")
    assert used("--config", str(flagged), CAPIRELAY_CONFIG=str(named)).startswith(
        f"config: {flagged}  "
    )
    assert used("--storage", "sqlite:///other.db") == "storage: sqlite:///other.db (from --storage)"


def test_a_postgres_password_is_never_printed(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["migrate", "--storage", "postgresql://capi:hunter2@127.0.0.1:1/none"]
    )
    assert "hunter2" not in result.output
    assert "postgresql://capi:***@127.0.0.1:1/none" in result.stderr


def _said(result: Any) -> str:
    return str(result.output) + str(getattr(result, "stderr", "") or "")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://capi:Pw@Secret6@127.0.0.1:5432/x", "holds '@'"),
        ("postgresql://capi:Pw/Secret2@127.0.0.1:5432/x", "holds '/'"),
        ("postgresql://capi:Pw%Secret1@127.0.0.1:5432/x", "not percent-encoding"),
        ("postgresql://capi:PwSecret3@[::1:5432/x", "host or port cannot be read"),
        ("postgresql://capi:PwSecret4@127.0.0.1:notaport/x", "host or port cannot be read"),
    ],
)
def test_a_postgres_url_libpq_would_misread_is_refused_without_its_password(
    tmp_path: Path, url: str, expected: str
) -> None:
    """libpq splits such a URL in the wrong place and quotes the piece in its error (part
    of the password, as a host name); each command refuses it first, naming the fix."""
    for args in (
        ["migrate", "--storage", url],
        ["migrate", "--from", f"sqlite:///{tmp_path / 'x.db'}", "--to", url],
        ["dlq", "list", "--storage", url],
    ):
        result = runner.invoke(app, args)
        said = _said(result)
        assert result.exit_code == 2, (args, said)
        assert expected in said
        assert "percent-encode" in said or "brackets" in said
        assert "Secret" not in said and "Traceback" not in said


def test_a_password_given_as_a_query_parameter_is_masked(tmp_path: Path) -> None:
    url = f"postgresql://capi@127.0.0.1:{_closed_port()}/none?password=QSecret7"
    result = runner.invoke(app, ["migrate", "--storage", url])
    assert "QSecret7" not in _said(result)
    assert "?password=***" in _said(result)


def test_postgres_refusals_are_one_line_naming_the_cause(postgres_database: str) -> None:
    """A role without CREATE on the schema (PostgreSQL 15's default for a role that does
    not own ``public``), a search_path naming no schema, an option libpq does not know:
    one line and exit 1, not a traceback."""
    role = f"capirelay_norights_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_database, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'NoRightsPw9'")
    try:
        host_and_database = postgres_database.split("@", 1)[1]
        cases = [
            (f"postgresql://{role}:NoRightsPw9@{host_and_database}", "permission denied"),
            (
                f"{postgres_database}?options={quote('-csearch_path=no_such_schema')}",
                "no schema has been selected",
            ),
            (f"{postgres_database}?bogus=1", "invalid URI query parameter"),
        ]
        for url, expected in cases:
            result = runner.invoke(app, ["migrate", "--storage", url])
            said = _said(result)
            assert result.exit_code == 1, said
            assert "PostgreSQL refused: " in said and expected in said
            assert "Traceback" not in said and "NoRightsPw9" not in said
        assert "GRANT CREATE ON SCHEMA" in _said(
            runner.invoke(app, ["migrate", "--storage", cases[0][0]])
        )
    finally:
        with psycopg.connect(postgres_database, autocommit=True) as admin:
            admin.execute(f"DROP ROLE IF EXISTS {role}")


def _doctor(config: Path) -> dict[str, list[dict[str, Any]]]:
    result = runner.invoke(app, ["doctor", "--json", "--config", str(config)])
    report = orjson.loads(result.stdout)
    checks: dict[str, list[dict[str, Any]]] = {}
    for check in report["checks"]:
        checks.setdefault(check["name"], []).append(check)
    return checks


def test_doctor_checks_ingest_keys_and_the_dashboard_token(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    config = _config(
        tmp_path,
        extra=(
            f'[ingest_keys.shop]\nkey = {{ file = "{secrets / "ingest-key"}" }}\n'
            f'[dashboard]\nadmin_token = {{ file = "{secrets / "dashboard-token"}" }}\n'
        ),
    )
    checks = _doctor(config)
    assert [c["status"] for c in checks["ingest keys"]] == ["fail"]
    assert "ingest_keys.shop.key (file" in checks["ingest keys"][0]["detail"]
    assert checks["dashboard"][0]["status"] == "fail"
    assert "nobody can sign in" in checks["dashboard"][0]["detail"]

    write_secret(secrets / "ingest-key", "k" * 40)
    write_secret(secrets / "dashboard-token", "t" * 40)
    checks = _doctor(config)
    assert checks["ingest keys"] == [
        {"name": "ingest keys", "status": "ok", "detail": "1 key(s) set and readable", "fix": None}
    ]
    assert checks["dashboard"][0]["status"] == "ok"


def test_doctor_says_what_it_reached_or_not(tmp_path: Path) -> None:
    checks = _doctor(_config(tmp_path))
    graph = checks["graph"][0]
    assert graph["status"] == "fail"
    assert graph["detail"].startswith("http://127.0.0.1:") and "unreachable" in graph["detail"]


def test_doctor_says_which_config_and_storage_it_checks(tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = runner.invoke(app, ["doctor", "--config", str(config)])
    storage = f"sqlite:///{tmp_path / 'capirelay.toml.db'}"
    assert result.stderr.splitlines()[0] == f"config: {config}  storage: {storage}"


def test_after_the_demo_dlq_list_points_at_the_demos_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "capirelay-demo.toml").write_text('storage = "sqlite:///capirelay-demo.db"\n')
    result = runner.invoke(app, ["dlq", "list"])
    assert result.exit_code == 1
    assert "the demo's queue: --config capirelay-demo.toml" in result.stderr
    assert not (tmp_path / "capirelay.db").exists()
