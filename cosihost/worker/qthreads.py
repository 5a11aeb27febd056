"""Threads for a QController's concurrent reconciles.

The ``rt`` handle is not thread-safe, and cannot be made so cheaply: its
cache subscribes on the loop's SUB socket (and waits there for proof), and
its requests share one socket. So a reconcile running in a thread gets
a :class:`Marshalled` handle: each call is posted to the loop's thread,
which runs it between events (:meth:`Pool.serve`) and hands back the result
or the exception. Reads and writes keep the exact semantics of the loop's
``rt``; the price is a wait of up to one poll interval per call. A write
from a thread is not left in flight: the loop's thread waits for its reply
before handing back the result, so a refusal is raised in the reconcile
that made the write, not in another thread's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import queue
import threading
import time
from typing import Any, Callable

from ..state.txn import open_transaction

_local = threading.local()
WRITE_VERBS = frozenset({"create", "update", "modify", "destroy", "teardown", "add_finalizer", "remove_finalizer"})
#: Calls that write and, from a thread, return only once their writes are acknowledged.
WAITED = WRITE_VERBS | {"cleanup_outputs"}


@dataclasses.dataclass
class Outcome:
    """How one item's reconcile (or map_input) ended."""

    key: tuple[str, str, str, str]
    md: Any
    error: BaseException | None
    pointers: list[Any]
    busy: float


class _Call:
    __slots__ = ("fn", "args", "kwargs", "done", "result", "error")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:  # handed to the calling thread, which raises it
            self.error = exc
        self.done.set()


class Pool:
    """``size`` worker threads, started as work arrives, and the rt calls
    they post. Only the loop's thread calls ``submit``, ``serve`` and ``close``."""

    def __init__(self, size: int, run: Callable[..., Outcome]) -> None:
        self.size = size
        self.run = run
        self.busy = 0
        self._work: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._dead = False

    def idle(self) -> bool:
        return self.busy < self.size and not self._closed

    def has_news(self) -> bool:
        return not self._calls.empty() or not self._done.empty()

    def submit(self, *job: Any) -> None:
        if len(self._threads) <= self.busy:
            t = threading.Thread(target=self._worker, daemon=True, name=f"qcontroller {len(self._threads)}")
            self._threads.append(t)
            t.start()
        self.busy += 1
        self._work.put(job)

    def serve(self) -> list[Outcome]:
        """Run the rt calls posted so far; return the reconciles that ended."""
        while True:
            try:
                self._calls.get_nowait().run()
            except queue.Empty:
                break
        ended = []
        while True:
            try:
                ended.append(self._done.get_nowait())
            except queue.Empty:
                break
        self.busy -= len(ended)
        return ended

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """From a worker thread: run ``fn`` on the loop's thread and wait."""
        if self._dead:
            raise RuntimeError("the controller is stopping")
        c = _Call(fn, args, kwargs)
        self._calls.put(c)
        c.done.wait()
        if c.error is not None:
            raise c.error
        return c.result

    def close(self, timeout: float = 5.0) -> None:
        """Let the reconciles in progress end (serving their rt calls), then stop."""
        self._closed = True
        for _ in self._threads:
            self._work.put(None)
        deadline = time.monotonic() + timeout
        while any(t.is_alive() for t in self._threads) and time.monotonic() < deadline:
            self.serve()
            time.sleep(0.002)  # the threads have no socket to wake us by
        self._dead = True
        while True:  # anyone still waiting gets an error instead of a hang
            try:
                c = self._calls.get_nowait()
            except queue.Empty:
                break
            c.error = RuntimeError("the controller is stopping")
            c.done.set()

    def _worker(self) -> None:
        while True:
            job = self._work.get()
            if job is None:
                return
            self._done.put(self.run(*job))


class Marshalled:
    """The rt a threaded reconcile gets: attributes as they are, calls run
    on the loop's thread (``owner``) unless made from it."""

    def __init__(self, rt: Any, pool: Pool) -> None:
        self._rt = rt
        self._pool = pool
        self.owner = threading.get_ident()
        self._txn = threading.local()  # a transaction a reconcile thread has open

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._rt, name)
        if not callable(value) or threading.get_ident() == self.owner:
            return value
        txn = getattr(self._txn, "txn", None)
        if txn is not None and name in WRITE_VERBS:
            return getattr(txn, name)  # recorded in this thread, sent on commit
        if name == "transaction":
            return self._transaction
        if name in WAITED:  # acknowledged before the call returns: a late refusal is this thread's
            return functools.partial(self._pool.call, self._rt.flushed, value)
        return functools.partial(self._pool.call, value)

    def _transaction(self) -> Any:
        """A transaction recorded in the reconcile's thread: reads from the
        cache and the commit go through the loop's thread, like any call."""
        rt, call = self._rt, self._pool.call
        return open_transaction(self._txn, read=functools.partial(call, rt.cached),
                                now=time.time, commit=functools.partial(call, rt.commit), owner=rt.name)


def run_awaitable(result: Any, loop: asyncio.AbstractEventLoop | None) -> Any:
    """``result``, or what it resolves to when it is a coroutine (``async
    def reconcile``), run on ``loop`` or on the calling thread's own loop."""
    if not inspect.isawaitable(result):
        return result
    if loop is None:
        loop = getattr(_local, "loop", None)
        if loop is None:
            loop = _local.loop = asyncio.new_event_loop()
    return loop.run_until_complete(result)
