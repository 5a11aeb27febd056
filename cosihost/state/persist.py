"""Durable stores behind persistent namespaces.

A store is deliberately dumb: it keeps packed resource blobs by key and
hands them all back on start. The state engine decides what a write means;
the store only makes it survive. ``put`` and ``delete`` return only once the
change is committed to disk.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

from ..errors import UnavailableError


class Store(Protocol):
    """What InMemoryState needs from a durable backend."""

    def persists(self, namespace: str) -> bool: ...
    def load(self) -> Iterable[bytes]: ...
    def put(self, namespace: str, type: str, id: str, blob: bytes) -> None: ...
    def delete(self, namespace: str, type: str, id: str) -> None: ...
    def write_many(self, changes: Sequence[tuple[str, str, str, bytes | None]]) -> None: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    namespace TEXT NOT NULL,
    type      TEXT NOT NULL,
    id        TEXT NOT NULL,
    blob      BLOB NOT NULL,
    PRIMARY KEY (namespace, type, id)
) WITHOUT ROWID
"""

#: How long a write waits for another connection's lock before it fails.
BUSY_TIMEOUT_MS = 5000


class SqliteStore:
    """SQLite in WAL mode with ``synchronous=FULL``: a commit is on disk.

    Every ``put``/``delete`` is its own transaction (autocommit), and in WAL
    mode ``synchronous=FULL`` fsyncs the WAL at each commit, so a returned
    write survives a crash of the process *and* a power loss. (``NORMAL``
    would only survive a process crash; the contract says acknowledged means
    durable.)

    One connection, used under a lock: SQLite serialises writers anyway, and
    only persistent namespaces come here. Any SQLite failure (a corrupt or
    unreadable file, a lock held too long by another process, a closed store)
    is raised as :class:`UnavailableError` naming the database path.

    Only rows of the namespaces declared persistent now are loaded: rows left
    by a namespace that is no longer declared stay on disk untouched but do
    not come back (they would be stale, as its writes no longer reach here).
    """

    def __init__(self, path: str | os.PathLike[str], *, namespaces: Iterable[str]) -> None:
        self.path = Path(path)
        self._namespaces = frozenset(namespaces)
        self._lock = threading.Lock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            # Resources may be sensitive: create the file private. SQLite gives
            # the -wal and -shm files the database file's permissions.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise UnavailableError(f"persistent store {self.path}: {exc.strerror or exc}") from None
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        try:
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            (mode,) = self._db.execute("PRAGMA journal_mode=WAL").fetchone()
            if str(mode).lower() != "wal":
                raise UnavailableError(
                    f"persistent store {self.path}: cannot use WAL mode (got {mode!r})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            raise self._error(exc) from None
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def in_dir(cls, state_dir: str | os.PathLike[str], *, namespaces: Iterable[str]) -> "SqliteStore":
        return cls(Path(state_dir) / "state.sqlite3", namespaces=namespaces)

    def _error(self, exc: BaseException) -> UnavailableError:
        return UnavailableError(f"persistent store {self.path}: {exc}")

    def persists(self, namespace: str) -> bool:
        return namespace in self._namespaces

    def load(self) -> Iterator[bytes]:
        """Every stored blob of the persistent namespaces, in key order."""
        namespaces = sorted(self._namespaces)
        if not namespaces:
            return iter(())
        marks = ",".join("?" * len(namespaces))
        with self._lock:
            if self._closed:
                raise UnavailableError(f"persistent store {self.path}: closed")
            try:
                rows = self._db.execute(
                    f"SELECT blob FROM resources WHERE namespace IN ({marks}) "
                    "ORDER BY namespace, type, id", namespaces).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc) from None
        return (bytes(blob) for (blob,) in rows)

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        with self._lock:
            if self._closed:
                raise UnavailableError(f"persistent store {self.path}: closed")
            try:
                self._db.execute(sql, args)
            except sqlite3.Error as exc:
                raise self._error(exc) from None

    def put(self, namespace: str, type: str, id: str, blob: bytes) -> None:
        self._write("INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?)", (namespace, type, id, blob))

    def delete(self, namespace: str, type: str, id: str) -> None:
        self._write("DELETE FROM resources WHERE namespace=? AND type=? AND id=?", (namespace, type, id))

    def write_many(self, changes: Sequence[tuple[str, str, str, bytes | None]]) -> None:
        """Puts (a blob) and deletes (None) in one SQLite transaction: one fsync, all or nothing."""
        if not changes:
            return
        with self._lock:
            if self._closed:
                raise UnavailableError(f"persistent store {self.path}: closed")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for namespace, type, id, blob in changes:
                        if blob is None:
                            self._db.execute("DELETE FROM resources WHERE namespace=? AND type=? AND id=?",
                                             (namespace, type, id))
                        else:
                            self._db.execute("INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?)",
                                             (namespace, type, id, blob))
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._error(exc) from None

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()
