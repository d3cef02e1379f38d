"""``open_outbox`` picks the backend from the storage URL and refuses the unsafe ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from capirelay.outbox import SQLiteOutbox, open_outbox, sqlite_path_from_url
from capirelay.outbox.postgres import PostgresOutbox


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///capirelay.db", "capirelay.db"),
        ("sqlite:///./data/capirelay.db", "./data/capirelay.db"),
        ("sqlite:////var/lib/capirelay/outbox.db", "/var/lib/capirelay/outbox.db"),
        ("sqlite:///capirelay.db?mode=rwc", "capirelay.db"),
    ],
)
def test_sqlite_urls(url: str, path: str) -> None:
    assert sqlite_path_from_url(url) == path
    outbox = open_outbox(url)
    assert isinstance(outbox, SQLiteOutbox)
    assert outbox.path == Path(path)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///:memory:", "in-memory"),
        ("sqlite:///", "in-memory"),
        ("sqlite:///file::memory:?cache=shared", "in-memory"),
        ("mysql://db/capirelay", "unknown storage URL scheme 'mysql'"),
        ("capirelay.db", "unknown storage URL scheme"),
    ],
)
def test_refused_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_outbox(url)


def test_options_reach_the_backend(tmp_path: Path) -> None:
    outbox = open_outbox(f"sqlite:///{tmp_path}/x.db", synchronous="normal", max_bytes=1 << 20)
    assert isinstance(outbox, SQLiteOutbox)
    assert (outbox.synchronous, outbox.max_bytes) == ("NORMAL", 1 << 20)
    with pytest.raises(ValueError, match="synchronous"):
        open_outbox(f"sqlite:///{tmp_path}/x.db", synchronous="SOMETIMES")


@pytest.mark.parametrize(
    ("url", "conninfo"),
    [
        ("postgresql://capirelay@db/capirelay", "postgresql://capirelay@db/capirelay"),
        ("postgres://db/capirelay", "postgresql://db/capirelay"),
        (
            "postgresql+psycopg://u@db:5433/x?sslmode=require",
            "postgresql://u@db:5433/x?sslmode=require",
        ),
    ],
)
def test_postgres_urls(url: str, conninfo: str) -> None:
    outbox = open_outbox(url)
    assert isinstance(outbox, PostgresOutbox)
    assert outbox.conninfo == conninfo


def test_each_backend_takes_only_its_own_options(tmp_path: Path) -> None:
    both = {"synchronous": "NORMAL", "pool_size": 3}
    postgres = open_outbox("postgresql://db/capirelay", **both)
    assert isinstance(postgres, PostgresOutbox)
    assert postgres.pool_size == 3
    sqlite = open_outbox(f"sqlite:///{tmp_path}/x.db", **both)
    assert isinstance(sqlite, SQLiteOutbox)
    assert sqlite.synchronous == "NORMAL"
