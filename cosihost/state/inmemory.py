"""The in-process state: COSI semantics over per-kind collections.

Each kind (namespace, type) is a collection with its own lock, items stored
as packed blobs and a bounded history, so unrelated kinds never wait on each
other. Namespaces named persistent are written through to a durable store
inside the kind's lock, before memory changes and before the caller hears
back: an acknowledged write is a committed write.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Callable, Iterable, Sequence

from ..errors import ConflictError, InvalidRequestError, NotFoundError
from ..resource import (PHASE_RUNNING, PHASE_TEARING_DOWN, Resource, check_name, check_phase,
                        check_strings, pack, unpack, validated_copy)
from ..selectors import compile_id_regex, parse_query
from .events import (BOOTSTRAPPED, CREATED, DESTROYED, ERROR, UPDATED, Event, History, Record,
                     Watch, decode, kind_translator, make_bookmark, parse_bookmark)
from .modify import modify_spec, require_owner, require_phase
from .persist import Store

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
                coll = self._collections.setdefault(key, Collection(namespace, type, self._history))
        return coll

    def _commit(self, coll: Collection, res: Resource | None, rid: str, kind: str,
                old: bytes | None, blob: bytes | None = None) -> bytes:
        """Write one change: durable store first, then memory, then history."""
        if res is not None and blob is None:
            blob = pack(res)
        if self._store is not None and self._store.persists(coll.namespace):
            if kind == DESTROYED:
                self._store.delete(coll.namespace, coll.type, rid)
            else:
                self._store.put(coll.namespace, coll.type, rid, blob)
        if kind == DESTROYED:
            blob = old
            del coll.items[rid]
        else:
            coll.items[rid] = blob
        record = coll.history.append(kind, rid, blob, old if kind == UPDATED else None)
        if self._on_event is not None:
            self._on_event(coll.namespace, coll.type, record)
        return blob

    def _existing(self, namespace: str, type: str) -> Collection | None:
        """The kind's collection if anything ever touched it: reads of unknown
        kinds must not make new ones (a client could grow memory at will)."""
        return self._collections.get((namespace, type))

    def _bookmark(self, seq: int) -> str:
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

    def snapshot(self, namespace: str, type: str) -> tuple[int, list[bytes]]:
        """The kind's sequence number and packed items, taken atomically."""
        _check_kind(namespace, type)
        coll = self._existing(namespace, type)
        if coll is None:
            return 0, []
        with coll.cond:
            return coll.history.seq, [coll.items[k] for k in sorted(coll.items)]

    def snapshot_items(self, namespace: str, type: str) -> tuple[int, list[tuple[str, bytes]]]:
        """Like :meth:`snapshot`, with each item's id beside its blob."""
        _check_kind(namespace, type)
        coll = self._existing(namespace, type)
        if coll is None:
            return 0, []
        with coll.cond:
            return coll.history.seq, [(k, coll.items[k]) for k in sorted(coll.items)]

    def head(self, namespace: str, type: str) -> int:
        """The kind's latest sequence number (0 before any change)."""
        coll = self._existing(namespace, type)
        return 0 if coll is None else coll.history.seq

    def records_since(self, namespace: str, type: str, seq: int) -> list[Record] | None:
        """Records after ``seq``, or None when history no longer has them all."""
        coll = self._existing(namespace, type)
        if coll is None:
            return []
        with coll.cond:
            return coll.history.since(seq)

    # -- writes ----------------------------------------------------------
    def create(self, resource: Resource, *, owner: str = "") -> Resource:
        res = validated_copy(resource)
        _check_owner(owner)
        md = res.metadata
        coll = self._collection(md.namespace, md.type)
        with coll.cond:
            if md.id in coll.items:
                raise ConflictError(f"resource {md.namespace}/{md.type}/{md.id} already exists")
            now = self._clock()
            md.version, md.owner, md.phase = 1, owner, PHASE_RUNNING
            md.created = md.updated = now
            self._commit(coll, res, md.id, CREATED, None)
        return res

    def update(self, resource: Resource, *, owner: str = "",
               expected_phase: str | None = PHASE_RUNNING) -> Resource:
        new = validated_copy(resource)
        _check_owner(owner)
        if expected_phase is not None:
            check_phase(expected_phase, field="expected_phase")
        md = new.metadata
        coll = self._collection(md.namespace, md.type)
        with coll.cond:
            cur = coll.load(md.id)
            cmd = cur.metadata
            require_owner(cur, owner, "update")
            if md.version != cmd.version:
                raise ConflictError(
                    f"version conflict on {md.namespace}/{md.type}/{md.id}: "
                    f"expected {md.version}, stored {cmd.version}")
            require_phase(cur, expected_phase)
            md.version, md.owner, md.phase = cmd.version + 1, cmd.owner, cmd.phase
            md.finalizers, md.created, md.updated = cmd.finalizers, cmd.created, self._clock()
            self._commit(coll, new, md.id, UPDATED, coll.items[md.id])
        return new

    def modify(self, namespace: str, type: str, id: str, fn: Callable[[Any], Any], *,
               owner: str = "") -> Resource:
        """Read-modify-write: ``fn(spec)`` mutates a copy (see :func:`modify_spec`).

        Creates the resource from ``fn({})`` when missing; writes nothing when
        the spec did not change; retries when another writer got in between.
        As COSI's ``Modify``, it expects the resource running: one that is
        tearing down is a PhaseConflictError even when ``fn`` changes nothing.
        """
        _check_kind(namespace, type, id)
        _check_owner(owner)
        res, _written = modify_spec(
            namespace, type, id, fn, owner=owner, get=self.get,
            create=lambda r: self.create(r, owner=owner), update=lambda r: self.update(r, owner=owner))
        return res

    def destroy(self, namespace: str, type: str, id: str, *, owner: str = "") -> None:
        _check_kind(namespace, type, id)
        _check_owner(owner)
        coll = self._collection(namespace, type)
        with coll.cond:
            cur = coll.load(id)
            require_owner(cur, owner, "destroy")
            if cur.metadata.finalizers:
                raise ConflictError(
                    f"cannot destroy {namespace}/{type}/{id}: finalizers pending: "
                    f"{', '.join(cur.metadata.finalizers)}")
            self._commit(coll, None, id, DESTROYED, coll.items[id])

    def teardown(self, namespace: str, type: str, id: str, *, owner: str = "") -> bool:
        _check_kind(namespace, type, id)
        _check_owner(owner)
        coll = self._collection(namespace, type)
        with coll.cond:
            cur = coll.load(id)
            require_owner(cur, owner, "tear down")
            md = cur.metadata
            if md.phase != PHASE_TEARING_DOWN:
                old = coll.items[id]
                md.phase, md.version, md.updated = PHASE_TEARING_DOWN, md.version + 1, self._clock()
                self._commit(coll, cur, id, UPDATED, old)
            return not md.finalizers

    def add_finalizer(self, namespace: str, type: str, id: str, *finalizers: str) -> Resource:
        return self._change_finalizers(namespace, type, id, finalizers, add=True)

    def remove_finalizer(self, namespace: str, type: str, id: str, *finalizers: str) -> Resource:
        return self._change_finalizers(namespace, type, id, finalizers, add=False)

    def _change_finalizers(self, namespace: str, type: str, id: str,
                           finalizers: Iterable[str], *, add: bool) -> Resource:
        _check_kind(namespace, type, id)
        finalizers = tuple(finalizers)
        check_strings("finalizers", finalizers)
        if any(not f for f in finalizers):
            raise InvalidRequestError("finalizers must not be empty strings")
        coll = self._collection(namespace, type)
        with coll.cond:
            cur = coll.load(id)
            md = cur.metadata
            changed = md.add_finalizers(*finalizers) if add else md.remove_finalizers(*finalizers)
            if changed:
                old = coll.items[id]
                md.version, md.updated = md.version + 1, self._clock()
                self._commit(coll, cur, id, UPDATED, old)
        return cur

    # -- watches ---------------------------------------------------------
    def watch(self, namespace: str, type: str, id: str) -> Watch:
        """The resource's current state (or a ``destroyed`` tombstone), then its changes."""
        _check_kind(namespace, type, id)
        coll = self._collection(namespace, type)
        with coll.cond:
            blob = coll.items.get(id)
            cursor = coll.history.seq
        if blob is not None:
            first = Event(CREATED, unpack(blob), bookmark=self._bookmark(cursor))
        else:
            first = Event(DESTROYED, Resource(namespace, type, id), bookmark=self._bookmark(cursor))

        def translate(record: Record) -> list[Event]:
            if record.id != id:
                return []
            return [Event(record.kind, unpack(record.blob), decode(record.old),
                          self._bookmark(record.seq))]

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
            items = [coll.items[k] for k in sorted(coll.items)] if bootstrap else []
        if since is not None:
            cursor, error = self._resume_cursor(since, cursor)
            if error:
                pending.append(Event(ERROR, error=error))
        for blob in items:
            res = unpack(blob)
            if query.matches(res.metadata.labels):
                pending.append(Event(CREATED, res))
        if bootstrap:
            pending.append(Event(BOOTSTRAPPED, bookmark=self._bookmark(cursor)))
        return Watch(coll.history, cursor, kind_translator(query, self._bookmark), pending=pending)

    def _resume_cursor(self, since: Any, current: int) -> tuple[int, str | None]:
        parsed = parse_bookmark(since)
        if parsed is None:
            raise InvalidRequestError(f"since: {since!r} is not a bookmark")
        epoch, seq = parsed
        if epoch != self.epoch:
            return current, "bookmark is from another epoch of the state; resync"
        if seq > current or seq < 0:
            return current, f"bookmark {since} is ahead of the history; resync"
        return seq, None
