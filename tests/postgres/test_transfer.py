"""``capirelay migrate --from sqlite:///... --to postgresql://...``: a SQLite outbox holding
every kind of row moves into PostgreSQL and the gateway's view of it is the same there."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from typer.testing import CliRunner

from capirelay.cli import app
from capirelay.ops.meta_store import CheckResult, DeliveredHour, meta_store_for
from capirelay.orders import order_key
from capirelay.outbox import Attempt, DeadLetterReason, NewEvent, StorageUnavailable
from capirelay.outbox.postgres import PostgresOutbox
from capirelay.outbox.receipts import MetaAnswer, Outcome, duplicate_receipt
from capirelay.outbox.sqlite import SQLiteOutbox
from capirelay.outbox.transfer import NOT_COPIED, TABLES, transfer

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
T0 = 1_800_000_000.0
WEEK = 7 * 86400
LEASE = 30.0
EMAIL = "a" * 64


def event(event_id: str, *, order_id: str | None = None, pixel_id: str = "111") -> NewEvent:
    payload: dict[str, Any] = {
        "event_name": "Purchase",
        "event_id": event_id,
        "event_time": int(T0),
        "user_data": {"em": [EMAIL]},
        "custom_data": {"order_id": order_id} if order_id else {},
    }
    key = order_key(pixel_id, payload, test_event_code=None) if order_id else None
    return NewEvent(
        pixel_id,
        "Purchase",
        event_id,
        orjson.dumps(payload),
        int(T0),
        T0 + WEEK,
        source="backend",
        order_key=key,
    )


async def _fill(path: Path) -> None:
    """Every kind of row the gateway writes, through the outbox's own methods."""
    box = SQLiteOutbox(str(path))
    await box.open()
    try:
        statuses = await box.enqueue(
            [
                event("ready"),
                event("leased"),
                event("waiting"),
                event("delivered", order_id="A-1"),
                event("dead"),
                event("ordered", order_id="A-2"),
            ],
            now=T0,
        )
        assert [str(s) for s in statuses] == ["queued"] * 6
        batch = await box.lease("111", limit=10, lease_seconds=LEASE, now=T0)
        lease_id = batch[0].lease_id
        leased = {e.event_id: e.id for e in batch}
        nul = Attempt(at=T0 + 1, status=500, code=2, message="down \x00 here", fbtrace_id="Fx")
        await box.reschedule(
            [leased["waiting"]], next_attempt_at=T0 + 3600, attempt=nul, lease_id=lease_id
        )
        await box.release([leased["ready"], leased["ordered"]], lease_id=lease_id)
        answer = MetaAnswer(fbtrace_id="Fok", events_received=1, sent_at=T0 + 2)
        await box.ack_delivered([leased["delivered"]], now=T0 + 2, answer=answer, lease_id=lease_id)
        refusal = Attempt(at=T0 + 2, status=400, code=100, subcode=2804050, message="bad")
        await box.dead_letter(
            [leased["dead"]],
            reason=DeadLetterReason.INVALID,
            attempt=refusal,
            now=T0 + 2,
            lease_id=lease_id,
        )
        # "leased" stays leased: the gateway was stopped mid-send.
        await box.record_receipts(
            [
                duplicate_receipt(
                    pixel_id="111",
                    event_name="Purchase",
                    event_id="delivered",
                    source="api",
                    payload=event("delivered").payload,
                    test_event_code=None,
                    now=T0 + 3,
                )
            ]
        )
        await box.erase({"em": {"b" * 64}}, pixel_id=None, now=T0 + 4, audit=[("em", "b" * 64)])
        await box.record_audit(
            at=T0 + 5, actor="admin", action="purge", target="reason=expired", count=0,
            origin="cli",
        )  # fmt: skip
        await box.revoke_session("c" * 64, expires_at=T0 + 86400, now=T0)
        store = meta_store_for(box)
        check = CheckResult("pixel_has_events", "da_checks", True, "FAILED", "No events", "m")
        await store.save_checks("111", [check], now=T0)
        await store.save_run("111", ran_at=T0, error=None, summary={"ok": 1})
        await store.add_delivered([DeliveredHour("111", "Purchase", int(T0 // 3600), 1, 1)])
        assert await store.acquire_lease("meta", "gateway-1", now=T0, ttl=60)
    finally:
        await box.close()


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Path:
    path = tmp_path / "capirelay.db"
    asyncio.run(_fill(path))
    return path


def _sqlite_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        return {
            t.sqlite: conn.execute(f"SELECT count(*) FROM {t.sqlite}").fetchone()[0] for t in TABLES
        }


def test_every_sqlite_table_is_copied_or_deliberately_left(sqlite_file: Path) -> None:
    with sqlite3.connect(sqlite_file) as conn:
        names = {
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
    assert names == {t.sqlite for t in TABLES} | set(NOT_COPIED)


def test_sqlite_outbox_moves_to_postgres_with_every_row(
    sqlite_file: Path, postgres_url: str
) -> None:
    counts = _sqlite_counts(sqlite_file)
    # The file really holds every kind of row.
    assert all(counts.values()), counts

    result = runner.invoke(
        app, ["migrate", "--from", f"sqlite:///{sqlite_file}", "--to", postgres_url]
    )

    assert result.exit_code == 0, result.output
    assert "counts verified" in result.output
    assert "1 events were leased by the stopped gateway" in result.output
    assert postgres_url not in result.output and str(sqlite_file) not in result.output
    asyncio.run(_check_postgres(postgres_url, counts))

    again = runner.invoke(
        app, ["migrate", "--from", f"sqlite:///{sqlite_file}", "--to", postgres_url]
    )
    assert again.exit_code == 1
    assert "already holds rows" in again.output and "--merge" in again.output
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM capirelay_queue").fetchone() == (5,)

    merged = runner.invoke(
        app, ["migrate", "--from", f"sqlite:///{sqlite_file}", "--to", postgres_url, "--merge"]
    )
    assert merged.exit_code == 0, merged.output
    with psycopg.connect(postgres_url) as conn:
        # Every row was there already (plus "fresh", enqueued since): keyed rows by their
        # key, id'd rows by their values.  A merge run twice added every queue row again
        # (9 rows, each event delivered twice) and every receipt and audit record.
        assert conn.execute("SELECT count(*) FROM capirelay_dedup").fetchone() == (
            counts["dedup"] + 1,
        )
        assert conn.execute("SELECT count(*) FROM capirelay_queue").fetchone() == (5,)
        for table in (
            "dead_letters",
            "receipts",
            "erasures",
            "operator_audit",
            "meta_check_history",
        ):
            row = conn.execute(f"SELECT count(*) FROM capirelay_{table}").fetchone()
            assert row == (counts[table],), table

    # What the SQLite file gained since is still added by the next merge, but not an
    # event the target has already delivered ("delivered" queued again in the file after
    # its key expired there: PostgreSQL still holds the key).
    asyncio.run(_enqueue_one(sqlite_file, event("later")))
    with sqlite3.connect(sqlite_file) as conn:
        conn.execute("DELETE FROM dedup WHERE event_id = 'delivered'")
    asyncio.run(_enqueue_one(sqlite_file, event("delivered")))
    merged = runner.invoke(
        app, ["migrate", "--from", f"sqlite:///{sqlite_file}", "--to", postgres_url, "--merge"]
    )
    assert merged.exit_code == 0, merged.output
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM capirelay_queue").fetchone() == (6,)
        row = conn.execute(
            "SELECT queue_id IS NOT NULL FROM capirelay_dedup WHERE event_id = 'later'"
        )
        assert row.fetchone() == (True,)  # its key pins its queue row


async def _enqueue_one(path: Path, new: NewEvent) -> None:
    box = SQLiteOutbox(str(path))
    await box.open()
    try:
        assert [str(s) for s in await box.enqueue([new], now=T0 + 30)] == ["queued"]
    finally:
        await box.close()


async def _check_postgres(url: str, counts: dict[str, int]) -> None:
    box = PostgresOutbox(url, pool_size=2, listen=False)
    await box.open()
    try:
        with psycopg.connect(url) as conn:
            for table in TABLES:
                row = conn.execute(f"SELECT count(*) FROM {table.postgres}").fetchone()
                assert row == (counts[table.sqlite],), table.label
        stats = await box.stats(now=T0 + 10)
        assert (stats.depth, stats.leased, stats.dlq_size) == (4, 0, 1)
        # Queued, waiting and (released) leased events keep their dedup keys; so does the
        # delivered one; the order ledger answers for both orders.
        again = await box.enqueue(
            [event("ready"), event("waiting"), event("leased"), event("delivered"),
             event("x", order_id="A-2"), event("fresh")],
            now=T0 + 20,
        )  # fmt: skip
        assert [str(s) for s in again][:5] == ["duplicate"] * 5
        assert str(again[5]) == "queued"
        leased = await box.lease("111", limit=10, lease_seconds=LEASE, now=T0 + 20)
        assert {e.event_id for e in leased} == {"ready", "leased", "ordered", "fresh"}
        # New ids continue above the copied ones.
        fresh = next(e for e in leased if e.event_id == "fresh")
        assert fresh.id > max(e.id for e in leased if e.event_id != "fresh")
        waiting = await box.trace("waiting")
        assert [p.where for p in waiting.pending] == ["queue"]
        [letter] = await box.dlq_list(limit=10)
        assert letter.event_id == "dead" and letter.reason == "invalid"
        delivered = await box.trace("delivered")
        outcomes = sorted(str(r.outcome) for r in delivered.receipts)
        assert outcomes == sorted([str(Outcome.DELIVERED), str(Outcome.DUPLICATE)])
        assert await box.event_ids_for_order("A-1") == ["delivered"]
        assert await box.session_revoked("c" * 64)
        [audit] = await box.audit_log()
        assert audit.action == "purge"
        [erasure] = await box.erasure_log()
        assert erasure["value_sha256"] == "b" * 64
        store = meta_store_for(box)
        [check] = await store.latest_checks("111")
        assert check.failing and check.key == "pixel_has_events"
        assert (await store.runs())["111"].summary == {"ok": 1}
        assert await store.acquire_lease("meta", "gateway-2", now=T0 + 1, ttl=60)
    finally:
        await box.close()


def test_wrong_urls_name_the_option(tmp_path: Path, postgres_url: str) -> None:
    missing = runner.invoke(
        app, ["migrate", "--from", f"sqlite:///{tmp_path}/nope.db", "--to", postgres_url]
    )
    assert missing.exit_code == 1 and "--from" in missing.output
    not_pg = runner.invoke(
        app, ["migrate", "--from", f"sqlite:///{tmp_path}/x.db", "--to", "mysql://h/db"]
    )
    assert not_pg.exit_code == 2 and "--to must be a PostgreSQL URL" in not_pg.output


def test_a_running_gateway_holding_the_file_is_named(sqlite_file: Path, postgres_url: str) -> None:
    holder = sqlite3.connect(sqlite_file, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # what a gateway's writer holds while it commits
    try:
        with pytest.raises(StorageUnavailable, match="stop the gateway"):
            transfer(str(sqlite_file), postgres_url, busy_timeout=0.05)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM capirelay_queue").fetchone() == (0,)


def test_another_programs_database_is_refused_untouched(tmp_path: Path, postgres_url: str) -> None:
    """A SQLite file with a schema version of its own and no outbox tables: refused
    before capirelay's upgrade could add its tables or change its version."""
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other, isolation_level=None)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.execute("PRAGMA user_version = 3")
    conn.close()
    before = other.read_bytes()
    result = runner.invoke(app, ["migrate", "--from", f"sqlite:///{other}", "--to", postgres_url])
    assert result.exit_code == 1
    assert "is not a capirelay outbox" in result.output
    assert "nothing was changed" in result.output
    assert other.read_bytes() == before


def _child(script: str) -> subprocess.Popen[str]:
    """A Python process running ``script``, which prints one line once it holds what it
    holds, then waits for its stdin to close (POSIX record locks belong to a process, so
    a gateway and a migration are played by another one)."""
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "holding"
    return child


def _end(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    assert child.wait(30) == 0


def test_an_outbox_a_gateway_has_open_is_not_copied(sqlite_file: Path, postgres_url: str) -> None:
    """Events a running gateway accepted during the copy would stay behind: while any
    process has the outbox open, migrate refuses at once, copying nothing."""
    gateway = _child(
        "import asyncio, sys\n"
        "from capirelay.outbox.sqlite import SQLiteOutbox\n"
        "async def main():\n"
        f"    box = SQLiteOutbox({str(sqlite_file)!r})\n"
        "    await box.open()\n"
        "    print('holding', flush=True)\n"
        "    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)\n"
        "    await box.close()\n"
        "asyncio.run(main())\n"
    )
    try:
        refused = runner.invoke(
            app, ["migrate", "--from", f"sqlite:///{sqlite_file}", "--to", postgres_url]
        )
        assert refused.exit_code == 1
        assert "has this SQLite outbox open; stop it" in refused.output
    finally:
        _end(gateway)
    with psycopg.connect(postgres_url) as conn:
        held = conn.execute("SELECT to_regclass('capirelay_queue') IS NOT NULL").fetchone()
        if held == (True,):
            assert conn.execute("SELECT count(*) FROM capirelay_queue").fetchone() == (0,)
    moved = runner.invoke(
        app, ["migrate", "--from", f"sqlite:///{sqlite_file}", "--to", postgres_url]
    )
    assert moved.exit_code == 0, moved.output


async def test_a_gateway_does_not_open_an_outbox_being_copied(sqlite_file: Path) -> None:
    migration = _child(
        "import fcntl, os, sys\n"
        f"fd = os.open({str(sqlite_file) + '-writer'!r}, os.O_RDWR)\n"
        "fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 1)\n"
        "print('holding', flush=True)\n"
        "sys.stdin.read()\n"
    )
    try:
        with pytest.raises(StorageUnavailable, match="capirelay migrate is copying it"):
            await SQLiteOutbox(str(sqlite_file)).open()
    finally:
        _end(migration)
    box = SQLiteOutbox(str(sqlite_file))
    await box.open()
    await box.close()


def test_a_wait_for_the_sqlite_lock_is_announced_first(
    sqlite_file: Path, postgres_url: str
) -> None:
    """Another program holding the file's write lock: ``on_wait`` hears of it (the CLI
    prints a line) before the copy waits, here letting go of the lock."""
    holder = sqlite3.connect(sqlite_file, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    waits: list[float] = []

    def let_go(seconds: float) -> None:
        waits.append(seconds)
        holder.execute("ROLLBACK")

    try:
        report = transfer(str(sqlite_file), postgres_url, busy_timeout=10, on_wait=let_go)
    finally:
        holder.close()
    assert waits == [10]
    assert sum(t.copied for t in report.tables) > 0


def test_an_interrupted_copy_says_what_holds(
    sqlite_file: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("capirelay.outbox.transfer.transfer", interrupted)
    result = runner.invoke(
        app, ["migrate", "--from", f"sqlite:///{sqlite_file}", "--to", postgres_url]
    )
    assert result.exit_code == 130
    assert "all of its rows or none of them" in result.output and "--merge" in result.output
