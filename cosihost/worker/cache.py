"""A controller's local copy of the kinds it reads, kept by the Clone pattern.

Each kind is synced by subscribing (proven live), taking a snapshot at a
sequence number, then applying published events in order. A hole in the
numbering is filled from the supervisor's history, or, if that is gone, by a
fresh snapshot; a new supervisor epoch resyncs everything. The controller's
own acknowledged writes sit in an overlay until the stream catches up with
them, so reads always include them.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Iterable

from .. import wire
from ..errors import OverrunError
from ..resource import Resource, unpack
from ..selectors import compile_id_regex, parse_query
from ..state.events import DESTROYED
from ..transport import Requester, Subscriber, fetch_snapshot

log = logging.getLogger("cosihost.worker")

Kind = tuple[str, str]
#: The overlay's sequence number of a write not acknowledged yet: no event
#: replaces it (the stream cannot have it before its reply says where it is).
PENDING = 1 << 62


@dataclasses.dataclass
class KindCache:
    seq: int
    items: dict[str, bytes]
    overlay: dict[str, tuple[int, bytes | None]] = dataclasses.field(default_factory=dict)

    def apply(self, seq: int, kind: str, rid: str, blob: bytes) -> None:
        if kind == DESTROYED:
            self.items.pop(rid, None)
        else:
            self.items[rid] = blob
        self.seq = seq
        mine = self.overlay.get(rid)
        if mine is not None and mine[0] <= seq:
            del self.overlay[rid]

    def current(self, rid: str) -> bytes | None:
        mine = self.overlay.get(rid)
        if mine is not None:
            return mine[1]
        return self.items.get(rid)

    def ids(self) -> list[str]:
        ids = set(self.items) | set(self.overlay)
        return sorted(i for i in ids if self.current(i) is not None)


#: Called with (namespace, type, event kind, change) for each applied change.
OnChange = Callable[[str, str, str, wire.Change], None]


class Cache:
    """Kinds synced from the supervisor, applied in sequence order."""

    def __init__(self, requester: Requester, subscriber: Subscriber, on_change: OnChange) -> None:
        self._req = requester
        self._sub = subscriber
        self._on_change = on_change
        self.epoch: str | None = None
        self.kinds: dict[Kind, KindCache] = {}
        self.resyncs = 0
        #: Published events received for the kinds held here.
        self.events = 0
        #: Kinds a received frame says changed in the same turn, with the
        #: number each reached: no reconcile until the cache has them.
        self.awaited: dict[Kind, int] = {}

    def ensure(self, namespace: str, type: str) -> KindCache:
        """Sync a kind on first use: subscribe, prove it, then snapshot."""
        key = (namespace, type)
        kc = self.kinds.get(key)
        if kc is None:
            self._sub.subscribe(self._req, namespace, type)
            kc = self._snapshot(namespace, type)
        return kc

    def drop(self, namespace: str, type: str) -> None:
        if self.kinds.pop((namespace, type), None) is not None:
            self._sub.unsubscribe(namespace, type)

    def _snapshot(self, namespace: str, type: str) -> KindCache:
        snap = fetch_snapshot(self._req, namespace, type)
        self.epoch, seq, items = snap.epoch, snap.seq, dict(snap.items)
        kc = self.kinds.get((namespace, type))
        if kc is None:
            kc = self.kinds[(namespace, type)] = KindCache(seq, items)
        else:
            kc.seq, kc.items = seq, items
            kc.overlay = {k: v for k, v in kc.overlay.items() if v[0] > kc.seq}
        return kc

    def resync(self, namespace: str, type: str, why: str) -> None:
        log.warning("resyncing %s/%s: %s", namespace, type, why)
        self.resyncs += 1
        kc = self._snapshot(namespace, type)
        for rid in kc.ids():
            self._on_change(namespace, type, "resync", wire.Change.of_blob("resync", kc.current(rid)))  # type: ignore[arg-type]

    def resync_all(self, why: str) -> None:
        self.awaited.clear()  # numbers of another epoch: the snapshots are whole
        for namespace, type in list(self.kinds):
            self.resync(namespace, type, why)

    def apply(self, topic: bytes, batch: wire.EventBatch) -> None:
        """Apply one published frame, filling holes or resyncing as needed."""
        try:
            namespace, type = wire.parse_topic(topic)
        except (wire.WireError, UnicodeDecodeError):
            return
        kc = self.kinds.get((namespace, type))
        if kc is None:
            return
        self.events += len(batch.changes)
        if batch.epoch != self.epoch:
            self.resync_all(f"supervisor epoch changed to {batch.epoch}")
            return
        for ns, typ, seq in batch.frontier:
            held = self.kinds.get((ns, typ))
            if held is not None and held.seq < seq and self.awaited.get((ns, typ), 0) < seq:
                self.awaited[(ns, typ)] = seq
        for change in batch.changes:
            if change.seq <= kc.seq:
                continue
            if change.seq > kc.seq + 1:
                self._fill(namespace, type, kc, change.seq - 1)
                if change.seq <= kc.seq:
                    continue  # a resync's snapshot has it already
                if change.seq != kc.seq + 1:
                    return  # still a hole: the heartbeat's check of the heads refills it
            self._apply_one(namespace, type, kc, change)

    def incomplete(self) -> dict[Kind, int]:
        """The kinds still short of what a received frame said they reached
        (part of a transaction, or of a turn, is in the cache): forgotten
        once reached."""
        self.awaited = {k: seq for k, seq in self.awaited.items() if k in self.kinds and self.kinds[k].seq < seq}
        return self.awaited

    def complete(self) -> None:
        """Fill each incomplete kind from the supervisor's history (the frame
        that would have completed it did not come in time)."""
        for (namespace, type), seq in list(self.incomplete().items()):
            self._fill(namespace, type, self.kinds[(namespace, type)], seq)
        self.awaited.clear()  # filled, or resynced, or left to the heads check

    def _apply_one(self, namespace: str, type: str, kc: KindCache, change: wire.Change) -> None:
        kc.apply(change.seq, change.kind, change.id, change.blob)
        self._on_change(namespace, type, change.kind, change)

    def _fill(self, namespace: str, type: str, kc: KindCache, upto: int) -> bool:
        """Fetch the records missing before ``upto``; resync if history lost them."""
        try:
            reply = self._req.call("since", namespace=namespace, type=type, seq=kc.seq)
        except OverrunError:
            self.resync(namespace, type, f"events after {kc.seq} fell out of history")
            return False
        if reply["epoch"] != self.epoch:
            self.resync_all("supervisor epoch changed")
            return False
        for seq, kind, _rid, blob, _old, *_rev in reply["records"]:
            if kc.seq < seq <= upto:
                self._apply_one(namespace, type, kc, wire.Change.of_blob(kind, blob, seq=seq))
        return kc.seq == upto

    def check_heads(self, heads: Iterable[tuple[str, str, int]], suspects: set[Kind]) -> set[Kind]:
        """Compare with the supervisor's sequence numbers; a kind behind on two
        checks in a row lost its last event(s) and is refilled."""
        behind = set()
        for namespace, type, seq in heads:
            kc = self.kinds.get((namespace, type))
            if kc is not None and kc.seq < seq:
                behind.add((namespace, type))
                if (namespace, type) in suspects:
                    self._fill(namespace, type, kc, seq)
        return behind

    def record_write(self, namespace: str, type: str, rid: str, seq: int, blob: bytes | None) -> None:
        kc = self.kinds.get((namespace, type))
        if kc is not None and seq > kc.seq:
            kc.overlay[rid] = (seq, blob)

    def record_pending(self, namespace: str, type: str, rid: str, blob: bytes | None) -> None:
        """A write sent but not acknowledged yet, as it is expected to leave
        the resource: read at once, and kept until it is settled or forgotten."""
        self.record_write(namespace, type, rid, PENDING, blob)

    def settle_write(self, namespace: str, type: str, rid: str, seq: int) -> None:
        """The pending writes of ``rid`` are acknowledged, the last at ``seq``:
        kept until the stream brings that event (dropped if it already did)."""
        kc = self.kinds.get((namespace, type))
        mine = None if kc is None else kc.overlay.get(rid)
        if kc is None or mine is None or mine[0] != PENDING:
            return
        if seq > kc.seq:
            kc.overlay[rid] = (seq, mine[1])
        else:
            del kc.overlay[rid]

    def forget_write(self, namespace: str, type: str, rid: str) -> None:
        """A pending write of ``rid`` failed: the cache shows the stream's copy again."""
        kc = self.kinds.get((namespace, type))
        if kc is not None and kc.overlay.get(rid, (0, None))[0] == PENDING:
            del kc.overlay[rid]

    def get(self, namespace: str, type: str, rid: str) -> Resource | None:
        blob = self.ensure(namespace, type).current(rid)
        return None if blob is None else unpack(blob)

    def list(self, namespace: str, type: str, *, labels: Any = None,
             id_regex: str | None = None) -> list[Resource]:
        kc = self.ensure(namespace, type)
        query = parse_query(labels)
        regex = compile_id_regex(id_regex)
        out = []
        for rid in kc.ids():
            if regex is not None and not regex.search(rid):
                continue
            res = unpack(kc.current(rid))  # type: ignore[arg-type]
            if query.matches(res.metadata.labels):
                out.append(res)
        return out
