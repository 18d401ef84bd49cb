"""``sqlite:///path/to/lockd.db``: the embedded, durable default.

One table of ``(key, value, version)``. Compare-and-set is a single ``UPDATE ... WHERE
version = ?`` (or ``INSERT OR IGNORE`` to create; ``DELETE ... WHERE version = ?`` to
delete) with a fresh random version per write, so
SQLite's own file locking makes it atomic across every process that opens the same file.
Calls run on dedicated threads so the event loop never waits on disk or on another
process's lock. The statements work on any SQLite 3 since 3.7 (WAL); none needs RETURNING.

Durability: WAL journal with ``synchronous=FULL`` by default, so an acknowledged grant
survives a crash of lockd and of the machine. ``?synchronous=normal`` trades the latter for
speed (a process crash still loses nothing).

Change feed (:meth:`SqliteBackend.watch`): SQLite has no notifications, but ``PRAGMA
data_version`` on a connection changes whenever another connection (this process's writer
included) commits. The feed polls it every ``FEED_POLL`` seconds on a connection and thread
of its own, and after a change reads the keys' versions to say which keys changed.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from .base import (
    Backend,
    BackendUnavailable,
    CasResult,
    ChangeSink,
    InvalidBackendURL,
    Version,
)
from .urls import Options

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key     TEXT PRIMARY KEY,
    value   BLOB NOT NULL,
    version NOT NULL
) WITHOUT ROWID
"""

SYNCHRONOUS = ("off", "normal", "full", "extra")
#: Seconds between two polls of ``PRAGMA data_version`` by the change feed.
FEED_POLL = 0.05


class SqliteBackend(Backend):
    scheme = "sqlite"
    has_feed = True

    def __init__(self, path: Path, *, synchronous: str = "full", busy_timeout: float = 5.0):
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        # Reads have their own thread and connection: in WAL mode they need not wait for
        # a write's fsync, which is what made polls slow while grants were committing.
        self._reader: ThreadPoolExecutor | None = None
        self._read_conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockd-sqlite")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockd-sqlite-r")
        await self._run(self._connect)
        await self._run(self._connect_reader, read=True)

    def _open_connection(self) -> sqlite3.Connection:
        return sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._open_connection()
        self._switch_to_wal(conn)
        conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        conn.execute(SCHEMA)
        self._conn = conn

    def _switch_to_wal(self, conn: sqlite3.Connection) -> None:
        """``PRAGMA journal_mode=WAL``, waiting up to the busy timeout for the file.

        The switch needs the file to itself, and SQLite answers "database is locked" at
        once, without its busy handler, when another connection is switching too: two
        workers starting on a new database (``lockd serve --workers 2``) failed that way
        (once in 61 starts of the benchmark; 7 rounds of 60 in a probe of two processes).
        The wait is hand-written here, with jitter so the two do not retry in step.
        """
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(random.uniform(0.005, 0.02))

    def _connect_reader(self) -> None:
        self._read_conn = self._open_connection()

    async def _run(self, fn: Callable[..., T], *args: object, read: bool = False) -> T:
        if self._executor is None:
            await self.open()
        executor = self._reader if read else self._executor
        assert executor is not None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, fn, *args)
        except sqlite3.OperationalError as exc:
            # "database is locked" past the busy timeout, a full or read-only disk...
            raise BackendUnavailable(f"sqlite {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise BackendUnavailable(f"sqlite {self.path}: {exc}") from exc

    def _get(
        self, key: str, conn: sqlite3.Connection | None = None
    ) -> tuple[bytes | None, Version]:
        conn = conn or self._conn
        assert conn is not None
        row = conn.execute("SELECT value, version FROM kv WHERE key = ?", (key,)).fetchone()
        return (None, None) if row is None else (bytes(row[0]), row[1])

    def _read(self, key: str) -> tuple[bytes | None, Version]:
        return self._get(key, self._read_conn)

    def _compare_and_set(self, key: str, value: bytes, expected: Version) -> CasResult:
        assert self._conn is not None
        # A random token per write, never a counter: a database restored from a backup
        # (or copied back by hand) must not repeat a version another process remembers
        # with a different value. The "v" keeps it text under the column's affinity.
        # rowcount rather than RETURNING, which needs SQLite 3.35.
        version = "v" + secrets.token_hex(12)
        if expected is None:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO kv (key, value, version) VALUES (?, ?, ?)",
                (key, value, version),
            )
        else:
            cur = self._conn.execute(
                "UPDATE kv SET value = ?, version = ? WHERE key = ? AND version = ?",
                (value, version, key, expected),
            )
        if cur.rowcount == 1:
            return CasResult(True, value, version)
        return CasResult(False, *self._get(key))

    def _compare_and_delete(self, key: str, expected: Version) -> CasResult:
        assert self._conn is not None
        cur = self._conn.execute("DELETE FROM kv WHERE key = ? AND version = ?", (key, expected))
        if cur.rowcount == 1:
            return CasResult(True, None, None)
        return CasResult(False, *self._get(key))

    def _ping(self) -> None:
        # Ready means writable: take the write lock for an instant (another process
        # holding it past the busy timeout makes this fail, as a grant would).
        assert self._conn is not None
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.execute("ROLLBACK")

    def _scan(self, prefix: str) -> list[str]:
        assert self._read_conn is not None
        rows = self._read_conn.execute(
            "SELECT key FROM kv WHERE substr(key, 1, ?) = ? ORDER BY key", (len(prefix), prefix)
        ).fetchall()
        return [r[0] for r in rows]

    async def get(self, key: str) -> tuple[bytes | None, Version]:
        return await self._run(self._read, key, read=True)

    async def compare_and_set(self, key: str, value: bytes, expected: Version) -> CasResult:
        return await self._run(self._compare_and_set, key, value, expected)

    async def compare_and_delete(self, key: str, expected: Version) -> CasResult:
        if expected is None:
            raise ValueError("compare_and_delete needs the version of the value to delete")
        return await self._run(self._compare_and_delete, key, expected)

    async def scan(self, prefix: str) -> list[str]:
        return await self._run(self._scan, prefix, read=True)

    async def ping(self) -> None:
        await self._run(self._ping)

    async def close(self) -> None:
        if self._executor is None or self._reader is None:
            return
        loop = asyncio.get_running_loop()
        for executor, attr in ((self._reader, "_read_conn"), (self._executor, "_conn")):
            conn = getattr(self, attr)
            setattr(self, attr, None)
            if conn is not None:
                await loop.run_in_executor(executor, conn.close)
            executor.shutdown(wait=True)
        self._executor = self._reader = None

    async def watch(self, prefix: str, sink: ChangeSink) -> None:
        # Its own thread and connection: a poll never waits behind a read or a write.
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockd-sqlite-w")
        loop = asyncio.get_running_loop()
        conn: sqlite3.Connection | None = None

        async def run(fn: Callable[..., T], *args: object) -> T:
            try:
                return await loop.run_in_executor(executor, fn, *args)
            except sqlite3.DatabaseError as exc:
                raise BackendUnavailable(f"sqlite {self.path} change feed: {exc}") from exc

        def versions() -> dict[str, object]:
            assert conn is not None
            rows = conn.execute(
                "SELECT key, version FROM kv WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
            ).fetchall()
            return dict(rows)

        def data_version() -> int:
            assert conn is not None
            return int(conn.execute("PRAGMA data_version").fetchone()[0])

        try:
            conn = await run(self._open_connection)
            # data_version first: a commit between the two is seen again at the next poll.
            seen = await run(data_version)
            known = await run(versions)
            sink.subscribed()
            while True:
                await asyncio.sleep(FEED_POLL)
                now = await run(data_version)
                if now == seen:
                    continue
                seen = now
                current = await run(versions)
                for key in sorted(known.keys() | current.keys()):
                    if known.get(key) != current.get(key):
                        sink.changed(key, current.get(key))
                known = current
        finally:
            if conn is not None:
                await loop.run_in_executor(executor, conn.close)
            executor.shutdown(wait=False)

    def describe(self) -> str:
        return f"sqlite://{self.path} (durable, synchronous={self.synchronous})"


def from_url(url: str) -> SqliteBackend:
    parts = urlsplit(url)
    if parts.netloc:
        raise InvalidBackendURL(
            f"sqlite URL {url!r} has a host part; write sqlite:///absolute/path/lockd.db"
        )
    path = unquote(parts.path)
    if not path or path == "/":
        raise InvalidBackendURL(f"sqlite URL {url!r} names no file; write sqlite:///path/lockd.db")
    options = Options("sqlite", parts.query)
    synchronous = options.choice("synchronous", "full", SYNCHRONOUS)
    busy_timeout = options.seconds("busy_timeout", 5.0)
    options.finish()
    return SqliteBackend(
        Path(os.path.expanduser(path)), synchronous=synchronous, busy_timeout=busy_timeout
    )
