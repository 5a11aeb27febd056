"""Watches of a state, and the bookmarks and cursors they resume from.

A watch starts from a kind's position taken under its lock (with the
current item, or a bootstrap of every item, or the changes after a
bookmark) and then follows the kind's history. Bookmarks name such a
position in one epoch of the state; :class:`~.etcd.mirror.Mirror` overrides
how they are made and resumed. This is the read side that follows changes,
kept apart from the writes that make them.
"""

from __future__ import annotations

import builtins
from typing import Any, Callable, Iterable, Sequence

from ..errors import InvalidRequestError
from ..resource import Resource, unpack
from ..selectors import parse_query
from .arguments import _check_kind
from .collection import Collection, Kinds
from .events import (BOOTSTRAPPED, CREATED, DESTROYED, ERROR, MAX_BATCH, AggregatedWatch, Event, Record, Watch,
                     decode, kind_translator, make_bookmark, since_bookmark)
from .watchfor import watch_for


class Watches(Kinds):
    """watch, watch_kind, watch_kind_aggregated, watch_for; snapshot_marked,
    position and resume for watchers elsewhere."""

    #: Names this life of the state in its bookmarks (set by the constructor).
    epoch: str

    def _mark_record(self, record: Record) -> str:
        """The bookmark that resumes a watch right after ``record``."""
        return make_bookmark(self.epoch, record.seq)

    def _mark_cursor(self, coll: Collection | None, seq: int) -> str:
        """The bookmark of a kind's position ``seq`` (taken under its lock;
        ``coll`` None: a kind never touched)."""
        return make_bookmark(self.epoch, seq)

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
