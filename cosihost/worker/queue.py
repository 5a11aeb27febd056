"""When a QController reconciles which item: the queue behind it.

The worker loop and the test harness drive a :class:`QScheduler` through
the same calls as a plain :class:`~cosihost.worker.schedule.Scheduler`
(``on_change``, ``due``, ``reconcile_once``, ``wake_at``, ``dirty``), so a
queue controller runs the same way in a test as on a device.

The queue holds one entry per item, deduplicated: an event for an item
already queued does not queue it twice, and moves it forward if it was
waiting out a backoff (a fresh change deserves a fresh try). An item is
never reconciled twice at once: a change that arrives while it is being
reconciled is held and queued once that reconcile ends. Each item has its
own backoff, reset by a success, so one failing item waits alone.

With ``concurrency`` > 1, reconciles run in threads, but every ``rt`` call
they make is executed by the loop's own thread (the cache and the sockets
belong to it): the loop polls every couple of milliseconds while threads
are busy. That, and the GIL, is why threads pay off only for reconciles
that wait on the outside world.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Any, Callable

from ..controller import Input
from ..qcontroller import MappedMetadata, Pointer, QController, Requeue
from ..wire import RECONCILE_BUCKETS, Change, Histogram
from .qthreads import Marshalled, Outcome, Pool, run_awaitable
from .schedule import _destroy_ready, close_controller

log = logging.getLogger("cosihost.worker")

#: (job, namespace, type, id); job "r" reconciles the item, "m" maps it.
Key = tuple[str, str, str, str]
#: How often the loop looks for rt calls and results while threads work.
POLL = 0.002
_NONE = object()


class _Entry:
    __slots__ = ("at", "why", "md")

    def __init__(self, at: float, why: str, md: MappedMetadata | None) -> None:
        self.at, self.why, self.md = at, why, md  # why: fresh, retry (failed) or requeue (asked for)


def _matches(i: Input, namespace: str, type: str, rid: str) -> bool:
    return i.namespace == namespace and i.type == type and (i.id is None or i.id == rid)


class QScheduler:
    def __init__(self, controller: QController, rt: Any, *, backoff_base: float = 0.1, backoff_cap: float = 30.0,
                 on_error: Callable[[BaseException], None] | None = None, budget: float = 0.02) -> None:
        self.controller = controller
        self.rt = rt
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.on_error = on_error
        self.budget = budget  # seconds of inline reconciles per round, so events and heartbeats keep flowing
        self._primary = list(controller.primary)
        self._mapped = list(controller.mapped)
        self._entries: dict[Key, _Entry] = {}
        self._heap: list[tuple[float, int, Key]] = []
        self._order = itertools.count()
        self._in_flight: set[Key] = set()
        self._held: dict[Key, MappedMetadata | None] = {}
        self._backoffs: dict[Key, int] = {}
        self._lock = threading.Lock()
        self._refill, self._refill_at, self._refill_failures = True, 0.0, 0
        self._event_loop: Any = None
        n = max(1, int(controller.concurrency))
        self._pool = Pool(n, self._run) if n > 1 else None
        self.proxy: Any = Marshalled(rt, self._pool) if self._pool is not None else rt
        #: How long each item's reconcile took (failed ones too), for the heartbeat.
        self.durations = Histogram(RECONCILE_BUCKETS)

    # -- the interface the loops drive ------------------------------------------
    @property
    def failures(self) -> int:
        """Items waiting out a backoff after a failure."""
        return len(self._backoffs) + (1 if self._refill_failures else 0)

    @property
    def dirty(self) -> bool:
        """Anything left to do now or after a backoff (a requeue asked for
        later does not count)."""
        with self._lock:
            return (self._refill or bool(self._in_flight)
                    or any(e.why != "requeue" for e in self._entries.values()))

    @dirty.setter
    def dirty(self, value: bool) -> None:
        if value:  # the loop lost track of events: queue every primary again
            self._refill = True

    def attempts(self) -> int:
        return int(self.rt.counters.reconciles + self.rt.counters.crashes)

    def due(self, now: float) -> bool:
        if self._pool is not None and self._pool.has_news():
            return True
        if self._refill and now >= self._refill_at:
            return True
        return self._free() and self._next_at() <= now

    def wake_at(self) -> float:
        if self._pool is not None and self._pool.busy:
            return time.monotonic() + POLL
        at = self._refill_at if self._refill else float("inf")
        return min(at, self._next_at()) if self._free() else at

    def on_change(self, namespace: str, type: str, kind: str, change: Change) -> None:
        rid = change.id
        now = time.monotonic()
        added = False
        if any(_matches(i, namespace, type, rid) for i in self._primary):
            added = self._put(("r", namespace, type, rid), None, now, "fresh")
        for i in self._mapped:
            if _matches(i, namespace, type, rid):
                if i.kind == "destroy-ready" and not _destroy_ready(kind, change):
                    break
                labels = dict(change.resource().metadata.labels)  # the one field events do not carry
                mapped = MappedMetadata(namespace, type, rid, change.phase, labels, change.finalizers_empty)
                added = self._put(("m", namespace, type, rid), mapped, now, "fresh") or added
                break
        if added:
            self.rt.counters.wakeups += 1

    def reconcile_once(self) -> None:
        if self._pool is not None:
            self.proxy.owner = threading.get_ident()
            for outcome in self._pool.serve():
                self._finish(outcome)
        now = time.monotonic()
        if self._refill and now >= self._refill_at:
            self._fill(now)
        if self._pool is not None:
            while self._pool.idle():
                taken = self._take(time.monotonic())
                if taken is None:
                    break
                self._pool.submit(*taken)
        else:
            deadline = now + self.budget
            while True:
                taken = self._take(time.monotonic())
                if taken is None:
                    break
                self._finish(self._run(*taken))
                if time.monotonic() >= deadline:
                    break
        # Items not done: queued, waiting out a backoff or a requeue, or being reconciled.
        self.rt.counters.queue_length = len(self._entries) + len(self._in_flight)

    def close(self) -> None:
        """Stop the threads, call the controller's shutdown hook, close its event loop."""
        if self._pool is not None:
            self._pool.close()
        close_controller(self.controller, self.rt, self._event_loop)
        self._event_loop = None

    # -- the queue ----------------------------------------------------------------
    def _free(self) -> bool:
        return self._pool is None or self._pool.idle()

    def _put(self, key: Key, md: MappedMetadata | None, at: float, why: str) -> bool:
        """Queue ``key`` at ``at``; True when it was not queued yet."""
        with self._lock:
            if key in self._in_flight:
                new = key not in self._held
                self._held[key] = md
                return new
            entry = self._entries.get(key)
            if entry is None:
                self._entries[key] = _Entry(at, why, md)
            else:
                if md is not None:
                    entry.md = md
                if at >= entry.at:
                    return False
                entry.at, entry.why = at, why
            heapq.heappush(self._heap, (at, next(self._order), key))
            return entry is None

    def _next_at(self) -> float:
        with self._lock:
            heap = self._heap
            while heap:
                at, _, key = heap[0]
                entry = self._entries.get(key)
                if entry is not None and entry.at == at:
                    return at
                heapq.heappop(heap)  # stale: the item moved or went
            return float("inf")

    def _take(self, now: float) -> tuple[Key, MappedMetadata | None] | None:
        if self._next_at() > now:
            return None
        with self._lock:
            _, _, key = heapq.heappop(self._heap)
            entry = self._entries.pop(key)
            self._in_flight.add(key)
            return key, entry.md

    def _fill(self, now: float) -> None:
        """Queue every primary resource (at start, and after lost events)."""
        try:
            for i in self._primary:
                for res in self.rt.list(i.namespace, i.type):
                    if i.id is None or res.metadata.id == i.id:
                        self._put(("r", i.namespace, i.type, res.metadata.id), None, now, "fresh")
            for ptr in self.controller.extra_items(self.rt):
                self._put(("r", *Pointer(*ptr)), None, now, "fresh")
        except Exception as exc:
            self._refill_failures += 1
            self.rt.counters.crashes += 1
            delay = self._delay(self._refill_failures)
            log.exception("listing the primary inputs failed; retrying in %.1f s", delay)
            self._refill_at = now + delay
            if self.on_error is not None:
                self.on_error(exc)
            return
        self._refill, self._refill_failures = False, 0
        self.rt.counters.reconciles += 1

    def _delay(self, failures: int) -> float:
        return float(min(self.backoff_cap, self.backoff_base * 2 ** (failures - 1)))

    # -- one item -------------------------------------------------------------------
    def _run(self, key: Key, md: MappedMetadata | None) -> Outcome:
        """Call the controller for one item (in the loop or in a thread)."""
        job, namespace, type, rid = key
        start = time.perf_counter()
        pointers: list[Pointer] = []
        error: BaseException | None = None
        try:
            if job == "r":
                self._await(self.controller.reconcile(self.proxy, Pointer(namespace, type, rid)))
            else:
                assert md is not None  # a map job always carries the changed resource's metadata
                pointers = [Pointer(*p) for p in self._await(self.controller.map_input(self.proxy, md)) or ()]
                stray = [p for p in pointers if not any(i.namespace == p.namespace and i.type == p.type
                                                         for i in self._primary)]
                if stray:
                    raise ValueError(f"map_input returned {stray[0]}, not an item of a primary input")
            if self._pool is None:  # (in threads, each write waits for its reply: see qthreads)
                self.rt.flush()  # acknowledged before the item's reconcile ends; refused late: it failed
        except Exception as exc:
            error = exc
            if self._pool is None:
                self.rt.flush(raise_late=False)
        return Outcome(key, md, error, pointers, time.perf_counter() - start)

    def _await(self, result: Any) -> Any:
        if self._pool is not None:
            return run_awaitable(result, None)
        if self._event_loop is None and hasattr(result, "__await__"):
            import asyncio
            self._event_loop = asyncio.new_event_loop()
        return run_awaitable(result, self._event_loop)

    def _finish(self, out: Outcome) -> None:
        c = self.rt.counters
        key, now = out.key, time.monotonic()
        c.busy_ms += int(out.busy * 1000)
        if key[0] == "r":
            self.durations.observe(out.busy)
            c.processed += 1
        with self._lock:
            self._in_flight.discard(key)
        error = out.error
        if error is None:
            self._backoffs.pop(key, None)
            c.reconciles += 1
            if key[0] == "m":
                c.mapped_in += 1
                c.mapped_out += len(out.pointers)
                for p in out.pointers:
                    self._put(("r", *p), None, now, "fresh")
        elif isinstance(error, Requeue):
            c.requeues += 1
            if error.error is None:
                c.reconciles += 1
            else:
                self._failed(error.error, key, error.after)
            self._put(key, out.md, now + error.after, "requeue" if error.error is None else "retry")
        else:
            failures = self._backoffs[key] = self._backoffs.get(key, 0) + 1
            delay = self._delay(failures)
            self._failed(error, key, delay)
            self._put(key, out.md, now + delay, "retry")
        with self._lock:
            held = self._held.pop(key, _NONE)
        if held is not _NONE:
            self._put(key, held, now, "fresh")  # type: ignore[arg-type]

    def _failed(self, error: BaseException, key: Key, delay: float) -> None:
        self.rt.counters.crashes += 1
        job = "reconcile" if key[0] == "r" else "map_input"
        log.error("%s of %s/%s/%s failed (%d in a row); retrying in %.2f s", job, *key[1:],
                  self._backoffs.get(key, 1), delay, exc_info=error)
        if self.on_error is not None:
            self.on_error(error)

