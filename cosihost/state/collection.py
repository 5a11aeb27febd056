"""A kind's collection, and the map of them a state keeps.

Every kind (namespace, type) has its own lock, packed items and bounded
history, so unrelated kinds never wait on each other. The reads, the watches
and the writes of :class:`~.inmemory.InMemoryState` all start by finding a
kind's collection; that lookup lives here, in the one base they share, so
that each side can live in its own module without a layer of calls between
a verb and its collection.
"""

from __future__ import annotations

import threading

from ..errors import NotFoundError
from ..resource import Resource, unpack
from .events import History

DEFAULT_HISTORY = 8192


class Collection:
    """One kind's items and history."""

    def __init__(self, namespace: str, type: str, history: int) -> None:
        self.namespace = namespace
        self.type = type
        self.cond = threading.Condition()
        self.items: dict[str, bytes] = {}
        self.history = History(history, self.cond)

    def load(self, rid: str) -> Resource:
        blob = self.items.get(rid)
        if blob is None:
            raise NotFoundError(f"resource {self.namespace}/{self.type}/{rid} doesn't exist")
        return unpack(blob)


class Kinds:
    """The collections by kind: made on first write, looked up by reads.

    A base of :class:`~.inmemory.InMemoryState`, which sets the attributes
    declared here in its constructor.
    """

    _history: int
    _collections: dict[tuple[str, str], Collection]
    _collections_lock: threading.Lock

    def _collection(self, namespace: str, type: str) -> Collection:
        key = (namespace, type)
        coll = self._collections.get(key)
        if coll is None:
            with self._collections_lock:
                coll = self._collections.get(key)
                if coll is None:
                    coll = self._collections[key] = self._new_collection(namespace, type)
        return coll

    def _new_collection(self, namespace: str, type: str) -> Collection:
        """A kind's collection, made once (under the collections lock)."""
        return Collection(namespace, type, self._history)

    def _existing(self, namespace: str, type: str) -> Collection | None:
        """The kind's collection if anything ever touched it: reads of unknown
        kinds must not make new ones (a client could grow memory at will)."""
        return self._collections.get((namespace, type))
