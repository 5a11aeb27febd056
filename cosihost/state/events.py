"""Events, and the bounded per-kind history that watchers read from.

Every kind (namespace, type) numbers its changes 1, 2, 3, ... and keeps the
last N of them. A watcher is a cursor into that numbering, so a watcher that
falls behind is detected exactly (its next number is no longer kept) and is
told so with an ``error`` event instead of silently skipping anything.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Any, Callable, Generic, Iterator, Self, TypeVar

from ..errors import InvalidRequestError
from ..resource import Resource, unpack
from ..selectors import Query

CREATED = "created"
UPDATED = "updated"
DESTROYED = "destroyed"
BOOTSTRAPPED = "bootstrapped"
ERROR = "error"


@dataclasses.dataclass
class Event:
    """One change seen by a watcher.

    ``resource`` is the resource after the change (for ``destroyed``: as it
    was when destroyed); ``old`` is the previous state for ``updated``;
    ``bookmark`` resumes a ``watch_kind`` right after this event; ``error``
    says what went wrong for an ``error`` event.
    """

    kind: str
    resource: Resource | None = None
    old: Resource | None = None
    bookmark: str | None = None
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class Record:
    """A change as the history keeps it: packed blobs, decoded per reader."""

    seq: int
    kind: str
    id: str
    blob: bytes
    old: bytes | None
    #: The backend's own position of the change (an etcd revision), if any.
    rev: int = 0
    #: More changes of this kind follow at the same ``rev`` (one etcd
    #: revision can change several resources).
    partial: bool = False
    #: (version, phase, finalizers empty) of the resource in ``blob``, when
    #: the writer had it decoded: published with the change, so that no
    #: reader unpacks the blob to learn them. None: unknown (unpack to learn).
    meta: tuple[int, str, bool] | None = None

    @property
    def mark_rev(self) -> int:
        """The revision to resume from to miss nothing after this record:
        before its revision while that revision has more to come."""
        return self.rev - 1 if self.partial else self.rev


def make_bookmark(epoch: str, seq: int) -> str:
    return f"{epoch}:{seq}"


def parse_bookmark(bookmark: Any) -> tuple[str, int] | None:
    if not isinstance(bookmark, str) or ":" not in bookmark:
        return None
    epoch, _, seq = bookmark.rpartition(":")
    try:
        return epoch, int(seq)
    except ValueError:
        return None


def since_bookmark(since: Any) -> tuple[str, int]:
    """A watch's ``since`` argument as (epoch, position); InvalidRequestError
    when it is no bookmark at all."""
    parsed = parse_bookmark(since)
    if parsed is None:
        raise InvalidRequestError(f"since: {since!r} is not a bookmark")
    return parsed


class History:
    """The last ``size`` records of one kind, with a condition to wait on."""

    def __init__(self, size: int, cond: threading.Condition) -> None:
        self.records: collections.deque[Record] = collections.deque(maxlen=size)
        self.seq = 0
        self.cond = cond

    def append(self, kind: str, rid: str, blob: bytes, old: bytes | None, rev: int = 0,
               partial: bool = False, meta: tuple[int, str, bool] | None = None) -> Record:
        self.seq += 1
        record = Record(self.seq, kind, rid, blob, old, rev, partial, meta)
        self.records.append(record)
        self.cond.notify_all()
        return record

    def since(self, seq: int) -> list[Record] | None:
        """Records after ``seq``; None when some of them are no longer kept."""
        if seq >= self.seq:
            return []
        first = self.records[0].seq if self.records else self.seq + 1
        if seq + 1 < first:
            return None
        start = seq + 1 - first
        return [self.records[i] for i in range(start, len(self.records))]


Translate = Callable[[Record], list[Event]]
T = TypeVar("T")


class Stream(Generic[T]):
    """Iteration and ``with`` for anything with ``next(timeout)`` and
    ``close()``: a watch in process and a watch over the wire alike."""

    def next(self, timeout: float | None = None) -> T | None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        item = self.next()
        if item is None:
            raise StopIteration
        return item

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventStream(Stream[Event]):
    """A stream of events, one at a time."""


#: The most events one aggregated batch carries (a bootstrap of a bigger
#: kind spans several, ``bootstrapped`` closing the last).
MAX_BATCH = 10_000


class AggregatedWatch(Stream[list[Event]]):
    """A kind's watch handing over its events in batches (COSI's
    ``WatchKindAggregated``): each :meth:`next` returns every event that has
    arrived by then, at least one, oldest first, so a consumer reacting to a
    burst of changes (a bootstrap, a transaction, a busy writer) does its
    work once per batch rather than once per event. An ``error`` event ends
    its batch and the watch."""

    def __init__(self, stream: EventStream, *, max_batch: int = MAX_BATCH) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            stream.close()
            raise InvalidRequestError(f"max_batch must be a positive integer, not {max_batch!r}")
        self._stream = stream
        self._max = max_batch

    def next(self, timeout: float | None = None) -> list[Event] | None:
        """The next batch; None on timeout or once the watch has ended."""
        first = self._stream.next(timeout)
        if first is None:
            return None
        batch = [first]
        while batch[-1].kind != ERROR and len(batch) < self._max:
            event = self._stream.next(0)   # only what has already arrived
            if event is None:
                break
            batch.append(event)
        return batch

    def close(self) -> None:
        self._stream.close()


class Watch(EventStream):
    """An iterator of events, live from the moment it was created.

    Iterate it (blocking), or call :meth:`next` with a timeout. An ``error``
    event (overrun, bad bookmark) is the last event a watch yields.
    """

    def __init__(
        self,
        history: History,
        cursor: int,
        translate: Translate,
        *,
        pending: list[Event] | None = None,
    ) -> None:
        self._history = history
        self._cursor = cursor
        self._translate = translate
        self._pending: collections.deque[Event] = collections.deque(pending or ())
        self._closed = False
        self._done = False

    def close(self) -> None:
        with self._history.cond:
            self._closed = True
            self._history.cond.notify_all()

    def next(self, timeout: float | None = None) -> Event | None:
        """The next event; None on timeout or once the watch has ended.

        Records are taken under the kind's lock but decoded outside it, so
        many watchers do not hold up the writers of the kind they watch.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._pending:
            records = self._take(deadline)
            if records is None:
                return None
            for record in records:
                self._pending.extend(self._translate(record))
        event = self._pending.popleft()
        if event.kind == ERROR:
            self._done = True
            self._pending.clear()
        return event

    def _take(self, deadline: float | None) -> list[Record] | None:
        """Wait for records after the cursor and advance past them; None when
        the watch is over or the deadline passed. An overrun queues the error."""
        cond = self._history.cond
        with cond:
            while True:
                if self._closed or self._done:
                    return None
                records = self._history.since(self._cursor)
                if records is None:
                    self._pending.append(Event(ERROR, error="overrun: the watcher fell behind the "
                                               "bounded history; resync with a new watch"))
                    return []
                if records:
                    self._cursor = records[-1].seq
                    return records
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                cond.wait(remaining)


def meta_of(res: Resource) -> tuple[int, str, bool]:
    """A record's ``meta`` from the resource its blob holds."""
    md = res.metadata
    return (md.version, md.phase, not md.finalizers)


def decode(blob: bytes | None) -> Resource | None:
    return None if blob is None else unpack(blob)


def kind_translator(query: Query, bookmark: Callable[[Record], str]) -> Translate:
    """Turn records into a kind watcher's events under a label query: a
    resource that starts matching appears ``created``, one that stops
    matching ``destroyed``, and changes outside the query are dropped.

    As in COSI, the synthetic events carry the resource as it is now and no
    ``old``: to this watcher the resource is new (or gone), not changed."""

    def translate(record: Record) -> list[Event]:
        res, old = unpack(record.blob), decode(record.old)
        mark = bookmark(record)
        if not query:
            return [Event(record.kind, res, old, mark)]
        now = record.kind != DESTROYED and query.matches(res.metadata.labels)
        if record.kind == DESTROYED:
            was = query.matches(res.metadata.labels)
        else:
            was = old is not None and query.matches(old.metadata.labels)
        if record.kind == UPDATED and now and not was:
            return [Event(CREATED, res, None, mark)]
        if record.kind == UPDATED and was and not now:
            return [Event(DESTROYED, res, None, mark)]
        if now or was:
            return [Event(record.kind, res, old, mark)]
        return []

    return translate
