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
from typing import Iterable, Iterator, Protocol

from ..errors import UnavailableError


class Store(Protocol):
    """What InMemoryState needs from a durable backend."""

    def persists(self, namespace: str) -> bool: ...
    def load(self) -> Iterable[bytes]: ...
    def put(self, namespace: str, type: str, id: str, blob: bytes) -> None: ...
    def delete(self, namespace: str, type: str, id: str) -> None: ...
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


class SqliteStore:
    """SQLite in WAL mode with ``synchronous=FULL``: a commit is on disk.

    One connection, used under a lock: SQLite serialises writers anyway, and
    only persistent namespaces come here.
    """

    def __init__(self, path: str | os.PathLike[str], *, namespaces: Iterable[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._namespaces = frozenset(namespaces)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

    @classmethod
    def in_dir(cls, state_dir: str | os.PathLike[str], *, namespaces: Iterable[str]) -> "SqliteStore":
        return cls(Path(state_dir) / "state.sqlite3", namespaces=namespaces)

    def persists(self, namespace: str) -> bool:
        return namespace in self._namespaces

    def load(self) -> Iterator[bytes]:
        with self._lock:
            rows = self._db.execute("SELECT blob FROM resources ORDER BY namespace, type, id").fetchall()
        for (blob,) in rows:
            yield bytes(blob)

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        with self._lock:
            try:
                self._db.execute(sql, args)
            except sqlite3.Error as exc:
                raise UnavailableError(f"persistent store {self.path}: {exc}") from None

    def put(self, namespace: str, type: str, id: str, blob: bytes) -> None:
        self._write("INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?)", (namespace, type, id, blob))

    def delete(self, namespace: str, type: str, id: str) -> None:
        self._write("DELETE FROM resources WHERE namespace=? AND type=? AND id=?", (namespace, type, id))

    def close(self) -> None:
        with self._lock:
            self._db.close()
