"""The SQLite outbox's threads: one group-committing writer, the WAL's syncer, one
reader, and migrations.

See :mod:`capirelay.outbox.sqlite.outbox` for why writes are grouped: every state
change is a small function handed to :class:`GroupCommitWriter`, which runs all
that wait in ONE transaction and commits once; with ``synchronous = FULL``,
:class:`WalSyncer` makes each commit durable (an ``fdatasync`` of the WAL) before
its callers are answered; :class:`Reader` answers reads on its own connection (WAL
gives it a consistent snapshot while the writer writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future as ThreadFuture
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from capirelay.outbox._sql import Migration
from capirelay.outbox.base import StorageUnavailable
from capirelay.outbox.sqlite._statements import MIGRATIONS

__all__ = [
    "GroupCommitWriter",
    "MergeFn",
    "Reader",
    "WriteOp",
    "connect",
    "migrate",
    "storage_error",
]

log = logging.getLogger("capirelay.outbox")

T = TypeVar("T")
WriteFn = Callable[[sqlite3.Connection], Any]

# Page cache per connection (KiB): a large backlog's indexes stay in memory, not re-read.
CACHE_KIB: Final = 64 * 1024
# How often the writer retries for the write lock another process holds (seconds).
BEGIN_RETRY_FIRST: Final = 0.0001
BEGIN_RETRY_MAX: Final = 0.001


def storage_error(exc: sqlite3.Error) -> StorageUnavailable:
    """Describe a SQLite failure without any row data (SQLite's messages hold none)."""
    name = getattr(exc, "sqlite_errorname", type(exc).__name__)
    return StorageUnavailable(f"SQLite outbox unavailable ({name}): {exc}")


def connect(path: Path, *, synchronous: str, busy_timeout: float) -> sqlite3.Connection:
    # isolation_level=None: this module issues BEGIN/COMMIT itself (group commit).
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    return conn


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the numbered steps above ``PRAGMA user_version``; returns the new version."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    latest = migrations[-1].version if migrations else 0
    if current > latest:
        raise StorageUnavailable(
            f"outbox schema version {current} is newer than this capirelay knows ({latest}); "
            "upgrade capirelay or point storage at another file"
        )
    for step in migrations:
        if step.version <= current:
            continue
        # One script, one transaction: a failed step leaves the previous version intact.
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{step.script}\nPRAGMA user_version = {step.version};\nCOMMIT;"
            )
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        log.info("outbox schema migrated to version %d (%s)", step.version, step.name)
        current = step.version
    return current


@dataclass(slots=True)
class WriteOp:
    """One caller's write.  ``merge``, when set, runs a run of consecutive operations of
    the group that share it as one (``merge(conn, ops)`` answers one result per op, the
    same results as running each ``fn`` in turn); ``data`` is what it reads from each op.
    ``fn`` alone still runs the op when it is alone or retried alone."""

    fn: WriteFn
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    merge: MergeFn | None = None
    data: Any = None


MergeFn = Callable[[sqlite3.Connection, Sequence[WriteOp]], list[Any]]


_STOP: Final = object()

# bytes (an event's payload) bound as a BLOB without sqlite3's adaptation look-up:
# sqlite3 adapts every parameter that is not exactly an int, float, str or bytearray, and
# for bytes with no adapter registered that look-up fails through an AttributeError it
# formats and then drops (1.4 us a parameter, measured).  bytes(b) is b itself, so what
# is bound does not change, for this module or any other sqlite3 user of the process.
sqlite3.register_adapter(bytes, bytes)


def _deliver(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled; its write still happened
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _deliver_all(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, error in outcomes:
        _deliver(future, value, error)


# What a write came to: the op, its result, and the error it fails with (or None).
Outcome = tuple["WriteOp", Any, BaseException | None]


def _answer(outcomes: Sequence[Outcome]) -> None:
    """Hand each caller its outcome with ONE wake-up per event loop, not one per call:
    each ``call_soon_threadsafe`` is a cross-thread wake-up of the loop, and a group
    commonly holds dozens of requests of the same loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, Any]]] = {}
    for op, value, error in outcomes:
        by_loop.setdefault(op.loop, []).append((op.future, value, error))
    for loop, pending in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is already closed
            loop.call_soon_threadsafe(_deliver_all, pending)


def _run_group(conn: sqlite3.Connection, group: list[WriteOp]) -> list[Any]:
    """Every op of a group in order; consecutive ops sharing a ``merge`` run as one."""
    results: list[Any] = []
    index, size = 0, len(group)
    while index < size:
        op = group[index]
        merge = op.merge
        end = index + 1
        if merge is not None:
            while end < size and group[end].merge is merge:
                end += 1
        if end - index == 1:
            results.append(op.fn(conn))
        else:
            results.extend(merge(conn, group[index:end]))  # type: ignore[misc]
        index = end
    return results


def _open_turn_file(path: Path | None) -> int | None:
    """The file the writers of one database take turns on, or ``None`` without one (it
    cannot be created: the writers then rely on SQLite's lock and retries alone)."""
    if path is None:
        return None
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        log.warning("outbox writers take turns without %s: %s", path.name, exc.strerror)
        return None


# Byte 1 of the turn file: every process with the outbox open holds a shared POSIX lock
# on it for as long as it is open; `capirelay migrate --from` takes it exclusively for
# the whole copy, so neither runs while the other holds the file.  (The turn itself is
# an flock on the whole file: the two kinds of lock do not meet on Linux.)
OPEN_MARK_BYTE: Final = 1


def hold_open_mark(path: Path) -> int | None:
    """Open the turn file ``path`` and hold the shared lock on :data:`OPEN_MARK_BYTE`
    while the outbox is open (close the descriptor to let go).  ``None`` where the file
    cannot be opened or has no POSIX locks; :class:`StorageUnavailable` while a
    ``capirelay migrate --from`` copies the outbox.  POSIX locks belong to a process and
    die with it: a killed gateway leaves none behind."""
    return _lock_open_mark(
        path,
        exclusive=False,
        refusal="SQLite outbox unavailable: capirelay migrate is copying it to PostgreSQL; "
        "start the gateway on the PostgreSQL URL once the copy is done",
    )


def take_open_mark(path: Path) -> int | None:
    """The open mark of the turn file ``path`` taken exclusively, for ``capirelay migrate
    --from`` to hold for its copy: :class:`StorageUnavailable` while any other process
    has the outbox open; ``None`` where there is no turn file (no gateway of this
    version opened the outbox) or no POSIX locks."""
    return _lock_open_mark(
        path,
        exclusive=True,
        refusal="--from: a gateway (or another capirelay command) has this SQLite outbox "
        "open; stop it, then run this again (events it accepted during the copy would not "
        "be moved)",
    )


def _lock_open_mark(path: Path, *, exclusive: bool, refusal: str) -> int | None:
    flags = os.O_RDWR | os.O_CLOEXEC | (0 if exclusive else os.O_CREAT)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError:
        return None
    try:
        kind = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        fcntl.lockf(fd, kind | fcntl.LOCK_NB, 1, OPEN_MARK_BYTE)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            raise StorageUnavailable(refusal) from None
        return None
    return fd


def _drain(inbox: queue.SimpleQueue[Any]) -> tuple[list[Any], bool]:
    """What waits in ``inbox``, lists flattened, and whether the stop mark was among it
    (left out)."""
    left: list[Any] = []
    stopped = False
    while True:
        try:
            item = inbox.get_nowait()
        except queue.Empty:
            return left, stopped
        if isinstance(item, list):
            left.extend(item)
        elif item is _STOP:
            stopped = True
        else:
            left.append(item)


def _closed() -> StorageUnavailable:
    return StorageUnavailable("the outbox closed before this write")


def _failed(ops: Iterable[WriteOp], error: BaseException) -> list[Outcome]:
    return [(op, None, error) for op in ops]


_fdatasync: Final = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


class WalSyncer(threading.Thread):
    """Makes committed transactions durable after the write lock is released, then
    answers their callers (``synchronous = FULL`` done outside the lock).

    With ``PRAGMA synchronous = FULL`` SQLite fsyncs the WAL inside ``COMMIT``, while
    the file's write lock (and, under ``serve --workers N``, the writers' turn) is
    held, so every other writer waits for each fsync.  The writer connection runs
    ``NORMAL`` instead (no sync in ``COMMIT``) and hands each committed group here;
    this thread syncs the WAL file (``fdatasync``, what SQLite's own sync of the WAL
    does on Linux) and only then answers the group's callers.  One sync covers every
    commit queued before it began, the writer meanwhile runs the next group, and
    other processes' writers no longer wait for this one's disk.

    What a caller is told is unchanged: its answer follows a sync of the WAL that
    began after its ``COMMIT``, so its transaction is on disk, as with ``FULL``.
    SQLite's documentation of ``PRAGMA synchronous`` says what ``NORMAL`` still
    syncs in WAL mode: "the WAL file is synchronized before each checkpoint and the
    database file is synchronized after each completed checkpoint and the WAL file
    header is synchronized when a WAL file begins to be reused after a checkpoint".
    A frame is only overwritten once a checkpoint has copied the whole WAL into the
    database and synced it, so a sync of the file covers every earlier commit, other
    processes' included (``fdatasync`` works on the file, whichever descriptor or
    process wrote it).  An answer that rests on another commit (a duplicate key)
    comes after its own commit, hence after a sync that covers both.

    The difference from SQLite's own ``FULL``: it syncs before other connections
    can see the commit; here they may read it before the sync (``trace``, stats, the
    dashboard).  Nothing is acknowledged from it until a sync covers it.  If a sync
    fails, that stops being true (after a write-back error Linux may report the next
    sync as a success without having written the lost pages, and WAL recovery after a
    power loss stops at the first lost frame), so a failed sync is final: this
    thread fails every outcome from then on, the writer starts no new group and
    ``ping`` says not ready, until the gateway is restarted (:attr:`failure`).
    That a later sync reports an earlier write-back error to this descriptor relies
    on Linux 4.13 or later (each open descriptor is told of the error once).
    Outcomes are answered in commit order.
    """

    def __init__(self, wal: Path) -> None:
        super().__init__(name="capirelay-outbox-sync", daemon=True)
        self._wal = wal
        # The WAL file as it is now: SQLite does not replace it while a connection (the
        # writer's) is open on the database, so one descriptor serves for the writer's
        # whole life; a WAL unlinked under it is a failure (sync).
        self._fd = os.open(wal, os.O_RDWR | os.O_CLOEXEC)
        self._inbox: queue.SimpleQueue[list[Outcome] | object] = queue.SimpleQueue()
        # Set (under the lock) when the thread ends: what is put after that is failed at
        # once instead of waiting in a queue nobody reads.
        self._gate = threading.Lock()
        self._exited = False
        self.failure: StorageUnavailable | None = None
        self.syncs = 0

    def put(self, outcomes: list[Outcome]) -> None:
        with self._gate:
            if not self._exited:
                self._inbox.put(outcomes)
                return
        _answer(_failed((op for op, _, _ in outcomes), self.failure or _closed()))

    def stop(self) -> None:
        """Answer what is queued (after a last sync), then exit."""
        self._inbox.put(_STOP)

    def run(self) -> None:
        batch: list[Outcome] = []
        try:
            stopping = False
            while not stopping:
                item = self._inbox.get()
                if item is _STOP:
                    return
                more, stopping = _drain(self._inbox)
                batch = [*item, *more]  # type: ignore[misc]
                _answer(self._synced(batch))
                batch = []
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            # However the thread ends, nobody is left waiting: the batch it held (if its
            # answers did not go out), what is queued, and what is put from now on.
            with self._gate:
                self._exited = True
            left, _ = _drain(self._inbox)
            with contextlib.suppress(Exception):
                failure = self.failure or _closed()
                _answer(_failed((op for op, _, _ in [*batch, *left]), failure))
            self.close()

    def close(self) -> None:
        """Close the WAL descriptor (the thread does it when it ends)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def _synced(self, batch: list[Outcome]) -> list[Outcome]:
        """``batch`` as it may be answered: as is after a sync, failed if there is none."""
        if self.failure is None:
            try:
                self.sync()
            except Exception as exc:  # any failure ends acknowledgements
                self._fail(exc)
        if self.failure is not None:
            return _failed((op for op, _, _ in batch), self.failure)
        return batch

    def _fail(self, exc: BaseException) -> None:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        log.critical(
            "outbox: the sync of %s failed (%s); what was committed since the last sync "
            "may not be on disk, so nothing more is acknowledged: check the disk and "
            "restart the gateway",
            self._wal.name,
            reason,
        )
        self.failure = StorageUnavailable(
            f"SQLite outbox unavailable: a sync of the WAL failed ({reason}); "
            "check the disk and restart the gateway"
        )

    def sync(self) -> None:
        """``fdatasync`` the WAL file; :class:`OSError` if it fails or was removed."""
        _fdatasync(self._fd)
        if os.fstat(self._fd).st_nlink == 0:
            raise OSError(errno.ENOENT, "the WAL file was removed", str(self._wal))
        self.syncs += 1


class GroupCommitWriter(threading.Thread):
    """The only thread that writes; see the module docstring for the group-commit rules."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        max_group: int,
        busy_timeout: float = 5.0,
        turn_file: Path | None = None,
        sync_outside_lock: bool = False,
    ) -> None:
        """``sync_outside_lock``: the connection asks for ``synchronous = FULL``; in WAL
        mode, commit with ``NORMAL`` and let a :class:`WalSyncer` make each commit
        durable before its callers are answered (same guarantee, shorter lock)."""
        super().__init__(name="capirelay-outbox-writer", daemon=True)
        self._connect = connect
        self._max_group = max_group
        self._busy_timeout = busy_timeout
        self._turn_file = turn_file
        self._turn_fd: int | None = None
        self._sync_outside_lock = sync_outside_lock
        self._syncer: WalSyncer | None = None
        # An item is one WriteOp, a list of them (one event-loop iteration's writes, see
        # submit_soon) or _STOP.
        self._inbox: queue.SimpleQueue[WriteOp | list[WriteOp] | object] = queue.SimpleQueue()
        # Guards _closing together with the inbox: once _STOP is in, nothing follows it.
        self._gate = threading.Lock()
        self._closing = False
        # The writes each event loop submitted in its current iteration (submit_soon),
        # handed over as one inbox item when the loop runs flush; only that loop's
        # thread touches its own entry.
        self._batches: dict[asyncio.AbstractEventLoop, list[WriteOp]] = {}
        # What the writer thread took from the inbox but did not fit in the group
        # (max_group): the next group starts with it.  The writer thread's alone.
        self._carry: list[WriteOp] = []
        self.ready: ThreadFuture[None] = ThreadFuture()
        self.commits = 0
        self.operations = 0

    def submit(self, op: WriteOp) -> None:
        """Queue a write; :class:`StorageUnavailable` at once if the writer is stopping."""
        with self._gate:
            if self._closing:
                raise StorageUnavailable("the outbox is closing")
            self._inbox.put(op)

    def submit_soon(self, op: WriteOp) -> None:
        """Queue a write with the others ``op.loop`` submits in this iteration of its loop:
        they reach the writer as ONE inbox item when the loop next runs its callbacks
        (:meth:`flush`, scheduled with ``call_soon`` by the first of them), so a burst of
        requests costs the writer one wake-up and the gate one lock, not one each.  Only
        on ``op.loop``'s own thread.  Nothing changes for the caller: ``op.future`` is
        resolved after the group that carries it commits, or fails as :meth:`submit`'s
        would (:class:`StorageUnavailable` if the writer is stopping by then)."""
        if self._closing:
            raise StorageUnavailable("the outbox is closing")
        loop = op.loop
        batch = self._batches.get(loop)
        if batch is None:
            self._batches[loop] = [op]
            loop.call_soon(self.flush, loop)
        else:
            batch.append(op)

    def flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand ``loop``'s writes of :meth:`submit_soon` to the writer now (on ``loop``'s
        thread); each fails with :class:`StorageUnavailable` if the writer is stopping."""
        batch = self._batches.pop(loop, None)
        if not batch:
            return
        with self._gate:
            if not self._closing:
                self._inbox.put(batch)
                return
        refused = StorageUnavailable("the outbox is closing")
        for op in batch:
            _deliver(op.future, None, refused)

    def stop(self) -> None:
        """Refuse new writes; the thread finishes those already queued, then exits."""
        with self._gate:
            if not self._closing:
                self._closing = True
                self._inbox.put(_STOP)

    def run(self) -> None:
        try:
            conn = self._connect()
            migrate(conn)
        except (sqlite3.Error, StorageUnavailable) as exc:
            self.ready.set_exception(
                exc if isinstance(exc, StorageUnavailable) else storage_error(exc)
            )
            return
        # From here on the writer waits for the file's write lock itself (_begin): SQLite's
        # own busy handler sleeps 1, 2, 5, 10 ... 100 ms between tries, which under
        # `serve --workers N` (N writers on one file) turns a 0.5 ms wait into a 100 ms one.
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            self._syncer = self._start_syncer(conn)
        except BaseException as exc:  # open() must hear about it, whatever it is
            conn.close()
            if isinstance(exc, sqlite3.Error):
                failure = storage_error(exc)
            elif isinstance(exc, OSError):
                failure = StorageUnavailable(f"SQLite outbox unavailable: {exc.strerror}")
            else:
                failure = StorageUnavailable(
                    f"SQLite outbox unavailable: its WAL sync failed to start "
                    f"({type(exc).__name__})"
                )
            self.ready.set_exception(failure)
            return
        self._turn_fd = _open_turn_file(self._turn_file)
        self.ready.set_result(None)
        try:
            self._serve(conn)
        finally:
            self._refuse_pending()
            if self._syncer is not None:
                # Before the connection closes: closing the last one removes the WAL.
                self._syncer.stop()
                self._syncer.join()  # it fails whatever it could not answer
            conn.close()
            if self._turn_fd is not None:
                os.close(self._turn_fd)

    def _start_syncer(self, conn: sqlite3.Connection) -> WalSyncer | None:
        """Commits synced outside the write lock (:class:`WalSyncer`), when asked for and
        the file is in WAL mode (in rollback-journal mode SQLite's own ``FULL`` stays)."""
        if not self._sync_outside_lock:
            return None
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            return None
        database = Path(conn.execute("PRAGMA database_list").fetchone()[2])
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the WAL is open
        conn.execute("PRAGMA synchronous = NORMAL")
        syncer = WalSyncer(database.with_name(database.name + "-wal"))
        try:
            syncer.sync()  # what the migrations wrote, before anything is answered
            syncer.start()
        except BaseException:
            syncer.close()
            raise
        return syncer

    @property
    def failure(self) -> StorageUnavailable | None:
        """Why nothing more can be acknowledged (a failed sync, see :class:`WalSyncer`)."""
        syncer = self._syncer
        if syncer is None:
            return None
        if syncer.failure is None and not syncer.is_alive() and self.is_alive():
            return StorageUnavailable("SQLite outbox unavailable: its sync thread stopped")
        return syncer.failure

    def _refuse_pending(self) -> None:
        """Fail every write the thread will no longer run (it is exiting) instead of
        leaving its caller waiting forever."""
        with self._gate:
            self._closing = True
        left, _ = _drain(self._inbox)
        _answer(_failed([*self._carry, *left], _closed()))
        self._carry = []

    def _serve(self, conn: sqlite3.Connection) -> None:
        stopping = False
        # After the stop mark, what was carried over still runs (it was submitted first).
        while not stopping or self._carry:
            if not self._carry:
                item = self._inbox.get()
                if item is _STOP:
                    return
                self._carry = item if isinstance(item, list) else [item]  # type: ignore[list-item]
            first, self._carry = self._carry[: self._max_group], self._carry[self._max_group :]
            stopping = self._commit_group(conn, first) or stopping

    def _gather(self, group: list[WriteOp]) -> bool:
        """Add to ``group`` what waits in the inbox (up to ``max_group``; the rest of a
        list that does not fit is carried to the next group); True when the stop mark
        was among it (nothing follows it)."""
        while len(group) < self._max_group:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            if isinstance(item, list):
                room = self._max_group - len(group)
                group.extend(item[:room])
                self._carry = item[room:]
            else:
                group.append(item)  # type: ignore[arg-type]
        return False

    def _begin(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE`` (take the write lock), retried every 0.1 to 1 ms while another
        process holds it, for at most ``busy_timeout`` seconds; then SQLITE_BUSY."""
        delay = BEGIN_RETRY_FIRST
        deadline: float | None = None
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_BUSY:
                    raise
                now = time.monotonic()
                deadline = now + self._busy_timeout if deadline is None else deadline
                if now >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, BEGIN_RETRY_MAX)

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """This process's turn at the file's write lock among the gateway's writers.

        Several ``serve --workers`` processes write one file.  SQLite's lock has no
        queue: a writer that finds it taken can only retry (:meth:`_begin`), and the
        process that just committed, whose next group is already waiting, usually
        takes it again first, so the other's requests waited for a lucky retry (the
        ``--workers 2`` p99 of 140-300 ms in docs/benchmarks.md).  An exclusive
        ``flock`` on a file beside the database, taken before ``BEGIN IMMEDIATE`` and
        released after ``COMMIT``, makes the writers wait in the kernel and hands the
        turn over at once to one that waits.  SQLite's lock still decides who writes
        (other programs on the file do not take the turn; ``_begin`` still retries).
        """
        fd = self._turn_fd
        if fd is None:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)  # releases the GIL while it waits
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _commit_group(self, conn: sqlite3.Connection, first: list[WriteOp]) -> bool:
        """Commit ``first`` (one inbox item, or what was carried over) and what waits
        behind it as one group; True when the stop mark was taken from the inbox (the
        writer exits after this group and what is carried over).

        The group is gathered once the write lock is held (the turn and ``BEGIN
        IMMEDIATE``), not before: while another process commits, the writes queued
        here keep joining this group instead of waiting for the one after it, so under
        ``serve --workers N`` each turn at the lock carries every request that waited
        for it (gathered first, a group waited for the lock at the size it had when it
        began to wait, and the next group, a small one, waited again)."""
        group = first
        stopping = False
        failure = self.failure
        if failure is not None:
            # A sync failed: nothing more is committed (see WalSyncer).
            stopping = self._gather(group)
            _answer(_failed(group, failure))
            return stopping
        try:
            with self._turn():
                self._begin(conn)
                stopping = self._gather(group)
                results = _run_group(conn, group)
                conn.execute("COMMIT")
        except Exception:
            self._rollback(conn)
            if len(group) == 1:
                self._commit_alone(conn, group[0])
            else:
                # Something in the group failed: retry each alone so one bad operation
                # (or one that needs space the disk no longer has) fails only itself.
                for op in group:
                    self._commit_alone(conn, op)
            return stopping
        outcomes: list[Outcome] = [
            (op, result, None) for op, result in zip(group, results, strict=True)
        ]
        self._settle(outcomes, committed=True)
        return stopping

    def _commit_alone(self, conn: sqlite3.Connection, op: WriteOp) -> None:
        try:
            with self._turn():
                self._begin(conn)
                result = op.fn(conn)
                conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            self._rollback(conn)
            self._settle([(op, None, exc)])
        except sqlite3.Error as exc:
            self._rollback(conn)
            log.error("outbox write failed: %s", storage_error(exc))
            self._settle([(op, None, storage_error(exc))])
        except Exception as exc:
            self._rollback(conn)
            self._settle([(op, None, exc)])
        else:
            self._settle([(op, result, None)], committed=True)

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        # SQLite rolls back by itself on some errors (SQLITE_FULL, IOERR); then there is
        # nothing left to roll back and ROLLBACK itself would fail.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _settle(self, outcomes: list[Outcome], *, committed: bool = False) -> None:
        """Answer the callers of what just ran: at once, or once a sync of the WAL has
        made it durable (:class:`WalSyncer`).  Errors wait for the sync too: a refusal
        may rest on an earlier commit (a key it holds), which must not be taken back.

        ``committed``: the outcomes are one commit's, counted (``commits``,
        ``operations``) before any caller can hear of them, and once a syncer holds
        them: a caller that has its answer, or sees the count, finds both true."""
        syncer = self._syncer
        failure = self.failure
        if syncer is not None and failure is None:
            # Counted once the syncer holds them (a counted commit is its to sync); it
            # answers only after an fdatasync, well after this count.
            syncer.put(outcomes)
            self._count(outcomes, committed)
            return
        self._count(outcomes, committed)
        _answer(outcomes if failure is None else _failed((op for op, _, _ in outcomes), failure))

    def _count(self, outcomes: list[Outcome], committed: bool) -> None:
        if committed:
            self.commits += 1
            self.operations += len(outcomes)


class Reader:
    """One thread with its own read-only connection; WAL lets it read while the writer writes."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capirelay-reader")
        self._conn: sqlite3.Connection | None = None

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` in ONE read transaction: all its statements see the same snapshot (each
        statement outside a transaction takes its own, and a row the writer moves
        between two of them, say from leased to ready, would be seen by neither)."""
        conn = self._conn
        if conn is None:
            conn = self._conn = self._connect()
            conn.execute("PRAGMA query_only = 1")
        try:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise storage_error(exc) from None

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, fn)

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_connection)
        self._executor.shutdown(wait=True)
