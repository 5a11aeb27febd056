"""A host's view of an etcd prefix: one watch keeping an in-memory state equal
to etcd, revision by revision.

The mirror starts with a range read at revision R and then watches from
R + 1, so no change is missed or seen twice. Changes become the same
records and events as local writes (``on_event``); a revision's changes are
applied together, in etcd's order. When the watch breaks it resumes after
the last applied revision on the next member; when etcd compacted that
revision away, the mirror re-reads everything and turns the differences
into events.

Writes are not made here (see :mod:`.state`), but their acknowledged
revisions are handed in (:mod:`.settle`), so a writer reads its
own write as soon as etcd acknowledged it, without waiting for the watch.

The mirror also knows whether it is *known current* (:meth:`known_current`):
its watch is connected and it has applied every revision etcd has named to
this process so far, in any answer (a write's acknowledgement, a lost
compare-and-swap, a read, a watch response, noted before its events are
applied). A decision made on a current mirror is consistent with everything
this host has read, written or told anyone: the same guarantee as a read
served from the mirror. A write by another host that no answer has named
yet may be missing; any decision that writes is checked by etcd anyway.

Bookmarks are etcd revisions, so they outlive this process: a watch
resumed from one older than this mirror's history gets what changed since,
computed from etcd's own history at that revision.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from typing import Any, Callable, Iterable, Sequence

import grpc

from ...errors import UnavailableError
from ..events import CREATED, DESTROYED, UPDATED, Record, Watch, make_bookmark, parse_bookmark, since_bookmark
from ..inmemory import DEFAULT_HISTORY, Collection, EventHook, InMemoryState
from ..router import matches
from . import keys
from .config import EtcdConfig
from .connection import CompactedError, Connection
from .schema import PUT
from .settle import Names, Settling

log = logging.getLogger("cosihost.etcd")

PAGE = 1000
#: Records kept to answer writers waiting for the watch to deliver theirs.
RECENT = 4096


def _with_partial(parsed: list[tuple[Any, Names | None]]) -> list[tuple[Any, Names | None, bool]]:
    """Each event, and whether a later one of the same kind shares its revision."""
    out: list[tuple[Any, Names | None, bool]] = []
    later: set[tuple[int, Any]] = set()
    for ev, names in reversed(parsed):
        key = (ev.kv.mod_revision, names[:2] if names else None)
        out.append((ev, names, key in later))
        later.add(key)
    out.reverse()
    return out


class Mirror(Settling, InMemoryState):
    """An in-memory state that follows an etcd prefix. Close it when done."""

    def __init__(self, config: EtcdConfig, *, namespaces: Iterable[str] | None = None,
                 history: int = DEFAULT_HISTORY, on_event: EventHook | None = None,
                 on_changes_done: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time, wait: bool = True) -> None:
        """Read the prefix, then follow it. With ``wait`` False an etcd that
        cannot be reached now is not an error: the mirror keeps trying in
        the background and is :attr:`ready` once it has read the prefix.
        ``on_changes_done`` is called after each group of events that ends
        on a whole revision (a watch response, a resync, acknowledged writes
        applied), so a publisher can hold a revision's events together."""
        super().__init__(history=history, on_event=on_event, clock=clock)
        self._on_changes_done = on_changes_done
        self.config = config
        self._namespaces = None if namespaces is None else frozenset(namespaces)
        self._conn = Connection(config)
        self._m = self._conn.m
        self._root = keys.root(config.prefix)
        self._revs: dict[Names, int] = {}
        self._applied = 0
        #: The revision the history of every kind is complete from.
        self._start = 0
        self._applying = threading.Condition()
        self._pending = {}
        self._waiters = []
        self._order = itertools.count()
        self._seen = 0
        self._seen_lock = threading.Lock()
        self._watch_live = False
        self._recent = {}
        self._local = threading.local()
        self._stop = threading.Event()
        self._cancel_watch: Callable[[], None] = lambda: None
        self.epoch = "etcd-unknown"
        #: Why the prefix has not been read yet; None once it has.
        self.not_ready: str | None = "not connected yet"
        try:
            self._connect()
        except UnavailableError as exc:
            if wait:
                self._conn.close()
                raise
            self.not_ready = str(exc)
            log.warning("%s; retrying in the background", exc)
        except BaseException:
            self._conn.close()
            raise
        self._watcher = threading.Thread(target=self._watch_loop, name="cosihost-etcd-watch", daemon=True)
        self._watcher.start()

    @property
    def ready(self) -> bool:
        return self.not_ready is None

    def _connect(self) -> None:
        """The first read of the prefix (again once, if compacted while paging)."""
        try:
            header = self._resync(initial=True)
        except CompactedError as exc:
            try:
                header = self._resync(initial=True)
            except CompactedError:
                raise UnavailableError(f"etcd: cannot read a consistent snapshot: {exc}") from None
        self.epoch = f"etcd-{header.cluster_id:x}"
        self.not_ready = None

    def close(self) -> None:
        self._stop.set()
        self._cancel_watch()
        with self._applying:
            self._applying.notify_all()  # writers waiting for the watch: it won't come
        self._conn.close()
        self._watcher.join(timeout=5)

    @property
    def applied(self) -> int:
        """The etcd revision the mirror reflects."""
        return self._applied

    def owns(self, namespace: str) -> bool:
        """Is the namespace mirrored here (names or shell patterns given)?"""
        return self._namespaces is None or any(matches(p, namespace) for p in self._namespaces)

    def _new_collection(self, namespace: str, type: str) -> Collection:
        coll = super()._new_collection(namespace, type)
        # A kind first seen now had no change since the mirror's start.
        coll.base_seq, coll.base_rev, coll.last_rev = 0, self._start, 0  # type: ignore[attr-defined]
        return coll

    # -- applying changes --------------------------------------------------------
    def _apply(self, ns: str, typ: str, rid: str, blob: bytes | None, rev: int, *,
               partial: bool = False) -> Record | None:
        """One change at ``rev`` into the mirror, as an event (under
        ``_applying``); ``partial``: more of this kind follow at ``rev``."""
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
                record = coll.history.append(DESTROYED, rid, old, None, rev, partial)
            else:
                coll.items[rid] = blob
                self._revs[(ns, typ, rid)] = rev
                record = coll.history.append(UPDATED if old is not None else CREATED, rid, blob, old, rev,
                                             partial)
            coll.last_rev = rev  # type: ignore[attr-defined]
            if self._on_event is not None:
                self._on_event(ns, typ, record)
        self._recent[rev] = record
        if len(self._recent) > RECENT:
            del self._recent[next(iter(self._recent))]
        return record

    def _apply_events(self, events: Iterable[Any]) -> None:
        """One watch response: whole revisions (etcd never splits one), in order."""
        parsed = [(ev, keys.parse(self._root, ev.kv.key)) for ev in events]
        with self._applying:
            floor = self._applied  # revisions up to here are in (our own writes, say)
            for ev, names, partial in _with_partial(parsed):
                rev = ev.kv.mod_revision
                if rev <= floor:
                    continue
                if names is not None:
                    self._apply(*names, ev.kv.value if ev.type == PUT else None, rev, partial=partial)
                self._applied = rev
            self._drain_pending()
            self._changes_done()
            self._applying.notify_all()

    def known_current(self) -> bool:
        """Has the mirror applied every revision etcd has named to this
        process, with its watch connected? (The module docstring says what
        a decision on it is worth.)"""
        return self.ready and self._watch_live and self._applied >= self._seen

    # -- reading etcd --------------------------------------------------------------
    def _range(self, start: bytes, end: bytes, revision: int = 0) -> tuple[Any, list[Any]]:
        """Every key in [start, end) at one revision (now, by default), paged."""
        kvs: list[Any] = []
        header = None
        while True:
            req = self._m.RangeRequest(key=start, range_end=end, limit=PAGE, revision=revision)
            resp, _ = self._conn.call("KV", "Range", req)
            self._note(resp.header.revision)
            header = header or resp.header
            revision = revision or header.revision
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
                if names is None or not self.owns(names[0]):
                    continue
                seen.add(names)
                if initial:
                    self._load(names, kv)
                elif self._revs.get(names) != kv.mod_revision:
                    self._apply(*names, kv.value, kv.mod_revision)
            gone = sorted(n for n in self._revs if n not in seen)
            for i, names in enumerate(gone):  # all at one revision: partial but the last of a kind
                partial = i + 1 < len(gone) and gone[i + 1][:2] == names[:2]
                self._apply(*names, None, header.revision, partial=partial)
            self._applied = self._start = max(self._applied, header.revision)
            self._drain_pending()
            self._changes_done()
            for coll in list(self._collections.values()):
                with coll.cond:  # histories are complete from here on
                    coll.base_seq, coll.base_rev = coll.history.seq, self._start  # type: ignore[attr-defined]
            self._applying.notify_all()
        return header

    def _load(self, names: Names, kv: Any) -> None:
        """Startup: fill the mirror quietly, as a persistent store loads."""
        coll = self._collection(names[0], names[1])
        coll.items[names[2]] = kv.value
        self._revs[names] = kv.mod_revision
        coll.last_rev = max(coll.last_rev, kv.mod_revision)  # type: ignore[attr-defined]

    # -- the watch -----------------------------------------------------------------
    def _watch_loop(self) -> None:
        """Follow etcd until closed, whatever happens on the way."""
        pause = 0.5
        while not self.ready and not self._stop.wait(pause):
            try:
                self._connect()
                log.info("etcd at %s connected (revision %d)", self._conn.endpoint(), self._applied)
            except Exception as exc:
                self.not_ready = str(exc)
                pause = min(pause * 2, 5.0)
        failures = 0
        while not self._stop.is_set():
            try:
                self._follow()
                failures = 0
            except CompactedError:
                log.warning("etcd compacted past revision %d: resyncing", self._applied)
                self._retrying(self._resync)
            except Exception as exc:  # the mirror must never stop following
                if self._stop.is_set():
                    return
                failures += 1
                detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
                log.log(logging.WARNING if failures == 1 else logging.DEBUG,
                        "etcd watch on %s ended (%s); reconnecting", self._conn.endpoint(), detail)
                self._conn.next_member()
                self._stop.wait(min(0.05 * failures, 1.0))

    def _retrying(self, fn: Callable[[], Any]) -> None:
        while not self._stop.is_set():
            try:
                fn()
                return
            except Exception as exc:
                log.warning("etcd resync failed (%s); retrying", exc)
                self._stop.wait(0.5)

    def _follow(self) -> None:
        """Apply one watch stream's events until it ends."""
        create = self._m.WatchCreateRequest(key=self._root, range_end=keys.range_end(self._root),
                                            start_revision=self._applied + 1, prev_kv=False)
        responses, self._cancel_watch = self._conn.watch(self._m.WatchRequest(create_request=create))
        try:
            if self._stop.is_set():
                return
            for resp in responses:
                if resp.compact_revision:
                    raise CompactedError(resp.compact_revision)
                if resp.canceled:
                    raise UnavailableError(f"watch cancelled: {resp.cancel_reason or 'no reason given'}")
                self._note(resp.header.revision)  # before its events: not current until they are in
                self._watch_live = True
                if resp.events:
                    self._apply_events(resp.events)
        finally:
            self._watch_live = False
            self._cancel_watch()  # ends the stream and its request thread

    # -- bookmarks are revisions -------------------------------------------------
    def _mark_record(self, record: Record) -> str:
        return make_bookmark(self.epoch, record.mark_rev)

    def _mark_cursor(self, coll: Collection | None, seq: int) -> str:
        if coll is None:
            return make_bookmark(self.epoch, self._start)
        return make_bookmark(self.epoch, max(coll.last_rev, coll.base_rev))  # type: ignore[attr-defined]

    def watch_kind(self, namespace: str, type: str, *, bootstrap: bool = False,
                   labels: str | Sequence[str] | None = None, since: str | None = None) -> Watch:
        # What a catch-up needs from etcd is read before the kind is locked.
        self._local.then = self._prefetch(namespace, type, since)
        try:
            return super().watch_kind(namespace, type, bootstrap=bootstrap, labels=labels, since=since)
        finally:
            self._local.then = None

    def resume(self, namespace: str, type: str, bookmark: Any) -> tuple[int, list[Record], str | None]:
        self._local.then = self._prefetch(namespace, type, bookmark)
        try:
            return super().resume(namespace, type, bookmark)
        finally:
            self._local.then = None

    def _complete_from(self, coll: Collection) -> tuple[int, int]:
        """(revision, seq) from which the kind's history is complete (under its lock)."""
        base_seq, base_rev = coll.base_seq, coll.base_rev  # type: ignore[attr-defined]
        first = next((r for r in coll.history.records if r.seq > base_seq), None)
        if first is not None and first.seq > base_seq + 1:  # the oldest fell out of the history
            return first.rev - 1, first.seq - 1
        return base_rev, base_seq

    def _prefetch(self, namespace: str, type: str, since: Any) -> tuple[int, Any] | None:
        parsed = parse_bookmark(since) if since is not None else None
        if parsed is None or parsed[0] != self.epoch or parsed[1] <= 0:
            return None
        coll = self._collection(namespace, type)
        with coll.cond:
            complete_from, _seq = self._complete_from(coll)
        if parsed[1] >= complete_from:
            return None
        prefix = keys.kind_prefix(self._root, namespace, type)
        try:
            return parsed[1], self._range(prefix, keys.range_end(prefix), parsed[1])[1]
        except CompactedError:
            return parsed[1], f"bookmark revision {parsed[1]} was compacted away by etcd; resync"
        except UnavailableError as exc:
            return parsed[1], f"cannot catch up from revision {parsed[1]}: {exc}; resync"

    def _resume_cursor(self, since: Any, coll: Collection,
                       current: int) -> tuple[int, str | None, list[Record]]:
        epoch, rev = since_bookmark(since)
        if epoch != self.epoch:
            return current, "bookmark is from another etcd cluster; resync", []
        if rev > max(self._applied, coll.last_rev, coll.base_rev) or rev <= 0:  # type: ignore[attr-defined]
            return current, f"bookmark {since} is not within this host's view; resync", []
        complete_from, cursor = self._complete_from(coll)
        if rev < complete_from:
            return self._catch_up(coll, rev, current)
        for record in coll.history.records:
            if record.seq <= cursor:
                continue
            if record.rev > rev:
                break
            cursor = record.seq
        return cursor, None, []

    def _catch_up(self, coll: Collection, rev: int, current: int) -> tuple[int, str | None, list[Record]]:
        """A bookmark older than this mirror's history (say, from before a
        restart): what changed since, from etcd's own history at ``rev``.

        One event per resource that differs: destroyed ones first
        (bookmarked at ``rev``: their revision is not known), then the
        others by revision, so that resuming from any of their bookmarks
        misses nothing."""
        then = getattr(self._local, "then", None)
        if then is None or then[0] != rev:
            return current, f"bookmark revision {rev} is older than this host's history; resync", []
        if isinstance(then[1], str):
            return current, then[1], []
        old = {names[2]: kv for kv in then[1] if (names := keys.parse(self._root, kv.key)) is not None}
        gone, changed = [], []
        for rid in sorted(old.keys() - coll.items.keys()):
            gone.append(Record(0, DESTROYED, rid, old[rid].value, None, rev + 1, True))
        for rid, blob in coll.items.items():
            now_rev = self._revs.get((coll.namespace, coll.type, rid), 0)
            was = old.get(rid)
            if was is None:
                changed.append(Record(0, CREATED, rid, blob, None, now_rev))
            elif was.mod_revision != now_rev:
                changed.append(Record(0, UPDATED, rid, blob, was.value, now_rev))
        changed.sort(key=lambda r: r.rev)
        changed = [dataclasses.replace(r, partial=True) if n + 1 < len(changed) and changed[n + 1].rev == r.rev
                   else r for n, r in enumerate(changed)]
        return current, None, gone + changed
