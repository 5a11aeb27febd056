"""The cache-sync verbs: how a reader's cache of a kind catches up.

A reader (a controller's cache, a client's watch) takes a snapshot of
a kind at one sequence number, paged when it is too big for one reply, then
follows the events; when it has missed some it asks for the records since a
sequence number, or since a bookmark of the kind's own backend after a
restart, and it can probe the events socket to learn that its subscription
is live. A mixin of :class:`~.api.Api`, apart from the entry point and the
write verbs so that each file holds one concern.
"""

from __future__ import annotations

import collections
import secrets
import time
from typing import Any

from .. import wire
from ..errors import InvalidRequestError, NotFoundError, OverrunError
from . import access
from .access import Caller
from .verbs import Verbs, kind_of


class SnapshotPages:
    """Snapshots too big for one reply, held (as references to the stored
    blobs, taken at one sequence number) until their reader has paged
    through them, for a minute at most."""

    TTL = 60.0
    MOST = 64

    def __init__(self) -> None:
        self._open: collections.OrderedDict[str, tuple[Caller, list[Any], float]] = collections.OrderedDict()

    def start(self, caller: Caller, items: list[Any]) -> dict[str, Any]:
        first, rest = _page(items)
        if not rest:
            return {"items": first, "next": None}
        now = time.monotonic()
        for cursor, (_c, _items, expires) in list(self._open.items()):
            if expires < now or len(self._open) >= self.MOST:
                del self._open[cursor]
        cursor = secrets.token_hex(8)
        self._open[cursor] = (caller, rest, now + self.TTL)
        return {"items": first, "next": cursor}

    def page(self, caller: Caller, cursor: str) -> dict[str, Any]:
        entry = self._open.pop(cursor, None)
        if entry is None or entry[0] != caller or entry[2] < time.monotonic():
            raise NotFoundError("no such snapshot (expired or not yours): take a new one")
        items, rest = _page(entry[1])
        if not rest:
            return {"items": items, "next": None}
        self._open[cursor] = (caller, rest, entry[2])
        return {"items": items, "next": cursor}


def _page(items: list[Any]) -> tuple[list[Any], list[Any]]:
    size = 0
    for n, (rid, blob) in enumerate(items):
        size += len(blob) + len(rid) + 8
        if size > wire.SNAPSHOT_PAGE_BYTES and n:
            return [list(i) for i in items[:n]], items[n:]
    return [list(i) for i in items], []


class SyncVerbs(Verbs):
    """snapshot, snapshot_page, since, resume, probe."""

    def op_snapshot(self, caller: Caller, args: dict[str, Any], _r: Any) -> dict[str, Any]:
        """The kind's items at one sequence number: ``[[id, blob], ...]``, the
        first page now and the rest from ``snapshot_page`` with ``next``."""
        ns, typ = kind_of(args)
        access.check_read(caller, ns, typ)
        seq, items, mark = self.state.snapshot_marked(ns, typ)
        only = args.get("id")
        if only is not None:
            items = [item for item in items if item[0] == only]
        reply = {"epoch": self.state.epoch, "seq": seq, "mark": mark}
        reply.update(self._snapshots.start(caller, items))
        return reply

    def op_snapshot_page(self, caller: Caller, args: dict[str, Any], _r: Any) -> dict[str, Any]:
        cursor = args["cursor"]
        if not isinstance(cursor, str):
            raise InvalidRequestError("cursor must be a string")
        return self._snapshots.page(caller, cursor)

    def op_since(self, caller: Caller, args: dict[str, Any], _r: Any) -> dict[str, Any]:
        ns, typ = kind_of(args)
        access.check_read(caller, ns, typ)
        seq = args["seq"]
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise InvalidRequestError("seq must be an integer")
        if seq < 0:
            head, mark = self.state.position(ns, typ)
            return {"epoch": self.state.epoch, "seq": head, "mark": mark, "records": []}
        head = self.state.head(ns, typ)
        records = self.state.records_since(ns, typ, seq)
        if records is None:
            raise OverrunError(f"events of {ns}/{typ} after {seq} are no longer in history")
        return {"epoch": self.state.epoch, "seq": head,
                "records": [[r.seq, r.kind, r.id, r.blob, r.old, r.mark_rev] for r in records]}

    def op_resume(self, caller: Caller, args: dict[str, Any], later: Any) -> dict[str, Any]:
        """The records after a bookmark of the kind's own backend (an etcd
        revision outlives this supervisor), replayed ones (seq 0) first.
        Catching up may read etcd: off the loop."""
        ns, typ = kind_of(args)
        access.check_read(caller, ns, typ)

        def work() -> dict[str, Any]:
            seq, records, error = self.state.resume(ns, typ, args["bookmark"])
            return {"epoch": self.state.epoch, "seq": seq, "error": error,
                    "records": [[r.seq, r.kind, r.id, r.blob, r.old, r.mark_rev] for r in records]}

        resumed: dict[str, Any] = self._off_loop(ns, later, work)
        return resumed

    def op_probe(self, caller: Caller, args: dict[str, Any], _r: Any) -> None:
        topic, nonce = args["topic"], args["nonce"]
        if not isinstance(topic, bytes) or not isinstance(nonce, str):
            raise InvalidRequestError("probe needs a bin topic and a string nonce")
        try:
            ns, typ = wire.parse_topic(topic)
        except (wire.WireError, UnicodeDecodeError):
            raise InvalidRequestError("probe topic is not a kind topic") from None
        access.check_read(caller, ns, typ)
        self.host.publish_probe(topic, nonce)  # type: ignore[attr-defined]
