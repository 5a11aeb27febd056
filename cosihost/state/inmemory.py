"""The in-process state: COSI semantics over per-kind collections.

Each kind (namespace, type) is a collection with its own lock, items stored
as packed blobs and a bounded history, so unrelated kinds never wait on each
other. Namespaces named persistent are written through to a durable store
inside the kind's lock, before memory changes and before the caller hears
back: an acknowledged write is a committed write.

This module is the write side (the verbs, transactions, the store and the
event hook); the collections are in :mod:`.collection`, the reads in
:mod:`.reads`, the watches and bookmarks in :mod:`.watches`, and the
argument checks in :mod:`.arguments`. The names other modules import from
here stay importable from here.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Sequence, TypeVar

from ..errors import ConflictError
from ..resource import PHASE_RUNNING, Resource, pack, unpack
from .arguments import _check_kind as _check_kind
from .arguments import _check_owner as _check_owner
from .arguments import _checked_finalizers as _checked_finalizers
from .arguments import _incoming
from .collection import DEFAULT_HISTORY as DEFAULT_HISTORY
from .collection import Collection as Collection
from .events import CREATED, DESTROYED, UPDATED, Record, meta_of
from .modify import modify_spec
from .persist import Store
from .reads import Reads
from .rules import check_destroy, created, finalizers_changed, torn_down, updated
from .txn import (Key, Op, Transaction, committed, open_transaction, outside_transaction, play,
                  teardown_and_destroy)
from .watches import Watches

#: Called for every change, inside the kind's lock, in the kind's order.
EventHook = Callable[[str, str, Record], None]


F = TypeVar("F", bound=Callable[..., Any])


def recorded_in_transaction(method: F) -> F:
    """A write verb that, inside ``with state.transaction()`` in this
    thread, is recorded by the transaction instead of applied at once."""
    name = method.__name__

    @functools.wraps(method)
    def verb(self: Any, *args: Any, **kwargs: Any) -> Any:
        txn = getattr(self._local, "txn", None)
        if txn is not None:
            return getattr(txn, name)(*args, **kwargs)
        return method(self, *args, **kwargs)

    return verb  # type: ignore[return-value]


class InMemoryState(Reads, Watches):
    """The state API in process. Thread-safe; one lock per kind.

    ``store`` (for example :class:`cosihost.state.SqliteStore`) makes the
    namespaces it names durable; their resources are loaded on construction.
    """

    def __init__(
        self,
        *,
        store: Store | None = None,
        history: int = DEFAULT_HISTORY,
        on_event: EventHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.epoch = uuid.uuid4().hex[:12]
        self._history = history
        self._store = store
        self._on_event = on_event
        self._clock = clock
        self._collections: dict[tuple[str, str], Collection] = {}
        self._collections_lock = threading.Lock()
        self._local = threading.local()  # this thread's open transaction, if any
        if store is not None:
            for blob in store.load():
                res = unpack(blob)
                md = res.metadata
                self._collection(md.namespace, md.type).items[md.id] = blob

    # -- internals -------------------------------------------------------
    def _commit(self, coll: Collection, res: Resource | None, rid: str, kind: str,
                old: bytes | None, blob: bytes | None = None) -> bytes:
        """Write one change: durable store first, then memory, then history."""
        if kind == DESTROYED:
            blob = old
        elif res is not None and blob is None:
            blob = pack(res)
        assert blob is not None, "a change carries what it wrote or destroyed"
        if self._store is not None and self._store.persists(coll.namespace):
            if kind == DESTROYED:
                self._store.delete(coll.namespace, coll.type, rid)
            else:
                self._store.put(coll.namespace, coll.type, rid, blob)
        self._remember(coll, rid, kind, old, blob, res)
        return blob

    def _remember(self, coll: Collection, rid: str, kind: str, old: bytes | None, blob: bytes,
                  res: Resource | None = None) -> None:
        """A change the store already has: into memory, the history and the
        event hook. ``res``: the resource in ``blob``, decoded, if at hand."""
        if kind == DESTROYED:
            del coll.items[rid]
        else:
            coll.items[rid] = blob
        record = coll.history.append(kind, rid, blob, old if kind == UPDATED else None,
                                     meta=None if res is None else meta_of(res))
        if self._on_event is not None:
            self._on_event(coll.namespace, coll.type, record)

    # -- writes ----------------------------------------------------------
    @recorded_in_transaction
    def create(self, resource: Resource, *, owner: str = "") -> Resource:
        res = _incoming(resource, owner)
        md = res.metadata
        coll = self._collection(md.namespace, md.type)
        with coll.cond:
            if md.id in coll.items:
                raise ConflictError(f"resource {md.namespace}/{md.type}/{md.id} already exists")
            created(res, owner=owner, now=self._clock())
            self._commit(coll, res, md.id, CREATED, None)
        return res

    @recorded_in_transaction
    def update(self, resource: Resource, *, owner: str = "",
               expected_phase: str | None = PHASE_RUNNING) -> Resource:
        new = _incoming(resource, owner, expected_phase)
        md = new.metadata
        coll = self._collection(md.namespace, md.type)
        with coll.cond:
            cur = coll.load(md.id)
            updated(cur, new, owner=owner, expected_phase=expected_phase, now=self._clock())
            self._commit(coll, new, md.id, UPDATED, coll.items[md.id])
        return new

    @recorded_in_transaction
    def modify(self, namespace: str, type: str, id: str, fn: Callable[[Any], Any], *,
               owner: str = "", expected_phase: str | None = PHASE_RUNNING) -> Resource:
        """Read-modify-write: ``fn(spec)`` mutates a copy (see :func:`modify_spec`).

        Creates the resource from ``fn({})`` when missing; writes nothing when
        the spec did not change; retries when another writer got in between.
        As COSI's ``Modify``, it expects the resource running: one that is
        tearing down is a PhaseConflictError even when ``fn`` changes nothing
        (``expected_phase="tearing-down"``, or None for any, as COSI's
        ``WithExpectedPhase`` / ``WithExpectedPhaseAny``).
        """
        _check_kind(namespace, type, id)
        _check_owner(owner)
        res, _written = modify_spec(
            namespace, type, id, fn, owner=owner, get=self.get,
            create=lambda r: self.create(r, owner=owner), expected_phase=expected_phase,
            update=lambda r: self.update(r, owner=owner, expected_phase=expected_phase))
        return res

    @recorded_in_transaction
    def destroy(self, namespace: str, type: str, id: str, *, owner: str = "") -> None:
        _check_kind(namespace, type, id)
        _check_owner(owner)
        coll = self._collection(namespace, type)
        with coll.cond:
            cur = coll.load(id)
            check_destroy(cur, owner)
            self._commit(coll, cur, id, DESTROYED, coll.items[id])  # cur: what the event describes

    @recorded_in_transaction
    def teardown(self, namespace: str, type: str, id: str, *, owner: str = "") -> bool:
        _check_kind(namespace, type, id)
        _check_owner(owner)
        coll = self._collection(namespace, type)
        with coll.cond:
            cur = coll.load(id)
            old = coll.items[id]
            if torn_down(cur, owner, self._clock()):
                self._commit(coll, cur, id, UPDATED, old)
            return not cur.metadata.finalizers

    def teardown_and_destroy(self, namespace: str, type: str, id: str, *, owner: str = "") -> bool:
        """Tear down and, when no finalizer holds it, destroy, in one
        transaction: True once destroyed, False while finalizers remain."""
        outside_transaction(self._local, "teardown_and_destroy")
        return teardown_and_destroy(self.apply, self.get, namespace, type, id, owner=owner)

    @recorded_in_transaction
    def add_finalizer(self, namespace: str, type: str, id: str, *finalizers: str) -> Resource:
        return self._change_finalizers(namespace, type, id, finalizers, add=True)

    @recorded_in_transaction
    def remove_finalizer(self, namespace: str, type: str, id: str, *finalizers: str) -> Resource:
        return self._change_finalizers(namespace, type, id, finalizers, add=False)

    def _change_finalizers(self, namespace: str, type: str, id: str,
                           finalizers: Iterable[str], *, add: bool) -> Resource:
        _check_kind(namespace, type, id)
        finalizers = _checked_finalizers(finalizers)
        coll = self._collection(namespace, type)
        with coll.cond:
            cur = coll.load(id)
            old = coll.items[id]
            if finalizers_changed(cur, finalizers, add=add, now=self._clock()):
                self._commit(coll, cur, id, UPDATED, old)
        return cur

    # -- transactions ------------------------------------------------------
    def transaction(self) -> contextlib.AbstractContextManager[Transaction]:
        """The writes inside the block (on the transaction, or on this state
        from this thread) apply atomically on exit; none if it raises."""
        return open_transaction(self._local, read=committed(self.get), now=self._clock, commit=self.apply)

    def apply(self, ops: Sequence[Op], *, written: dict[Key, bytes | None] | None = None) -> builtins.list[Any]:
        """Apply ``ops`` all together or not at all; each verb's result, in
        order. ``written`` gets what each changed key now holds (None: gone)."""
        if not ops:
            return []
        kinds = sorted({(op.namespace, op.type) for op in ops})
        colls = {kind: self._collection(*kind) for kind in kinds}
        with contextlib.ExitStack() as held:
            for kind in kinds:  # in one order everywhere: no two transactions deadlock
                held.enter_context(colls[kind].cond)

            def current(key: Key) -> Resource | None:
                blob = colls[key[0], key[1]].items.get(key[2])
                return None if blob is None else unpack(blob)

            results, changes = play(ops, current, self._clock())
            self._commit_changes(colls, changes, written)
        return results

    def _commit_changes(self, colls: dict[tuple[str, str], Collection], changes: dict[Key, Resource | None],
                        written: dict[Key, bytes | None] | None) -> None:
        """Net changes of a transaction: the store in one commit, then memory."""
        entries = []
        for (namespace, type, rid), res in sorted(changes.items()):
            coll = colls[namespace, type]
            old = coll.items.get(rid)
            if res is None and old is None:
                continue  # made and destroyed inside the transaction
            kind = DESTROYED if res is None else CREATED if old is None else UPDATED
            blob = old if res is None else pack(res)
            assert blob is not None
            entries.append((coll, rid, kind, old, blob, res))
            if written is not None:
                written[namespace, type, rid] = None if res is None else blob
        if self._store is not None:
            self._store.write_many([(c.namespace, c.type, rid, None if kind == DESTROYED else blob)
                                    for c, rid, kind, _old, blob, _res in entries
                                    if self._store.persists(c.namespace)])
        for coll, rid, kind, old, blob, res in entries:
            self._remember(coll, rid, kind, old, blob, res)
