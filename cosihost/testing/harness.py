"""Run ONE controller in process, against an in-memory state, in your own tests.

::

    from cosihost import InMemoryState, Resource
    from cosihost.testing import ControllerHarness

    def test_doubles():
        with ControllerHarness(Doubler, state=InMemoryState()) as h:
            h.state.create(Resource("default", "Ints.test.cosihost.dev", "one", {"value": 21}))
            h.wait_for_spec("default", "Doubles.test.cosihost.dev", "one", {"value": 42})

The controller gets the real ``rt`` (:class:`cosihost.worker.runtime.ControllerRuntime`)
with the state in place of the wire, and the real scheduling (the worker
loop's wake-up, coalescing, requeue and exponential backoff), in a
background thread that wakes on changes to the controller's inputs. The
declaration rules are the same: reads only of inputs and outputs, writes
only to outputs and as the controller (owner = its name), finalizers only on
strong inputs; anything else raises :class:`cosihost.AccessDeniedError`.

No processes, sockets or sleeps: waiting is done with deadlines
(:meth:`ControllerHarness.wait_for_spec`, :meth:`~ControllerHarness.wait_destroyed`,
:meth:`~ControllerHarness.wait_idle`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any, Callable

from .. import wire
from ..controller import INPUT_KINDS, Controller, Input, Output
from ..errors import InvalidRequestError, NotFoundError
from ..resource import Resource, pack, unpack
from ..state import InMemoryState
from ..state.events import BOOTSTRAPPED, ERROR, parse_bookmark
from ..supervisor.registry import Declaration
from ..worker.entry import controllers_of, load_module
from ..worker.schedule import scheduler_for
from ..worker.runtime import ControllerRuntime
from .process import wait_for

log = logging.getLogger("cosihost.testing")

Kind = tuple[str, str]
_MISSING = object()


def load_controller(path: str | os.PathLike[str], name: str | None = None) -> type[Controller]:
    """The Controller class in a controller module file (the kind dropped
    into the controllers folder), imported the way the supervisor's workers
    import it. ``name`` picks one by class name or controller name when the
    module defines several."""
    module = load_module(os.fspath(path))
    found = controllers_of(module)
    if name is not None:
        found = [c for c in found if name in (c.__name__, c.name)]
    if len(found) == 1:
        return found[0]
    names = ", ".join(c.__name__ for c in controllers_of(module)) or "none"
    if found:
        raise LookupError(f"{path} defines several controllers ({names}); pick one with name=")
    raise LookupError(f"{path}: no controller {name!r} (it defines: {names})")


class _StateRequester:
    """Stands in for the wire: the requests ``rt`` sends, applied to the
    state with the controller as the owner, with the same replies."""

    def __init__(self, state: InMemoryState) -> None:
        self.state = state

    def _blob(self, key: tuple[str, str, str]) -> bytes | None:
        try:
            return pack(self.state.get(*key))
        except NotFoundError:
            return None

    def call(self, op: str, owner: str = "", **args: Any) -> Any:
        s = self.state
        if op == "create":
            return {"resource": pack(s.create(unpack(args["resource"]), owner=owner)), "seq": 0}
        if op == "update":
            res = s.update(unpack(args["resource"]), owner=owner, expected_phase=args.get("expected_phase"))
            return {"resource": pack(res), "seq": 0}
        key: tuple[str, str, str] = (args["namespace"], args["type"], args["id"]) if op in (
            "destroy", "teardown", "add_finalizer", "remove_finalizer") else ("", "", "")
        if op == "destroy":
            s.destroy(*key, owner=owner)
            return {"resource": None, "seq": 0}
        if op == "teardown":
            return {"ready": s.teardown(*key, owner=owner), "resource": None, "seq": 0}
        if op in ("add_finalizer", "remove_finalizer"):
            res = getattr(s, op)(*key, *args["finalizers"])
            return {"resource": pack(res), "seq": 0}
        if op == "transaction":
            ops = wire.decode_ops(args["ops"])
            results = s.apply(ops)
            keys = sorted({o.key for o in ops})
            return {"results": results, "heads": [], "keys": [[*k, self._blob(k)] for k in keys]}
        if op == "get":
            return pack(s.get(args["namespace"], args["type"], args["id"]))
        if op == "list":
            return [pack(r) for r in s.list(args["namespace"], args["type"], labels=args.get("labels"),
                                            id_regex=args.get("id_regex"))]
        if op == "owned_kinds":
            return [list(kind) for kind in s.owned_kinds(owner)]
        if op == "update_inputs":
            for i in args["inputs"]:
                new = Input.from_wire(i)
                if new.kind not in INPUT_KINDS:
                    raise InvalidRequestError(f"input {new.type} has kind {new.kind!r}; use one of "
                                              f"{', '.join(INPUT_KINDS)}")
            return None
        raise InvalidRequestError(f"the harness does not serve {op!r}")


class _StateCache:
    """Stands in for the worker's cache: reads go straight to the state, so
    they always include the controller's own writes."""

    def __init__(self, state: InMemoryState) -> None:
        self.state = state
        self.kinds: dict[Kind, bool] = {}

    def ensure(self, namespace: str, type: str) -> None:
        self.kinds[(namespace, type)] = True

    def drop(self, namespace: str, type: str) -> None:
        self.kinds.pop((namespace, type), None)

    def get(self, namespace: str, type: str, id: str) -> Resource | None:
        self.ensure(namespace, type)
        try:
            return self.state.get(namespace, type, id)
        except NotFoundError:
            return None

    def list(self, namespace: str, type: str, *, labels: Any = None, id_regex: str | None = None) -> list[Resource]:
        self.ensure(namespace, type)
        return self.state.list(namespace, type, labels=labels, id_regex=id_regex)

    def record_write(self, *_args: Any) -> None:
        pass

    def resync(self, *_args: Any) -> None:
        pass


class ControllerHarness:
    """One controller, its reconcile loop in a background thread, and an
    in-memory state (``h.state``) the test reads and writes as a user would.

    ``controller`` is a Controller subclass or instance. ``backoff_base`` and
    ``backoff_cap`` set the retry delays after a failed reconcile (kept short
    so tests stay fast). Use it as a context manager, or call
    :meth:`start` and :meth:`stop`.
    """

    def __init__(self, controller: type[Controller] | Controller, state: InMemoryState | None = None, *,
                 name: str | None = None, backoff_base: float = 0.02, backoff_cap: float = 0.5) -> None:
        self.controller = controller() if isinstance(controller, type) else controller
        cls = type(self.controller)
        decl = cls.declaration()
        decl["name"] = name or decl["name"]
        Declaration.from_wire(decl)  # the checks the supervisor makes at registration
        self.name: str = decl["name"]
        self.state = state if state is not None else InMemoryState()
        self.errors: list[BaseException] = []
        self.rt = ControllerRuntime(self.name, _StateRequester(self.state), _StateCache(self.state),  # type: ignore[arg-type]
                                    inputs=[Input.from_wire(i) for i in decl["inputs"]],
                                    outputs=[Output.from_wire(o) for o in decl["outputs"]])
        self._loop = scheduler_for(self.controller, self.rt, backoff_base=backoff_base, backoff_cap=backoff_cap,
                                   on_error=self.errors.append)
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0           # events handed over by watchers, not yet applied
        self._busy = False          # inside reconcile
        self._seen: dict[Kind, int] = {}
        self._watches: dict[Kind, tuple[Any, threading.Thread]] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._crash: BaseException | None = None

    # -- life ------------------------------------------------------------------
    def start(self) -> "ControllerHarness":
        if self._thread is not None:
            raise RuntimeError("the harness is already running")
        self._sync_watches()  # live before the first reconcile
        self._thread = threading.Thread(target=self._run, name=f"harness {self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop (after the reconcile in progress) and the watches."""
        self._stopping.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"{self.name}: reconcile did not return within {timeout:g} s of stop()")
        for kind in list(self._watches):
            self._unwatch(kind)

    def __enter__(self) -> "ControllerHarness":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests look at --------------------------------------------------------
    @property
    def reconciles(self) -> int:
        """Reconciles that returned without an exception."""
        return self.rt.counters.reconciles

    @property
    def failures(self) -> int:
        """Reconciles that raised (each is retried with backoff)."""
        return self.rt.counters.crashes

    def get(self, namespace: str, type: str, id: str) -> Resource | None:
        """The resource, or None: a read that does not raise."""
        try:
            return self.state.get(namespace, type, id)
        except NotFoundError:
            return None

    def wait_for(self, condition: Callable[[], Any], *, timeout: float = 5.0, message: str = "condition") -> Any:
        """Poll ``condition`` until truthy, with a deadline; the timeout
        message includes the controller's last reconcile error, if any."""
        def check() -> Any:
            if self._crash is not None:
                raise RuntimeError(f"the harness loop died: {self._crash!r}") from self._crash
            return condition()
        try:
            return wait_for(check, timeout=timeout, message=message)
        except TimeoutError as exc:
            extra = f"; last reconcile error: {self.errors[-1]!r}" if self.errors else ""
            raise TimeoutError(f"{exc}{extra}") from None

    def wait_for_resource(self, namespace: str, type: str, id: str,
                          predicate: Callable[[Resource], bool] | None = None, *, timeout: float = 5.0) -> Resource:
        """Wait until the resource exists (and ``predicate(resource)`` holds)."""
        def check() -> Resource | None:
            res = self.get(namespace, type, id)
            return res if res is not None and (predicate is None or predicate(res)) else None
        found: Resource = self._wait_about(check, namespace, type, id,
                                           "to exist" if predicate is None else "to match", timeout)
        return found

    def wait_for_spec(self, namespace: str, type: str, id: str, expected: Any = _MISSING, *,
                      timeout: float = 5.0) -> Resource:
        """Wait until the resource's spec equals ``expected``, or, when
        ``expected`` is callable, until ``expected(spec)`` is true."""
        if expected is _MISSING:
            return self.wait_for_resource(namespace, type, id, timeout=timeout)
        test = expected if callable(expected) else (lambda spec: spec == expected)
        def check() -> Resource | None:
            res = self.get(namespace, type, id)
            return res if res is not None and test(res.spec) else None
        what = "to have the expected spec" if callable(expected) else f"to have spec {expected!r}"
        found: Resource = self._wait_about(check, namespace, type, id, what, timeout)
        return found

    def wait_destroyed(self, namespace: str, type: str, id: str, *, timeout: float = 5.0) -> None:
        """Wait until the resource does not exist."""
        self._wait_about(lambda: self.get(namespace, type, id) is None, namespace, type, id,
                         "to be destroyed", timeout)

    def _wait_about(self, check: Callable[[], Any], namespace: str, type: str, id: str, what: str,
                    timeout: float) -> Any:
        try:
            return self.wait_for(check, timeout=timeout, message=f"{namespace}/{type}/{id} {what}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; it is now: {self.get(namespace, type, id)!r}") from None

    def wait_idle(self, *, timeout: float = 5.0) -> None:
        """Wait until the controller has reconciled everything that changed
        so far: every input change seen and applied, nothing due, no
        reconcile running or waiting out a backoff. A requeue set for later
        does not count as pending."""
        self.wait_for(self._idle, timeout=timeout, message=f"{self.name} to be idle")

    def _idle(self) -> bool:
        loop = self._loop
        with self._lock:
            if self._busy or self._pending or loop.dirty:
                return False
        if self.rt.requeue_at is not None and self.rt.requeue_at <= time.monotonic():
            return False
        for kind in list(self._watches):
            if self._seen.get(kind, -1) < self.state.head(*kind):
                return False
        return True

    # -- the loop -------------------------------------------------------------------
    def _run(self) -> None:
        loop = self._loop
        try:
            while not self._stopping.is_set():
                if loop.due(time.monotonic()):
                    with self._lock:
                        self._busy = True
                    try:
                        loop.reconcile_once()
                    finally:
                        with self._lock:
                            self._busy = False
                    self._sync_watches()  # rt.update_inputs may have changed them
                    continue
                wake = loop.wake_at()
                timeout = None if wake == float("inf") else max(0.0, wake - time.monotonic())
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    continue
                while item is not None:
                    self._apply(item)
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
        except BaseException as exc:  # a harness bug: make the waits fail loudly
            self._crash = exc
            log.exception("harness loop of %s died", self.name)
        finally:
            loop.close()  # an async controller's event loop lives in this thread

    def _apply(self, item: tuple[Any, ...]) -> None:
        namespace, type, kind, res = item
        try:
            if kind == ERROR:
                self._loop.dirty = True  # the watcher fell behind: read everything again
            elif res is not None:
                self._loop.on_change(namespace, type, kind, wire.Change.of(kind, res, pack(res)))
        finally:
            with self._lock:
                self._pending -= 1

    # -- watches ------------------------------------------------------------------
    def _sync_watches(self) -> None:
        wanted = {(i.namespace, i.type) for i in self.rt.inputs}
        for kind in set(self._watches) - wanted:
            self._unwatch(kind)
        for kind in wanted - set(self._watches):
            watch = self.state.watch_kind(*kind, bootstrap=True)
            thread = threading.Thread(target=self._follow, args=(kind, watch), daemon=True,
                                      name=f"harness {self.name} watch {kind[0]}/{kind[1]}")
            with self._lock:
                self._watches[kind] = (watch, thread)
            thread.start()

    def _unwatch(self, kind: Kind) -> None:
        with self._lock:
            watch, thread = self._watches.pop(kind)
        watch.close()
        thread.join(5.0)
        self._seen.pop(kind, None)

    def _follow(self, kind: Kind, watch: Any) -> None:
        """Hand a kind's events to the loop: count it pending first, then
        mark the event seen, so that "idle" never misses one in flight."""
        while True:
            event = watch.next()
            if event is None:
                return  # closed
            if event.kind == ERROR:
                watch.close()
                watch = self.state.watch_kind(*kind, bootstrap=True)
                with self._lock:
                    current = self._watches.get(kind)
                    if current is not None:
                        self._watches[kind] = (watch, current[1])
                if current is None:  # unwatched meanwhile
                    watch.close()
                    return
            if event.kind != BOOTSTRAPPED:
                with self._lock:
                    self._pending += 1
                self._queue.put((kind[0], kind[1], event.kind, event.resource))
            mark = parse_bookmark(event.bookmark) if event.bookmark else None
            if mark is not None:
                self._seen[kind] = mark[1]
