"""When a controller reconciles: the part of its loop that needs no socket.

A change to an input marks the controller dirty (a ``destroy-ready`` input
only once it is torn down and free of finalizers); a dirty controller
reconciles once, however many changes came in meanwhile; a failed reconcile
is retried with exponential backoff; ``rt.requeue(after=)`` asks for another
round. The worker's loop and the test harness both drive a :class:`Scheduler`,
so a controller is scheduled the same way in a test as on a device.

``async def reconcile`` is supported: the scheduler runs the coroutine to
completion on an event loop of the controller's own (one per process, kept
across rounds, so a client session opened in one round serves the next).
Reconciles stay one at a time and ``rt`` calls stay synchronous: from a
coroutine they block that loop briefly, which is what a single-threaded
reconcile loop means anyway. An async reconcile that was never awaited
would otherwise do nothing and report success.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Any, Callable

from ..resource import PHASE_TEARING_DOWN
from ..state.events import DESTROYED
from ..wire import RECONCILE_BUCKETS, Change, Histogram

log = logging.getLogger("cosihost.worker")


class Scheduler:
    def __init__(self, controller: Any, rt: Any, *, backoff_base: float = 0.1, backoff_cap: float = 30.0,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self.controller = controller
        self.rt = rt
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.on_error = on_error
        self.dirty = True  # reconcile once at start
        self.failures = 0  # failed reconciles in a row
        self.backoff_until = 0.0
        #: How long each reconcile took (failed ones too), for the heartbeat.
        self.durations = Histogram(RECONCILE_BUCKETS)
        self._event_loop: asyncio.AbstractEventLoop | None = None

    def close(self) -> None:
        """Call the controller's shutdown hook; close the event loop an
        async controller ran on, if any."""
        close_controller(self.controller, self.rt, self._event_loop)
        self._event_loop = None

    def _reconcile(self) -> None:
        """One reconcile, returned once its writes are acknowledged: a write
        refused on arrival fails it (see :mod:`.writes`)."""
        try:
            result = self.controller.reconcile(self.rt)
            if inspect.isawaitable(result):
                if self._event_loop is None:
                    self._event_loop = asyncio.new_event_loop()
                self._event_loop.run_until_complete(result)
        except BaseException:
            self.rt.flush(raise_late=False)  # settle the cache; the reconcile failed anyway
            raise
        self.rt.flush()

    def attempts(self) -> int:
        return int(self.rt.counters.reconciles + self.rt.counters.crashes)

    def due(self, now: float) -> bool:
        if self.dirty and now >= self.backoff_until:
            return True
        return self.rt.requeue_at is not None and now >= self.rt.requeue_at

    def wake_at(self) -> float:
        """When a reconcile falls due without any new change (inf: never)."""
        at = float("inf")
        if self.dirty:
            at = self.backoff_until
        if self.rt.requeue_at is not None:
            at = min(at, self.rt.requeue_at)
        return at

    def on_change(self, namespace: str, type: str, kind: str, change: Change) -> None:
        for i in self.rt.inputs:
            if i.namespace != namespace or i.type != type:
                continue
            if i.id is not None and i.id != change.id:
                continue
            if i.kind == "destroy-ready" and not _destroy_ready(kind, change):
                continue
            if not self.dirty:
                self.rt.counters.wakeups += 1
            self.dirty = True
            return

    def reconcile_once(self) -> None:
        self.dirty = False
        self.rt.requeue_at = None
        started = time.perf_counter()
        try:
            self._reconcile()
        except Exception as exc:
            self.durations.observe(time.perf_counter() - started)
            self.rt.counters.crashes += 1
            self.failures += 1
            delay = min(self.backoff_cap, self.backoff_base * 2 ** (self.failures - 1))
            log.exception("reconcile failed (%d in a row); retrying in %.1f s", self.failures, delay)
            if self.on_error is not None:
                self.on_error(exc)
            self.dirty = True
            self.backoff_until = time.monotonic() + delay
            return
        self.durations.observe(time.perf_counter() - started)
        self.failures = 0
        self.rt.counters.reconciles += 1


def close_controller(controller: Any, rt: Any, event_loop: asyncio.AbstractEventLoop | None) -> None:
    """The controller's shutdown hook (a failure is only logged), then the
    event loop its async reconciles ran on."""
    try:
        controller.shutdown(rt)
        rt.flush()  # what the hook wrote is acknowledged before the process ends
    except Exception:
        log.exception("shutdown hook failed")
    if event_loop is not None:
        event_loop.close()


def scheduler_for(controller: Any, rt: Any, **options: Any) -> Any:
    """The scheduler a controller needs: a queue for a QController."""
    from ..qcontroller import QController
    if isinstance(controller, QController):
        from .queue import QScheduler
        return QScheduler(controller, rt, **options)
    return Scheduler(controller, rt, **options)


def _destroy_ready(kind: str, change: Change) -> bool:
    return kind != DESTROYED and change.phase == PHASE_TEARING_DOWN and change.finalizers_empty
