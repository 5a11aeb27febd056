"""The events of one turn of the supervisor's loop, sent as few frames as possible.

Sending one message per change made every change a wake-up of the
publisher's I/O thread and of every subscriber's, which bounded fan-out far
below what PUB/SUB moves. So the loop collects the changes it makes while it
serves a batch of requests (and anything else in that turn) and flushes them
before it waits again: one frame per kind, holding every change of that kind
in order (cut at :data:`wire.BATCH_BYTES` so a frame stays far under the
subscribers' size limit).

When a turn changed several kinds, each frame names all of them with the
sequence number each reached (the frontier). A transaction is applied within
one request, so within one turn: a subscriber that holds several of the kinds
it touched waits until each has reached its number before it reconciles, and
so never acts on half of it. Sequence numbers, gaps and resyncs work as
before: each change keeps its kind's number.
"""

from __future__ import annotations

from typing import Any, Callable

from .. import wire
from ..resource import unpack
from ..state.events import Record, meta_of

Send = Callable[[list[bytes]], None]


class EventOutbox:
    def __init__(self) -> None:
        #: (namespace, type) -> rows of wire.change_row, in order.
        self._rows: dict[tuple[str, str], list[list[Any]]] = {}
        self._heads: dict[tuple[str, str], int] = {}

    def __bool__(self) -> bool:
        return bool(self._rows)

    def add(self, namespace: str, type: str, record: Record) -> None:
        meta = record.meta
        if meta is None:  # a destroy inside a transaction, a change from etcd: decode once here
            meta = meta_of(unpack(record.blob))
        row = wire.change_row(record.seq, record.kind, record.id, meta, record.blob, record.old, record.mark_rev)
        kind = (namespace, type)
        rows = self._rows.get(kind)
        if rows is None:
            self._rows[kind] = [row]
        else:
            rows.append(row)
        self._heads[kind] = record.seq

    def flush(self, epoch: str, send: Send) -> int:
        """Send what was added, one frame per kind (more for a big one); the frames sent."""
        if not self._rows:
            return 0
        rows_by_kind, heads = self._rows, self._heads
        self._rows, self._heads = {}, {}
        frontier = [[ns, typ, seq] for (ns, typ), seq in heads.items()] if len(heads) > 1 else []
        frames = 0
        for (ns, typ), rows in rows_by_kind.items():
            topic = wire.topic(ns, typ)
            for chunk in _chunks(rows):
                send([topic, wire.encode_events(epoch, chunk, frontier)])
                frames += 1
        return frames


def _chunks(rows: list[list[Any]]) -> list[list[list[Any]]]:
    """``rows`` cut into runs of about :data:`wire.BATCH_BYTES` (never an empty one)."""
    out: list[list[list[Any]]] = []
    start, size = 0, 0
    for n, row in enumerate(rows):
        size += len(row[6]) + len(row[7] or b"") + 64
        if size > wire.BATCH_BYTES and n > start:
            out.append(rows[start:n])
            start, size = n, len(row[6]) + len(row[7] or b"") + 64
    out.append(rows[start:])
    return out
