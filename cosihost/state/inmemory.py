"""The in-process state: COSI semantics over per-kind collections.

Each kind (namespace, type) is a collection with its own lock, items stored
as packed blobs and a bounded history, so unrelated kinds never wait on each
other. Namespaces named persistent are written through to a durable store
inside the kind's lock, before memory changes and before the caller hears
back: an acknowledged write is a committed write.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Sequence, TypeVar

from ..errors import ConflictError, InvalidRequestError, NotFoundError
from ..resource import (PHASE_RUNNING, Resource, check_name, check_phase,
                        Received, check_strings, pack, unpack, validated_copy)
from ..selectors import compile_id_regex, parse_query
from .events import (BOOTSTRAPPED, CREATED, DESTROYED, ERROR, MAX_BATCH, UPDATED, AggregatedWatch, Event, History,
                     Record, Watch, decode, kind_translator, make_bookmark, meta_of, since_bookmark)
from .modify import modify_spec
from .rules import check_destroy, created, finalizers_changed, torn_down, updated
from .persist import Store
from .watchfor import watch_for
from .txn import (Key, Op, Transaction, committed, open_transaction, outside_transaction, play,
                  teardown_and_destroy)

DEFAULT_HISTORY = 8192

#: Called for every change, inside the kind's lock, in the kind's order.
EventHook = Callable[[str, str, Record], None]


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


def _check_kind(namespace: Any, type: Any, id: Any = "-") -> None:
    check_name("namespace", namespace)
    check_name("type", type)
    check_name("id", id)


def _check_owner(owner: Any) -> None:
    if not isinstance(owner, str):
        raise InvalidRequestError(f"owner must be a string, not {type(owner).__name__}")


def _checked_finalizers(finalizers: Iterable[Any]) -> tuple[str, ...]:
    items = tuple(finalizers)
    check_strings("finalizers", items)
    if any(not f for f in items):
        raise InvalidRequestError("finalizers must not be empty strings")
    return items


def _incoming(resource: Any, owner: Any, expected_phase: Any = None) -> Resource:
    """A validated copy of a resource to write, once its arguments are checked
    (one just decoded from a peer's blob is taken as it is: no second copy)."""
    res = resource.take() if isinstance(resource, Received) else validated_copy(resource)
    _check_owner(owner)
    if expected_phase is not None:
        check_phase(expected_phase, field="expected_phase")
    return res


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


class InMemoryState:
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

    def _existing(self, namespace: str, type: str) -> Collection | None:
        """The kind's collection if anything ever touched it: reads of unknown
        kinds must not make new ones (a client could grow memory at will)."""
        return self._collections.get((namespace, type))

    def _mark_record(self, record: Record) -> str:
        """The bookmark that resumes a watch right after ``record``."""
        return make_bookmark(self.epoch, record.seq)

    def _mark_cursor(self, coll: Collection | None, seq: int) -> str:
        """The bookmark of a kind's position ``seq`` (taken under its lock;
        ``coll`` None: a kind never touched)."""
        return make_bookmark(self.epoch, seq)

    # -- reads -----------------------------------------------------------
    def get(self, namespace: str, type: str, id: str) -> Resource:
        _check_kind(namespace, type, id)
        coll = self._existing(namespace, type)
        blob = None
        if coll is not None:
            with coll.cond:
                blob = coll.items.get(id)
        if blob is None:
            raise NotFoundError(f"resource {namespace}/{type}/{id} doesn't exist")
        return unpack(blob)

    def list(self, namespace: str, type: str, *, labels: str | Sequence[str] | None = None,
             id_regex: str | None = None) -> list[Resource]:
        _check_kind(namespace, type)
        query = parse_query(labels)
        regex = compile_id_regex(id_regex)
        coll = self._existing(namespace, type)
        if coll is None:
            return []
        with coll.cond:
            items = sorted(coll.items.items())
        out = []
        for rid, blob in items:
            if regex is not None and not regex.search(rid):
                continue
            res = unpack(blob)
            if query.matches(res.metadata.labels):
                out.append(res)
        return out

    def owned_kinds(self, owner: str, types: Iterable[str] | None = None) -> builtins.list[tuple[str, str]]:
        """The kinds (of these types, or any), in any namespace, where ``owner``
        owns a resource: where a restarted controller finds what its last
        life wrote."""
        wanted = None if types is None else set(types)
        found = []
        for (namespace, type), coll in list(self._collections.items()):
            if (wanted is None or type in wanted) and any(unpack(blob).metadata.owner == owner
                                      for blob in list(coll.items.values())):
                found.append((namespace, type))
        return sorted(found)

    def namespaces_of(self, type: str) -> builtins.list[str]:
        """The namespaces that hold resources of ``type``."""
        return sorted(ns for (ns, typ), coll in list(self._collections.items()) if typ == type and coll.items)

    def snapshot(self, namespace: str, type: str) -> tuple[int, builtins.list[bytes]]:
        """The kind's sequence number and packed items, taken atomically."""
        _check_kind(namespace, type)
        coll = self._existing(namespace, type)
        if coll is None:
            return 0, []
        with coll.cond:
            return coll.history.seq, [coll.items[k] for k in sorted(coll.items)]

    def snapshot_marked(self, namespace: str, type: str) -> tuple[int, builtins.list[tuple[str, bytes]], str]:
        """Like :meth:`snapshot`, with each item's id beside its blob, and
        the bookmark of that position."""
        _check_kind(namespace, type)
        coll = self._existing(namespace, type)
        if coll is None:
            return 0, [], self._mark_cursor(None, 0)
        with coll.cond:
            seq = coll.history.seq
            return seq, [(k, coll.items[k]) for k in sorted(coll.items)], self._mark_cursor(coll, seq)

    def position(self, namespace: str, type: str) -> tuple[int, str]:
        """The kind's sequence number and the bookmark of it, taken together."""
        _check_kind(namespace, type)
        coll = self._existing(namespace, type)
        if coll is None:
            return 0, self._mark_cursor(None, 0)
        with coll.cond:
            return coll.history.seq, self._mark_cursor(coll, coll.history.seq)

    def resume(self, namespace: str, type: str, bookmark: Any) -> tuple[int, builtins.list[Record], str | None]:
        """For a watcher elsewhere (over the wire): the kind's position now,
        and the records after ``bookmark`` up to it (replayed ones, with
        ``seq`` 0, first); or the position and why it cannot resume."""
        _check_kind(namespace, type)
        coll = self._collection(namespace, type)
        with coll.cond:
            current = coll.history.seq
            cursor, error, missed = self._resume_cursor(bookmark, coll, current)
            if error:
                return current, [], error
            return current, missed + (coll.history.since(cursor) or []), None

    def head(self, namespace: str, type: str) -> int:
        """The kind's latest sequence number (0 before any change)."""
        coll = self._existing(namespace, type)
        return 0 if coll is None else coll.history.seq

    def records_since(self, namespace: str, type: str, seq: int) -> builtins.list[Record] | None:
        """Records after ``seq``, or None when history no longer has them all."""
        coll = self._existing(namespace, type)
        if coll is None:
            return []
        with coll.cond:
            return coll.history.since(seq)

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

    # -- watches ---------------------------------------------------------
    def watch_for(self, namespace: str, type: str, id: str, *, event_types: Iterable[str] | None = None,
                  phase: str | None = None, finalizers_empty: bool | None = None,
                  condition: Callable[[Resource], bool] | None = None, timeout: float | None = None) -> Resource:
        """Wait until the resource is as asked (see :func:`cosihost.state.watchfor.watch_for`)."""
        return watch_for(self.watch, namespace, type, id, event_types=event_types, phase=phase,
                         finalizers_empty=finalizers_empty, condition=condition, timeout=timeout)

    def watch(self, namespace: str, type: str, id: str) -> Watch:
        """The resource's current state (or a ``destroyed`` tombstone), then its changes."""
        _check_kind(namespace, type, id)
        coll = self._collection(namespace, type)
        with coll.cond:
            blob = coll.items.get(id)
            cursor = coll.history.seq
            mark = self._mark_cursor(coll, cursor)
        if blob is not None:
            first = Event(CREATED, unpack(blob), bookmark=mark)
        else:
            first = Event(DESTROYED, Resource(namespace, type, id), bookmark=mark)

        def translate(record: Record) -> list[Event]:
            if record.id != id:
                return []
            return [Event(record.kind, unpack(record.blob), decode(record.old),
                          self._mark_record(record))]

        return Watch(coll.history, cursor, translate, pending=[first])

    def watch_kind(self, namespace: str, type: str, *, bootstrap: bool = False,
                   labels: str | Sequence[str] | None = None, since: str | None = None) -> Watch:
        """Changes to every resource of a kind, optionally after a bootstrap
        (one ``created`` per item, then ``bootstrapped``) or from a bookmark."""
        _check_kind(namespace, type)
        query = parse_query(labels)
        if bootstrap and since is not None:
            raise InvalidRequestError("since: a watch resumes from a bookmark or bootstraps, not both")
        coll = self._collection(namespace, type)
        pending: list[Event] = []
        with coll.cond:
            cursor = coll.history.seq
            mark = self._mark_cursor(coll, cursor)
            items = [coll.items[k] for k in sorted(coll.items)] if bootstrap else []
            missed: list[Record] = []
            if since is not None:
                cursor, error, missed = self._resume_cursor(since, coll, cursor)
                if error:
                    pending.append(Event(ERROR, error=error))
        for blob in items:
            res = unpack(blob)
            if query.matches(res.metadata.labels):
                pending.append(Event(CREATED, res))
        translate = kind_translator(query, self._mark_record)
        for record in missed:
            pending.extend(translate(record))
        if bootstrap:
            pending.append(Event(BOOTSTRAPPED, bookmark=mark))
        return Watch(coll.history, cursor, translate, pending=pending)

    def watch_kind_aggregated(self, namespace: str, type: str, *, bootstrap: bool = False,
                              labels: str | Sequence[str] | None = None, since: str | None = None,
                              max_batch: int = MAX_BATCH) -> AggregatedWatch:
        """:meth:`watch_kind`, its events handed over in batches (lists):
        every event that has arrived when the next batch is asked for."""
        watch = self.watch_kind(namespace, type, bootstrap=bootstrap, labels=labels, since=since)
        return AggregatedWatch(watch, max_batch=max_batch)

    def _resume_cursor(self, since: Any, coll: Collection,
                       current: int) -> tuple[int, str | None, builtins.list[Record]]:
        """The kind's position a bookmark names, or the current one and why
        the watch cannot resume; and changes to replay before the history
        (none here). Called under the kind's lock."""
        epoch, seq = since_bookmark(since)
        if epoch != self.epoch:
            return current, "bookmark is from another epoch of the state; resync", []
        if seq > current or seq < 0:
            return current, f"bookmark {since} is ahead of the history; resync", []
        return seq, None, []
