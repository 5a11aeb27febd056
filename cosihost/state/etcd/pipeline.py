"""Writes to etcd in flight together: compare-and-swap transactions sent as
gRPC futures on one channel, each carried on by one thread when etcd answers.

Why: a write to etcd waits a network round trip and etcd's fsync. A thread
per waiting write (the supervisor's pool did that) caps the writes in
flight at the pool's size and costs two thread switches per write. Here a
write is a small state machine: decided on the mirror where the caller
stands, sent as a ``Txn`` future, and carried on as etcd answers: settled
into the mirror, decided again from the values a lost race returned, or
finished. Answers are handed back in the order etcd gives them.

Threads: each step runs where its cause arrives: the first decision in
the caller's thread, the next ones on gRPC's thread as etcd answers; none
blocks. The pipeline's own thread only finishes writes the watch had to
bring into the mirror (handed over from under the mirror's lock) and
gives up on those it brought too late.

Order: the writes touching one key run one at a time, in the order they
were submitted; writes to different keys overlap freely. Each write joins
the lane (a FIFO) of every key it touches at once, under one lock, and
starts when it is first in all of them; so lanes agree on the submission
order and the oldest write can always go.

Reads: a write decided on a mirror that is :meth:`~.mirror.Mirror.known_current`
is final when it changes nothing (a no-op) or the rules refuse it: no
``Range``. On a mirror that may lag, it asks etcd first (one ``Range``, or
one read-only ``Txn`` for several keys) and decides on that. A write that
changes something never needs a read: the ``Txn`` compares every key on the
revision it was decided on and returns the current values when it loses.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading
import time
from typing import Any, Callable, Sequence

from ...errors import ConflictError, CosiError, NotFoundError, UnavailableError
from ...resource import pack
from ..events import Record
from ..txn import KEEP, Key, Op, decide, play, result_of

log = logging.getLogger("cosihost.etcd")

#: Compare-and-swap rounds one write may lose to other writers.
ATTEMPTS = 16
#: How often the pipeline's thread looks for writes the watch is late with (s).
TICK = 0.25
Reads = dict[Key, tuple["bytes | None", int]]


@dataclasses.dataclass
class Outcome:
    """How a submitted write ended: the verbs' results, what its last
    compare-and-swap wrote (key: packed resource, None for a delete), the
    mirror's record of a one-key write; or the error."""

    results: list[Any] = dataclasses.field(default_factory=list)
    written: dict[Key, bytes | None] = dataclasses.field(default_factory=dict)
    record: Record | None = None
    error: BaseException | None = None


@dataclasses.dataclass(eq=False)
class _Task:
    ops: Sequence[Op]
    done: Callable[[Outcome], None]
    keys: list[Key]
    reads: Reads = dataclasses.field(default_factory=dict)
    fresh: bool = False
    attempts: int = 0
    results: list[Any] = dataclasses.field(default_factory=list)
    blobs: dict[Key, bytes | None] = dataclasses.field(default_factory=dict)
    finished: bool = False
    #: The thread that waits for this write and may make its calls itself.
    waiter: int | None = None


def _idle() -> None:
    pass


class Pipeline:
    """The writes of one :class:`~.state.EtcdState` in flight. ``state``
    gives the mirror, the connection and the transaction's shape."""

    def __init__(self, state: Any) -> None:
        self._st = state
        self._lock = threading.Lock()
        self._lanes: dict[Key, collections.deque[_Task]] = {}
        self._closed = False
        self._ready = threading.local()
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="cosihost-etcd-writes", daemon=True)
        self._thread.start()

    # -- lanes ---------------------------------------------------------------------
    def submit(self, ops: Sequence[Op], done: Callable[[Outcome], None], *, waiting: bool = False) -> None:
        """Start the write (now, or after the earlier writes to its keys);
        ``done(outcome)`` runs on the thread that finished it (gRPC's or the
        pipeline's), or here when the write ends at once. It must not block.
        ``waiting``: this thread waits for the write anyway, so while the
        write's steps run here its calls are made here, blocking (a thread
        switch less per call), as long as it is first in its lanes."""
        task = _Task(ops, done, sorted({op.key for op in ops}), waiter=threading.get_ident() if waiting else None)
        with self._lock:
            if self._closed:
                raise UnavailableError("etcd: connection closed")
            ready = True
            for key in task.keys:
                lane = self._lanes.setdefault(key, collections.deque())
                lane.append(task)
                ready = ready and lane[0] is task
        if ready:
            self._go([task])

    def _leave(self, task: _Task) -> list[_Task]:
        """Take a finished write out of its lanes: the writes now free to start."""
        with self._lock:
            heads = []
            for key in task.keys:
                lane = self._lanes[key]
                lane.popleft()
                if lane:
                    heads.append(lane[0])
                else:
                    del self._lanes[key]
            return [t for t in dict.fromkeys(heads) if all(self._lanes[k][0] is t for k in t.keys)]

    def _finish(self, task: _Task, outcome: Outcome) -> None:
        if task.finished:
            return
        task.finished = True
        try:
            task.done(outcome)
        except Exception:  # the caller's bug must not stop the writes behind it
            log.exception("etcd write callback failed")
        self._go(self._leave(task))

    def _go(self, tasks: list[_Task]) -> None:
        """Start writes now free to go, one after the other: a write that
        ends at once frees the next, which is queued here, not recursed
        into (a lane of a thousand no-ops must not overflow the stack)."""
        waiting = getattr(self._ready, "tasks", None)
        if waiting is not None:  # a _go further up this thread's stack starts them
            waiting.extend(tasks)
            return
        self._ready.tasks = waiting = collections.deque(tasks)
        try:
            while waiting:
                self._start(waiting.popleft())
        finally:
            self._ready.tasks = None

    def _fail(self, task: _Task, error: BaseException) -> None:
        self._finish(task, Outcome(error=error))

    # -- the write's steps ---------------------------------------------------------
    def _start(self, task: _Task) -> None:
        """Decide on the mirror as it is now."""
        try:
            task.reads = {key: self._st._mirrored(key) for key in task.keys}
            task.fresh = False
            self._decide(task)
        except Exception as exc:
            self._fail(task, exc)

    def _decide(self, task: _Task) -> None:
        final = task.fresh or self._st.known_current()
        try:
            results, changes = self._play(task)
        except CosiError as exc:
            if final or not isinstance(exc, (ConflictError, NotFoundError)):  # others: the request itself
                self._fail(task, exc)
            else:
                self._read(task)
            return
        if not changes:
            if final:
                self._finish(task, Outcome(results))
            else:
                self._read(task)
            return
        if task.attempts >= ATTEMPTS:
            self._fail(task, ConflictError(f"write of {len(task.ops)} operations lost {ATTEMPTS} times to "
                                           "other writers; try again"))
            return
        task.attempts += 1
        task.results = results
        task.blobs = {key: None if res is None else pack(res) for key, res in changes.items()}
        request = self._st._txn_request(task.reads, task.blobs)
        self._send(task, "Txn", request, self._swapped)

    def _play(self, task: _Task) -> tuple[list[Any], dict[Key, Any]]:
        now = self._st._clock()
        current = {key: self._st._decoded(blob) for key, (blob, _rev) in task.reads.items()}
        if len(task.ops) > 1:
            return play(task.ops, current.__getitem__, now)
        op = task.ops[0]  # alone: its errors are worded as for the verb, not as a transaction's
        out = decide(op, current[op.key], now)
        if out is KEEP:
            return [result_of(op, current[op.key])], {}
        return [result_of(op, out)], {op.key: out}

    def _read(self, task: _Task) -> None:
        """Ask etcd for the keys' values, then decide on those."""
        m = self._st._m
        ranges = [m.RangeRequest(key=self._st._key(key)) for key in task.keys]
        if len(ranges) == 1:
            self._send(task, "Range", ranges[0], self._read_one)
        else:
            request = m.TxnRequest(success=[m.RequestOp(request_range=r) for r in ranges])
            self._send(task, "Txn", request, self._read_many)

    def _read_one(self, task: _Task, resp: Any, _maybe: bool) -> None:
        self._st._note(resp.header.revision)
        self._fresh(task, [resp.kvs])

    def _read_many(self, task: _Task, resp: Any, _maybe: bool) -> None:
        self._st._note(resp.header.revision)
        self._fresh(task, [r.response_range.kvs for r in resp.responses])

    def _fresh(self, task: _Task, found: list[Any]) -> None:
        task.reads = {key: (kvs[0].value, kvs[0].mod_revision) if kvs else (None, 0)
                      for key, kvs in zip(task.keys, found)}
        task.fresh = True
        self._decide(task)

    def _swapped(self, task: _Task, resp: Any, maybe_applied: bool) -> None:
        """etcd answered the compare-and-swap."""
        if resp.succeeded:
            self._settle(task, resp.header.revision)
            return
        self._st._note(resp.header.revision)
        found = [r.response_range.kvs for r in resp.responses]
        now = {key: kvs[0].value if kvs else None for key, kvs in zip(task.keys, found)}
        if maybe_applied and all(now.get(key) == blob for key, blob in task.blobs.items()):
            # An attempt whose answer was lost applied it: settle once the watch is there.
            revs = [kvs[0].mod_revision for kvs in found if kvs]
            self._settle(task, max(revs) if revs and all(task.blobs.values()) else resp.header.revision,
                         known=False)
            return
        if maybe_applied:
            self._fail(task, self._st._unknown(task.keys))
            return
        self._fresh(task, found)

    def _settle(self, task: _Task, rev: int, *, known: bool = True) -> None:
        """Finish once the mirror holds the write (``known``: handed in as
        applied at ``rev``; else waited for from the watch)."""
        def then(record: Record | None) -> None:
            self._finish(task, Outcome(task.results, task.blobs, record))

        if known:
            self._st._settle(task.blobs, rev, then)
            return
        with self._st._applying:
            later = self._st._wait_for(rev, then, single=len(task.blobs) == 1)
        if not later:
            then(None)

    # -- threads -----------------------------------------------------------------------
    def _send(self, task: _Task, method: str, request: Any, step: Callable[[_Task, Any, bool], None]) -> None:
        """Call etcd; ``step`` carries the write on with the answer."""
        then = self._later(step, task)
        if task.waiter != threading.get_ident():
            self._st._conn.submit("KV", method, request, then)
            return
        try:
            resp, maybe_applied = self._st._conn.call("KV", method, request)
        except Exception as exc:
            then(None, False, exc)
            return
        then(resp, maybe_applied, None)

    def _later(self, step: Callable[[_Task, Any, bool], None], task: _Task) -> Any:
        """A connection callback that runs ``step`` where etcd's answer
        arrives (gRPC's thread): nothing on the way blocks, and a thread
        switch less per write is measurable."""
        def run(resp: Any, maybe_applied: bool, error: BaseException | None) -> None:
            if error is not None:
                self._fail(task, error)
                return
            try:
                step(task, resp, maybe_applied)
            except Exception as exc:
                self._fail(task, exc)

        return run

    def defer(self, work: Callable[[], None]) -> None:
        """Run ``work`` on the writes' own thread (what the watch hands over
        while holding the mirror's lock)."""
        self._queue.put(work)

    def _run(self) -> None:
        checked = time.monotonic()
        while True:
            try:
                work = self._queue.get(timeout=TICK)
            except queue.Empty:
                work = _idle
            if work is None:
                return
            try:
                work()
                if time.monotonic() - checked >= TICK:
                    checked = time.monotonic()
                    self._st._expire_waiters()
            except Exception:  # never stop carrying the writes on
                log.exception("etcd write step failed")

    def close(self) -> None:
        """Fail every write not finished (the connection is gone)."""
        with self._lock:
            self._closed = True
            tasks = list(dict.fromkeys(t for lane in self._lanes.values() for t in lane))
        self._queue.put(None)
        self._thread.join(timeout=5)
        for task in tasks:
            if not task.finished:
                task.finished = True
                try:
                    task.done(Outcome(error=UnavailableError("etcd: connection closed")))
                except Exception:
                    log.exception("etcd write callback failed")
