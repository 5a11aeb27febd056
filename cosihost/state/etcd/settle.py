"""A host's own acknowledged writes brought into its mirror, and what the
mirror knows of etcd's progress.

Why apart from the watch: a write acknowledged by etcd must be readable on
this host before its reply goes out, but its event comes back through the
watch later, after other hosts' revisions before it. So the write's keys
are handed in with their revision and applied at once when every earlier
revision is in (applied by the watch or by other local writes), else when
the watch gets there; and whoever waits for it is called back, never
blocked: the pipeline (:mod:`.pipeline`) keeps many writes in flight.

The same bookkeeping says whether the mirror is known current: ``seen``,
the highest revision etcd has named to this process in any answer, against
``applied``, the revision the mirror reflects.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from typing import Callable, Iterator

from ..events import Record
from .config import EtcdConfig

log = logging.getLogger("cosihost.etcd")

Names = tuple[str, str, str]
#: Called with the record of a settled write (None: several keys, or the watch was late).
Then = Callable[[Record | None], None]


def _no_record(then: Then) -> Then:
    """A write of several keys at one revision has no one record."""
    return lambda _record: then(None)


class Settling:
    """Mixed into :class:`~.mirror.Mirror`, which sets these up."""

    config: EtcdConfig
    _applying: threading.Condition
    _applied: int
    #: Acknowledged writes of this process waiting for the revisions before them.
    _pending: dict[int, list[tuple[Names, bytes | None]]]
    #: The latest records by revision, for writers waiting for theirs.
    _recent: dict[int, Record]
    #: Settled writes waiting for the mirror to reach their revision: (rev, order, deadline, then).
    _waiters: list[tuple[int, int, float, Then]]
    _order: Iterator[int]
    #: The highest revision etcd named to this process (see Mirror.known_current).
    _seen: int
    _seen_lock: threading.Lock
    _stop: threading.Event
    #: Called after each group of events that ends on a whole revision.
    _on_changes_done: Callable[[], None] | None

    def _apply(self, ns: str, typ: str, rid: str, blob: bytes | None, rev: int, *,
               partial: bool = False) -> Record | None:
        raise NotImplementedError

    def _note(self, rev: int) -> None:
        """etcd answered at revision ``rev``: the mirror is current only once
        it has applied that far."""
        with self._seen_lock:
            if rev > self._seen:
                self._seen = rev

    def _settle(self, written: dict[Names, bytes | None], rev: int, then: Then) -> None:
        """Hand in a write acknowledged at ``rev``: ``then(record)`` once the
        mirror holds it, here and now when every revision before it is
        applied (by the watch or by other writes of this process), so
        concurrent local writers do not wait for their own events to come
        back; else from :meth:`_defer` when the watch gets there."""
        self._note(rev)
        with self._applying:
            if rev > self._applied and written:
                self._pending[rev] = list(written.items())
                self._drain_pending()
                self._changes_done()
            if self._wait_for(rev, then, single=len(written) == 1):
                return
            record = self._recent.get(rev) if len(written) == 1 else None
        then(record)

    def _wait_for(self, rev: int, then: Then, *, single: bool) -> bool:
        """Under ``_applying``: if the mirror is not at ``rev`` yet, call
        ``then`` once it is (True); else leave it to the caller (False)."""
        if self._applied >= rev:
            return False
        deadline = time.monotonic() + self.config.timeout
        heapq.heappush(self._waiters, (rev, next(self._order), deadline, then if single else _no_record(then)))
        return True

    def _defer(self, work: Callable[[], None]) -> None:
        """Run ``work`` later, away from the lock held now (the writes' thread
        does it: see :class:`~.pipeline.Pipeline`)."""
        work()

    def _wake_waiters(self) -> None:
        """Settled writes the mirror has now reached (under ``_applying``)."""
        while self._waiters and self._waiters[0][0] <= self._applied:
            rev, _order, _deadline, then = heapq.heappop(self._waiters)
            record = self._recent.get(rev)
            self._defer(lambda then=then, record=record: then(record))  # type: ignore[misc]

    def _expire_waiters(self) -> None:
        """Give up waiting for the watch on writes older than the timeout:
        answered without their record (reads may not show them yet)."""
        now = time.monotonic()
        with self._applying:
            late = [w for w in self._waiters if w[2] <= now or self._stop.is_set()]
            if not late:
                return
            self._waiters = [w for w in self._waiters if w not in late]
            heapq.heapify(self._waiters)
            log.warning("etcd watch is behind (at %d, wrote %d)", self._applied, max(w[0] for w in late))
            for _rev, _order, _deadline, then in late:
                self._defer(lambda then=then: then(None))  # type: ignore[misc]

    def _changes_done(self) -> None:
        """Every event emitted so far ends on a whole revision (under ``_applying``)."""
        if self._on_changes_done is not None:
            self._on_changes_done()

    def _drain_pending(self) -> None:
        """Apply acknowledged writes that follow on without a gap (under
        ``_applying``); forget those the watch applied already."""
        pending = self._pending
        if pending:
            while (nxt := pending.pop(self._applied + 1, None)) is not None:
                rev = self._applied + 1
                for i, (names, blob) in enumerate(nxt):  # in key order: a kind's keys are together
                    self._apply(*names, blob, rev, partial=i + 1 < len(nxt) and nxt[i + 1][0][:2] == names[:2])
                self._applied = rev
            for rev in [r for r in pending if r <= self._applied]:
                del pending[rev]
        self._wake_waiters()
        self._applying.notify_all()
