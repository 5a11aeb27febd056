"""The state API over an etcd cluster that several hosts share.

etcd decides every write; this process keeps a mirror of the prefix.

- **Writes** are compare-and-swap transactions on the key's
  ``mod_revision`` (``version == 0`` for a create). Every rule (owner,
  phase, expected version, pending finalizers) is checked against the
  exact revision the transaction compares on, so when two hosts race, one
  wins and the other re-checks against the winner's value.
- **Reads and watches** are served from the mirror, an
  :class:`~cosihost.state.InMemoryState` fed by one etcd watch of the
  prefix: a range read at revision R, then a watch from R + 1, so nothing
  is missed and nothing is seen twice. Changes made by other hosts become
  the same events as local ones.
- A write returns only once the mirror holds it (read your writes): at
  once when no other revision came in between, otherwise when the watch
  delivers it.
- **Bookmarks** are etcd revisions, so they outlive this process: a watch
  resumed from one after a restart gets what changed since, computed from
  etcd's history at that revision, until etcd compacts it away.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable

import grpc

from ...errors import ConflictError, CosiError, InvalidRequestError, NotFoundError, UnavailableError
from ...resource import PHASE_RUNNING, Resource, pack, unpack, validated_copy
from ..events import CREATED, DESTROYED, UPDATED, Record, make_bookmark, parse_bookmark
from ..inmemory import (DEFAULT_HISTORY, Collection, EventHook, InMemoryState, _check_kind,
                        _check_owner, _checked_finalizers, _incoming)
from ..router import matches
from ..rules import check_destroy, created, finalizers_changed, torn_down, updated
from . import keys
from .config import EtcdConfig
from .connection import CompactedError, Connection
from .schema import EQUAL, PUT, TARGET_MOD, TARGET_VERSION

log = logging.getLogger("cosihost.etcd")

PAGE = 1000
#: Records kept to answer writers waiting for the watch to deliver theirs.
RECENT = 4096

#: What a write wants instead of the current resource: a new one to put,
#: None to delete it, or ``KEEP`` to leave it as it is.
KEEP = object()
Decide = Callable[[Resource], Any]


class EtcdState(InMemoryState):
    """The state API with etcd as the authority. Close it when done."""

    def __init__(self, config: EtcdConfig, *, namespaces: Iterable[str] | None = None,
                 history: int = DEFAULT_HISTORY, on_event: EventHook | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(history=history, on_event=on_event, clock=clock)
        self.config = config
        self._namespaces = None if namespaces is None else frozenset(namespaces)
        self._conn = Connection(config)
        self._m = self._conn.m
        self._root = keys.root(config.prefix)
        self._revs: dict[tuple[str, str, str], int] = {}
        self._applied = 0
        self._applying = threading.Condition()
        #: Our acknowledged writes waiting for the revisions before them.
        self._pending: dict[int, tuple[tuple[str, str, str], bytes | None]] = {}
        self._recent: dict[int, Record] = {}
        self._local = threading.local()
        self._stop = threading.Event()
        self._cancel_watch: Callable[[], None] = lambda: None
        try:
            header = self._resync(initial=True)
        except BaseException:
            self._conn.close()
            raise
        self.epoch = f"etcd-{header.cluster_id:x}"
        self._watcher = threading.Thread(target=self._watch_loop, name="cosihost-etcd-watch", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        self._cancel_watch()
        self._conn.close()
        self._watcher.join(timeout=5)

    @property
    def applied(self) -> int:
        """The etcd revision the mirror reflects."""
        return self._applied

    def last_written(self) -> Record | None:
        """The record of this thread's last write (None if it wrote nothing
        or the mirror did not get it in time): its ``seq`` is the kind's
        position, as for :class:`InMemoryState`'s event hook."""
        return getattr(self._local, "record", None)

    def owns(self, namespace: str) -> bool:
        """Is the namespace mirrored here (names or shell patterns given)?"""
        return self._namespaces is None or any(matches(p, namespace) for p in self._namespaces)

    def _check_namespace(self, namespace: str) -> None:
        if not self.owns(namespace):
            raise InvalidRequestError(f"namespace {namespace!r} is not kept in this etcd")

    # -- the mirror --------------------------------------------------------------
    def _apply(self, ns: str, typ: str, rid: str, blob: bytes | None, rev: int) -> Record | None:
        """One change at ``rev`` into the mirror, as an event (under ``_applying``)."""
        if not self.owns(ns):
            return None
        coll = self._collection(ns, typ)
        with coll.cond:
            old = coll.items.get(rid)
            if blob is None:
                if old is None:
                    return None
                del coll.items[rid]
                self._revs.pop((ns, typ, rid), None)
                record = coll.history.append(DESTROYED, rid, old, None, rev)
            else:
                coll.items[rid] = blob
                self._revs[(ns, typ, rid)] = rev
                record = coll.history.append(UPDATED if old is not None else CREATED, rid, blob, old, rev)
            coll.last_rev = rev
            if self._on_event is not None:
                self._on_event(ns, typ, record)
        self._recent[rev] = record
        if len(self._recent) > RECENT:
            del self._recent[next(iter(self._recent))]
        return record

    def _range(self, start: bytes, end: bytes, revision: int = 0) -> tuple[Any, list[Any]]:
        """Every key in [start, end) at one revision (now, by default), paged."""
        kvs: list[Any] = []
        header = None
        while True:
            req = self._m.RangeRequest(key=start, range_end=end, limit=PAGE, revision=revision)
            resp, _ = self._conn.call("KV", "Range", req)
            header = header or resp.header
            revision = header.revision if not revision else revision
            kvs.extend(resp.kvs)
            if not resp.more or not resp.kvs:
                return header, kvs
            start = resp.kvs[-1].key + b"\0"

    def _resync(self, *, initial: bool = False) -> Any:
        """Make the mirror equal etcd now: differences become events."""
        header, kvs = self._range(self._root, keys.range_end(self._root))
        seen = set()
        with self._applying:
            for kv in kvs:
                names = keys.parse(self._root, kv.key)
                if names is None:
                    continue
                seen.add(names)
                if initial:
                    self._load(names, kv)
                elif self._revs.get(names) != kv.mod_revision:
                    self._apply(*names, kv.value, kv.mod_revision)
            for names in [n for n in self._revs if n not in seen]:
                self._apply(*names, None, header.revision)
            self._applied = max(self._applied, header.revision)
            self._drain_pending()
            for coll in list(self._collections.values()):
                coll.base_seq, coll.base_rev = coll.history.seq, self._applied
            self._applying.notify_all()
        return header

    def _load(self, names: tuple[str, str, str], kv: Any) -> None:
        """Startup: fill the mirror quietly, as a persistent store loads."""
        if self.owns(names[0]):
            coll = self._collection(names[0], names[1])
            coll.items[names[2]] = kv.value
            self._revs[names] = kv.mod_revision
            coll.last_rev = max(getattr(coll, "last_rev", 0), kv.mod_revision)

    def _collection(self, namespace: str, type: str) -> Collection:
        coll = super()._collection(namespace, type)
        if not hasattr(coll, "base_rev"):
            coll.base_seq, coll.base_rev, coll.last_rev = coll.history.seq, self._applied, 0
        return coll

    def _watch_loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._follow()
                failures = 0
            except CompactedError:
                log.warning("etcd compacted past revision %d: resyncing", self._applied)
                self._guard(self._resync)
            except (grpc.RpcError, UnavailableError) as exc:
                if self._stop.is_set():
                    return
                failures += 1
                detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
                log.log(logging.WARNING if failures == 1 else logging.DEBUG,
                        "etcd watch on %s ended (%s); reconnecting", self._conn.endpoint(), detail)
                self._conn.next_member()
                self._stop.wait(min(0.05 * failures, 1.0))
            except Exception:  # never let the mirror die silently
                log.exception("etcd watch failed; reconnecting")
                self._stop.wait(1.0)

    def _guard(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except (UnavailableError, grpc.RpcError) as exc:
            log.warning("etcd resync failed (%s); retrying", exc)
            self._stop.wait(0.5)

    def _follow(self) -> None:
        """Apply one watch stream's events until it ends."""
        create = self._m.WatchCreateRequest(key=self._root, range_end=keys.range_end(self._root),
                                            start_revision=self._applied + 1, prev_kv=False)
        responses, self._cancel_watch = self._conn.watch(self._m.WatchRequest(create_request=create))
        if self._stop.is_set():
            self._cancel_watch()
        for resp in responses:
            if resp.compact_revision:
                self._cancel_watch()
                raise CompactedError(resp.compact_revision)
            if resp.canceled:
                raise UnavailableError(f"watch cancelled: {resp.cancel_reason or 'no reason given'}")
            if resp.events:
                self._apply_events(resp.events)

    def _apply_events(self, events: Iterable[Any]) -> None:
        with self._applying:
            for ev in events:
                rev = ev.kv.mod_revision
                if rev <= self._applied:
                    continue  # a write of ours, applied when it was acknowledged
                names = keys.parse(self._root, ev.kv.key)
                if names is not None:
                    self._apply(*names, ev.kv.value if ev.type == PUT else None, rev)
                self._applied = rev
            self._drain_pending()
            self._applying.notify_all()

    def _settle(self, names: tuple[str, str, str], blob: bytes | None, rev: int, *,
                exact: bool = True) -> Record | None:
        """Wait until the mirror holds the write etcd acknowledged at ``rev``.

        An ``exact`` revision is that of this very write: it is applied at
        once when every revision before it is applied, by the watch or by
        other writers of this process (so concurrent local writers do not
        wait for their own events to come back). Otherwise (a retried
        delete whose revision is not known) only the watch may apply it."""
        deadline = time.monotonic() + self.config.timeout
        with self._applying:
            if exact and rev > self._applied:
                self._pending[rev] = (names, blob)
                self._drain_pending()
            while self._applied < rev:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("etcd watch is behind (at %d, wrote %d)", self._applied, rev)
                    return None
                self._applying.wait(remaining)
            return self._recent.get(rev)

    def _drain_pending(self) -> None:
        """Apply acknowledged writes of ours that follow on without a gap
        (under ``_applying``); forget those the watch applied already."""
        pending = self._pending
        if not pending:
            return
        while (nxt := pending.pop(self._applied + 1, None)) is not None:
            self._apply(*nxt[0], nxt[1], self._applied + 1)
            self._applied += 1
        for rev in [r for r in pending if r <= self._applied]:
            del pending[rev]
        self._applying.notify_all()

    # -- compare-and-swap ----------------------------------------------------------
    def _current(self, names: tuple[str, str, str], *, fresh: bool) -> tuple[bytes | None, int]:
        """The value and mod_revision of a key: from the mirror, or from etcd."""
        if not fresh:
            coll = self._existing(names[0], names[1])
            if coll is not None:
                with coll.cond:
                    blob = coll.items.get(names[2])
                    if blob is not None:
                        return blob, self._revs.get(names, 0)
        resp, _ = self._conn.call("KV", "Range", self._m.RangeRequest(key=self._key(names)))
        if not resp.kvs:
            return None, 0
        return resp.kvs[0].value, resp.kvs[0].mod_revision

    def _key(self, names: tuple[str, str, str]) -> bytes:
        return keys.key(self._root, *names)

    def _cas(self, names: tuple[str, str, str], expect: int, blob: bytes | None) -> tuple[Any, bool]:
        """Put (or delete, for None) if the key is still at ``expect`` (0: absent)."""
        key, m = self._key(names), self._m
        compare = (m.Compare(result=EQUAL, target=TARGET_MOD, key=key, mod_revision=expect) if expect
                   else m.Compare(result=EQUAL, target=TARGET_VERSION, key=key, version=0))
        op = (m.RequestOp(request_put=m.PutRequest(key=key, value=blob)) if blob is not None
              else m.RequestOp(request_delete_range=m.DeleteRangeRequest(key=key)))
        txn = m.TxnRequest(compare=[compare], success=[op],
                           failure=[m.RequestOp(request_range=m.RangeRequest(key=key))])
        return self._conn.call("KV", "Txn", txn)

    def _write(self, names: tuple[str, str, str], decide: Decide) -> Resource | None:
        """Read, decide, compare-and-swap; again from etcd's answer when
        another writer got in first. Returns what was written."""
        self._local.record = None
        blob, rev = self._current(names, fresh=False)
        fresh = False
        while True:
            if blob is None:
                if not fresh:
                    blob, rev, fresh = *self._current(names, fresh=True), True
                    continue
                raise NotFoundError(f"resource {'/'.join(names)} doesn't exist")
            cur = unpack(blob)
            try:
                want = decide(cur)
            except CosiError:
                if fresh:
                    raise
                blob, rev, fresh = *self._current(names, fresh=True), True  # the mirror may lag
                continue
            if want is KEEP:
                return cur
            new = None if want is None else pack(want)
            resp, maybe_applied = self._cas(names, rev, new)
            if resp.succeeded:
                self._local.record = self._settle(names, new, resp.header.revision)
                return want
            kvs = resp.responses[0].response_range.kvs
            if maybe_applied and (new is None and not kvs or kvs and kvs[0].value == new):
                # Our own write, applied by an attempt whose answer was lost.
                self._local.record = (self._settle(names, new, kvs[0].mod_revision) if kvs else
                                      self._settle(names, new, resp.header.revision, exact=False))
                return want
            blob, rev, fresh = (kvs[0].value, kvs[0].mod_revision, True) if kvs else (None, 0, True)

    # -- writes ------------------------------------------------------------------
    def create(self, resource: Resource, *, owner: str = "") -> Resource:
        res = _incoming(resource, owner)
        md = res.metadata
        self._check_namespace(md.namespace)
        created(res, owner=owner, now=self._clock())
        names = (md.namespace, md.type, md.id)
        new = pack(res)
        self._local.record = None
        resp, maybe_applied = self._cas(names, 0, new)
        kvs = [] if resp.succeeded else resp.responses[0].response_range.kvs
        if not resp.succeeded and not (maybe_applied and kvs and kvs[0].value == new):
            raise ConflictError(f"resource {md.namespace}/{md.type}/{md.id} already exists")
        self._local.record = self._settle(names, new, kvs[0].mod_revision if kvs else resp.header.revision)
        return res

    def update(self, resource: Resource, *, owner: str = "",
               expected_phase: str | None = PHASE_RUNNING) -> Resource:
        new = _incoming(resource, owner, expected_phase)
        md = new.metadata
        self._check_namespace(md.namespace)

        def decide(cur: Resource) -> Resource:
            return updated(cur, validated_copy(new), owner=owner, expected_phase=expected_phase,
                           now=self._clock())

        return self._write((md.namespace, md.type, md.id), decide)

    def destroy(self, namespace: str, type: str, id: str, *, owner: str = "") -> None:
        _check_kind(namespace, type, id)
        _check_owner(owner)
        self._check_namespace(namespace)

        def decide(cur: Resource) -> None:
            check_destroy(cur, owner)

        self._write((namespace, type, id), decide)

    def teardown(self, namespace: str, type: str, id: str, *, owner: str = "") -> bool:
        _check_kind(namespace, type, id)
        _check_owner(owner)
        self._check_namespace(namespace)

        def decide(cur: Resource) -> Any:
            return cur if torn_down(cur, owner, self._clock()) else KEEP

        res = self._write((namespace, type, id), decide)
        return not res.metadata.finalizers

    def _change_finalizers(self, namespace: str, type: str, id: str,
                           finalizers: Iterable[str], *, add: bool) -> Resource:
        _check_kind(namespace, type, id)
        finalizers = _checked_finalizers(finalizers)
        self._check_namespace(namespace)

        def decide(cur: Resource) -> Any:
            return cur if finalizers_changed(cur, finalizers, add=add, now=self._clock()) else KEEP

        return self._write((namespace, type, id), decide)

    # -- bookmarks are revisions -------------------------------------------------
    def _mark_record(self, record: Record) -> str:
        return make_bookmark(self.epoch, record.rev)

    def _mark_cursor(self, coll: Collection, seq: int) -> str:
        return make_bookmark(self.epoch, max(coll.last_rev, coll.base_rev))

    def _resume_cursor(self, since: Any, coll: Collection,
                       current: int) -> tuple[int, str | None, list[Record]]:
        parsed = parse_bookmark(since)
        if parsed is None:
            raise InvalidRequestError(f"since: {since!r} is not a bookmark")
        epoch, rev = parsed
        if epoch != self.epoch:
            return current, "bookmark is from another etcd cluster; resync", []
        if rev > max(self._applied, coll.last_rev, coll.base_rev) or rev < 0:
            return current, f"bookmark {since} is ahead of this host's view; resync", []
        after = [r for r in coll.history.records if r.seq > coll.base_seq]
        if after and after[0].seq > coll.base_seq + 1:  # the oldest fell out of the history
            complete_from, cursor = after[0].rev - 1, after[0].seq - 1
        else:
            complete_from, cursor = coll.base_rev, coll.base_seq
        if rev < complete_from:
            return self._catch_up(coll, rev, current)
        for record in after:
            if record.rev > rev:
                break
            cursor = record.seq
        return cursor, None, []

    def _catch_up(self, coll: Collection, rev: int, current: int) -> tuple[int, str | None, list[Record]]:
        """A bookmark older than this mirror's history (say, from before a
        restart): what changed since, from etcd's own history at ``rev``.

        Changes come as one event per resource that differs, destroyed ones
        first (bookmarked at ``rev``: they have no revision of their own),
        then the others by revision, so that resuming from any of their
        bookmarks misses nothing."""
        prefix = keys.kind_prefix(self._root, coll.namespace, coll.type)
        try:
            _header, kvs = self._range(prefix, keys.range_end(prefix), rev)
        except CompactedError:
            return current, f"bookmark revision {rev} was compacted away by etcd; resync", []
        except UnavailableError as exc:
            return current, f"cannot catch up from revision {rev}: {exc}; resync", []
        then = {names[2]: kv for kv in kvs if (names := keys.parse(self._root, kv.key)) is not None}
        gone, changed = [], []
        for rid in sorted(then.keys() - coll.items.keys()):
            gone.append(Record(0, DESTROYED, rid, then[rid].value, None, rev))
        for rid, blob in coll.items.items():
            now_rev = self._revs.get((coll.namespace, coll.type, rid), 0)
            old = then.get(rid)
            if old is None:
                changed.append(Record(0, CREATED, rid, blob, None, now_rev))
            elif old.mod_revision != now_rev:
                changed.append(Record(0, UPDATED, rid, blob, old.value, now_rev))
        changed.sort(key=lambda r: r.rev)
        return current, None, gone + changed
