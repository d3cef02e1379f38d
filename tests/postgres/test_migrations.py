"""Schema migrations on the real PostgreSQL: from empty, re-run, racing migrators, the CLI."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from capirelay.cli import app
from capirelay.outbox import StorageUnavailable
from capirelay.outbox.postgres.migrate import (
    MIGRATIONS,
    applied_versions,
    load_migrations,
    migrate_url,
)

ALL_VERSIONS = [m.version for m in MIGRATIONS]
TABLES = {
    "capirelay_migrations",
    "capirelay_queue",
    "capirelay_dedup",
    "capirelay_dead_letters",
    "capirelay_pixel_state",
    # 0004: Meta diagnostics
    "capirelay_meta_checks",
    "capirelay_meta_check_history",
    "capirelay_meta_runs",
    "capirelay_delivered_hourly",
    "capirelay_meta_lease",
    # 0005: dashboard sessions, operator audit
    "capirelay_revoked_sessions",
    "capirelay_operator_audit",
    # 0006: order ledger
    "capirelay_order_ledger",
    # 0007: receipts, erasure audit
    "capirelay_receipts",
    "capirelay_erasures",
    # 0009: delivered receipts, one row per acked batch
    "capirelay_receipt_batches",
    # 0010: leases, one row per lease
    "capirelay_leases",
    # 0015: queue statistics shared between replicas
    "capirelay_queue_stats",
}


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
    return {r[0] for r in rows}


async def recorded(url: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return await applied_versions(conn)


def test_migration_files_are_numbered_without_gaps() -> None:
    steps = load_migrations()
    assert [m.version for m in steps] == list(range(1, len(steps) + 1))
    assert all(m.script.strip() and m.name for m in steps)


async def test_from_empty_then_idempotent(postgres_url: str) -> None:
    assert tables(postgres_url) == set()
    assert await migrate_url(postgres_url) == ALL_VERSIONS
    assert tables(postgres_url) == TABLES
    assert await recorded(postgres_url) == ALL_VERSIONS
    assert await migrate_url(postgres_url) == []
    assert await recorded(postgres_url) == ALL_VERSIONS


async def test_replicas_starting_together_migrate_once(postgres_url: str) -> None:
    results = await asyncio.gather(*(migrate_url(postgres_url) for _ in range(6)))
    assert sorted(map(tuple, results)) == [()] * 5 + [tuple(ALL_VERSIONS)]
    assert await recorded(postgres_url) == ALL_VERSIONS


async def test_an_interrupted_upgrade_resumes_at_the_missing_step(postgres_url: str) -> None:
    await migrate_url(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE capirelay_pixel_state")
        conn.execute("DELETE FROM capirelay_migrations WHERE version = 2")
    assert await migrate_url(postgres_url) == [2]
    assert tables(postgres_url) == TABLES


async def test_a_newer_schema_is_refused(postgres_url: str) -> None:
    await migrate_url(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO capirelay_migrations (version, name) VALUES (999, 'future')")
    with pytest.raises(StorageUnavailable, match="newer"):
        await migrate_url(postgres_url)


async def test_unreachable_database_is_storage_unavailable() -> None:
    with pytest.raises(StorageUnavailable, match="unreachable"):
        await migrate_url("postgresql://postgres@127.0.0.1:1/nothing", connect_timeout=1)


def test_cli_migrate_with_storage_url(postgres_url: str) -> None:
    first = CliRunner().invoke(app, ["migrate", "--storage", postgres_url])
    assert first.exit_code == 0, first.output
    assert f"applied migrations {', '.join(map(str, ALL_VERSIONS))};" in first.output
    again = CliRunner().invoke(app, ["migrate", "--storage", postgres_url])
    assert again.exit_code == 0, again.output
    assert f"up to date (version {ALL_VERSIONS[-1]})" in again.output
    assert postgres_url.split("@")[0] not in again.output.replace("postgresql://", "")


def test_cli_migrate_reads_the_config(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CAPIRELAY_CONFIG", raising=False)
    config = tmp_path / "capirelay.toml"
    config.write_text(f'storage = "{postgres_url}"\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["migrate", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert tables(postgres_url) == TABLES


def test_cli_migrate_refuses_an_unreachable_database() -> None:
    result = CliRunner().invoke(
        app, ["migrate", "--storage", "postgresql://postgres@127.0.0.1:1/nothing"]
    )
    assert result.exit_code != 0
    assert "unreachable" in result.output


def test_cli_migrate_on_sqlite_has_nothing_to_do(tmp_path: Path) -> None:
    # Not a refusal (it exited 1): a deploy step runs migrate whatever the backend.
    result = CliRunner().invoke(app, ["migrate", "--storage", f"sqlite:///{tmp_path / 'x.db'}"])
    assert result.exit_code == 0
    assert "SQLite outbox migrates itself" in result.output
