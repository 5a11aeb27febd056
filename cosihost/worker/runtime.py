"""The ``rt`` handle a controller's ``reconcile`` receives.

Reads come from the local cache (which includes the controller's own
writes); writes go to the supervisor, which checks them against the
declaration. The handle also checks locally, so a controller learns of a
mistake at the call that makes it, with the same error the supervisor would
send. In a controller process the writes are pipelined (:mod:`.writes`):
each is sent without waiting for its reply, and all are acknowledged before
the reconcile counts as returned (:meth:`ControllerRuntime.flush`).
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import threading
import time
from typing import Any, Callable, Sequence

from .. import wire
from ..controller import Input, Output
from ..errors import AccessDeniedError, NotFoundError
from ..resource import Resource, pack, unpack
from ..transport import Requester
from ..state.inmemory import recorded_in_transaction
from ..state.modify import modify_spec
from ..state.txn import Key, Op, Transaction, open_transaction, outside_transaction, teardown_and_destroy
from .cache import Cache
from .writes import InFlight


@dataclasses.dataclass
class Counters:
    """Runtime counters, reported to the supervisor with each heartbeat."""

    wakeups: int = 0
    reconciles: int = 0
    reads: int = 0
    writes: int = 0
    crashes: int = 0
    # QControllers only (zero for others): items reconciled, requeued on
    # request, queued now; map_input calls and the items they named; time
    # spent in reconcile and map_input.
    processed: int = 0
    requeues: int = 0
    queue_length: int = 0
    mapped_in: int = 0
    mapped_out: int = 0
    busy_ms: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class ControllerRuntime:
    """What ``reconcile(rt)`` may do. One per controller process."""

    def __init__(self, name: str, requester: Requester, cache: Cache, *,
                 inputs: Sequence[Input], outputs: Sequence[Output], in_flight: InFlight | None = None) -> None:
        self.name = name
        self._req = requester
        self._cache = cache
        #: The pipelined writes; None: each write waits for its reply.
        self._in_flight = in_flight
        self.inputs = inputs
        self.outputs = outputs
        self.counters = Counters()
        self.requeue_at: float | None = None
        self._tracking: set[tuple[str, str, str]] | None = None
        self._local = threading.local()  # an open transaction
        #: Kinds where this process's earlier lives left outputs are synced
        #: into the cache before its first cleanup (then its own writes are).
        self._owned_synced = False

    # -- declaration checks ---------------------------------------------
    # Every read and write checks the declaration: sets, not scans of the lists.
    @property
    def inputs(self) -> builtins.list[Input]:
        return self._inputs

    @inputs.setter
    def inputs(self, inputs: Sequence[Input]) -> None:
        self._inputs = builtins.list(inputs)
        self._input_kinds = frozenset((i.namespace, i.type) for i in self._inputs)

    @property
    def outputs(self) -> builtins.list[Output]:
        return self._outputs

    @outputs.setter
    def outputs(self, outputs: Sequence[Output]) -> None:
        self._outputs = builtins.list(outputs)
        self._output_types = frozenset(o.type for o in self._outputs)

    def _readable(self, namespace: str, type: str) -> None:
        try:
            if (namespace, type) in self._input_kinds or type in self._output_types:
                return
        except TypeError:  # not a name at all (unhashable): refused like any other
            pass
        raise AccessDeniedError(
            f"{self.name} cannot read {namespace}/{type}: not among its inputs or outputs")

    def _writable(self, type: str) -> None:
        try:
            allowed = type in self._output_types
        except TypeError:
            allowed = False
        if not allowed:
            raise AccessDeniedError(f"{self.name} cannot write {type}: not among its outputs")

    # -- reads -----------------------------------------------------------
    def get(self, namespace: str, type: str, id: str) -> Resource:
        self._readable(namespace, type)
        self.counters.reads += 1
        res = self._cache.get(namespace, type, id)
        if res is None:
            raise NotFoundError(f"resource {namespace}/{type}/{id} doesn't exist")
        return res

    def list(self, namespace: str, type: str, *, labels: str | Sequence[str] | None = None,
             id_regex: str | None = None) -> list[Resource]:
        self._readable(namespace, type)
        self.counters.reads += 1
        return self._cache.list(namespace, type, labels=labels, id_regex=id_regex)

    def get_uncached(self, namespace: str, type: str, id: str) -> Resource:
        """Read from the supervisor, not the cache: for a kind this
        controller reads too rarely to keep synced (still one it may read)."""
        self._readable(namespace, type)
        self.counters.reads += 1
        return unpack(self._req.call("get", namespace=namespace, type=type, id=id))

    def list_uncached(self, namespace: str, type: str, *, labels: str | Sequence[str] | None = None,
                      id_regex: str | None = None) -> builtins.list[Resource]:
        """``list`` from the supervisor, not the cache (see :meth:`get_uncached`)."""
        self._readable(namespace, type)
        self.counters.reads += 1
        blobs = self._req.call("list", namespace=namespace, type=type, id_regex=id_regex,
                               labels=list(labels) if isinstance(labels, tuple) else labels)
        return [unpack(b) for b in blobs]

    # -- writes ----------------------------------------------------------
    def _wrote(self, key: Key) -> None:
        self.counters.writes += 1
        if self._tracking is not None and any(o.type == key[1] for o in self.outputs):
            self._tracking.add(key)

    def _write(self, op: str, key: tuple[str, str, str], **args: Any) -> Any:
        namespace, type, id = key
        self._cache.ensure(namespace, type)
        reply = self._req.call(op, owner=self.name, **args)
        self._cache.record_write(namespace, type, id, reply["seq"], reply.get("resource"))
        self._wrote(key)
        return reply

    def _pipelined(self) -> InFlight | None:
        """The pipeline, unless writes wait one by one (in a harness, or
        once the supervisor throttled this controller)."""
        flight = self._in_flight
        return None if flight is None or flight.throttled else flight

    def _send(self, flight: InFlight, op: Op, *, current: Resource | None = None) -> Any:
        self._cache.ensure(op.namespace, op.type)
        result = flight.write(op, current=current)
        self._wrote(op.key)
        return result

    def flush(self, *, raise_late: bool = True) -> None:
        """Wait until every write so far is acknowledged; raise the first one
        the supervisor refused although the cache allowed it (the scheduler
        calls this when a reconcile returns, so such a refusal fails it)."""
        if self._in_flight is not None:
            self._in_flight.flush(raise_late=raise_late)

    def flushed(self, verb: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``verb(*args, **kwargs)``, then :meth:`flush`: a write that waits
        for its reply (a QController's reconcile threads write this way)."""
        result = verb(*args, **kwargs)
        self.flush()
        return result

    @recorded_in_transaction
    def create(self, resource: Resource) -> Resource:
        md = resource.metadata
        self._writable(md.type)
        flight = self._pipelined()
        if flight is not None:
            created: Resource = self._send(flight, Op.write("create", resource, owner=self.name))
            return created
        reply = self._write("create", md.key(), resource=pack(resource))
        return unpack(reply["resource"])

    @recorded_in_transaction
    def update(self, resource: Resource, *, expected_phase: str | None = "running") -> Resource:
        return self._update(resource, expected_phase)

    def _update(self, resource: Resource, expected_phase: str | None, *,
                current: Resource | None = None) -> Resource:
        md = resource.metadata
        self._writable(md.type)
        flight = self._pipelined()
        if flight is not None:
            updated: Resource = self._send(flight, Op.write("update", resource, owner=self.name,
                                                            expected_phase=expected_phase), current=current)
            return updated
        reply = self._write("update", md.key(), resource=pack(resource),
                            expected_phase=expected_phase)
        return unpack(reply["resource"])

    def modify(self, namespace: str, type: str, id: str, fn: Callable[[Any], Any], *,
               owner: str | None = None, expected_phase: str | None = "running") -> Resource:
        """Read-modify-write from the cache; on a conflict, re-read and retry.
        ``owner``, as in the state API, may only be the controller's own name:
        a controller writes as itself (the supervisor refuses anything else)."""
        if owner is not None and owner != self.name:
            raise AccessDeniedError(f"{self.name} writes only as itself, not as owner {owner!r}")
        txn = getattr(self._local, "txn", None)
        if txn is not None:
            return txn.modify(namespace, type, id, fn, expected_phase=expected_phase)  # type: ignore[no-any-return]
        self._writable(type)
        res, written = modify_spec(namespace, type, id, fn, owner=self.name, get=self.get,
                                   create=self.create, expected_phase=expected_phase,
                                   # r is the cache's copy as read, its spec replaced: what
                                   # the update is decided against, with no second read.
                                   update=lambda r: self._update(r, expected_phase, current=r),
                                   on_conflict=lambda: self._refresh(namespace, type))
        if not written and self._tracking is not None:
            self._tracking.add((namespace, type, id))
        return res

    def _refresh(self, namespace: str, type: str) -> None:
        self._cache.resync(namespace, type, "write conflict")

    @recorded_in_transaction
    def destroy(self, namespace: str, type: str, id: str) -> None:
        self._writable(type)
        flight = self._pipelined()
        if flight is not None:
            self._send(flight, Op("destroy", namespace, type, id, owner=self.name).checked())
            return
        self._write("destroy", (namespace, type, id), namespace=namespace, type=type, id=id)

    @recorded_in_transaction
    def teardown(self, namespace: str, type: str, id: str) -> bool:
        self._writable(type)
        flight = self._pipelined()
        if flight is not None:
            return bool(self._send(flight, Op("teardown", namespace, type, id, owner=self.name).checked()))
        return bool(self._write("teardown", (namespace, type, id), namespace=namespace, type=type,
                                id=id)["ready"])

    def teardown_and_destroy(self, namespace: str, type: str, id: str) -> bool:
        """Tear down and, when no finalizer holds it, destroy, in one
        transaction: True once destroyed, False while finalizers remain."""
        self._writable(type)
        outside_transaction(self._local, "teardown_and_destroy")
        return teardown_and_destroy(self.commit, self.get, namespace, type, id, owner=self.name)

    def _strong_input(self, namespace: str, type: str) -> None:
        if not any(i.namespace == namespace and i.type == type and i.kind == "strong" for i in self.inputs):
            raise AccessDeniedError(
                f"{self.name} may change finalizers only on its strong inputs, not {namespace}/{type}")

    def _finalizers(self, op: str, namespace: str, type: str, id: str, finalizers: tuple[str, ...]) -> Resource:
        self._strong_input(namespace, type)
        flight = self._pipelined()
        if flight is not None:
            changed: Resource = self._send(flight, Op(op, namespace, type, id, owner=self.name,
                                                      finalizers=tuple(finalizers)).checked())
            return changed
        reply = self._write(op, (namespace, type, id), namespace=namespace, type=type, id=id,
                            finalizers=list(finalizers))
        return unpack(reply["resource"])

    @recorded_in_transaction
    def add_finalizer(self, namespace: str, type: str, id: str, *finalizers: str) -> Resource:
        return self._finalizers("add_finalizer", namespace, type, id, finalizers)

    @recorded_in_transaction
    def remove_finalizer(self, namespace: str, type: str, id: str, *finalizers: str) -> Resource:
        return self._finalizers("remove_finalizer", namespace, type, id, finalizers)

    # -- transactions ----------------------------------------------------
    def transaction(self) -> contextlib.AbstractContextManager[Transaction]:
        """The writes inside the block go to the supervisor as one request on
        exit, applied all or none; each returns what it will have written,
        decided against this controller's cache. Afterwards the cache shows
        them all, and the controller's next round sees the whole transaction."""
        return open_transaction(self._local, read=self.cached, now=time.time, commit=self.commit,
                                owner=self.name)

    def cached(self, key: Key) -> Resource | None:
        """What the cache holds at ``key`` (a transaction's reader)."""
        self._readable(key[0], key[1])
        return self._cache.get(*key)

    def commit(self, ops: Sequence[Op]) -> None:
        """Send a transaction's operations (``transaction()`` calls it on exit)."""
        if not ops:
            return
        for op in ops:
            if op.verb in ("add_finalizer", "remove_finalizer"):
                self._strong_input(op.namespace, op.type)
            else:
                self._writable(op.type)
            self._cache.ensure(op.namespace, op.type)
        self.counters.writes += len(ops)
        reply = self._req.call("transaction", ops=wire.encode_ops(ops), results=False)
        heads = {(ns, typ): seq for ns, typ, seq in reply["heads"]}
        for ns, typ, rid, blob in reply["keys"]:
            self._cache.record_write(ns, typ, rid, heads.get((ns, typ), 0), blob)
            if self._tracking is not None and any(o.type == typ for o in self.outputs):
                self._tracking.add((ns, typ, rid))

    # -- declarations and scheduling ------------------------------------
    def update_inputs(self, inputs: Sequence[Input]) -> None:
        """Replace the declared inputs (the supervisor checks and records them)."""
        new = [Input.from_wire(i) if not isinstance(i, Input) else i for i in inputs]
        self._req.call("update_inputs", inputs=[i.to_wire() for i in new])
        dropped = {(i.namespace, i.type) for i in self.inputs} - {(i.namespace, i.type) for i in new}
        self.inputs = new
        for namespace, type in dropped:
            if not any(o.type == type for o in self.outputs):
                self._cache.drop(namespace, type)
        for i in new:
            self._cache.ensure(i.namespace, i.type)

    def start_tracking_outputs(self) -> None:
        """Remember which outputs this round touches, for cleanup_outputs."""
        self._tracking = set()

    def cleanup_outputs(self) -> None:
        """Destroy this controller's outputs that this round did not touch."""
        touched = self._tracking or set()
        self._tracking = None
        if not self._owned_synced:
            for namespace, type in self._req.call("owned_kinds", owner=self.name):
                self._cache.ensure(namespace, type)
            self._owned_synced = True
        for (namespace, type) in list(self._cache.kinds):
            if not any(o.type == type for o in self.outputs):
                continue
            for res in self._cache.list(namespace, type):
                md = res.metadata
                if md.owner == self.name and (namespace, type, md.id) not in touched:
                    if self.teardown(namespace, type, md.id):
                        self.destroy(namespace, type, md.id)

    def requeue(self, after: float = 0.0) -> None:
        """Reconcile again after ``after`` seconds even if no input changes."""
        at = time.monotonic() + max(0.0, after)
        self.requeue_at = at if self.requeue_at is None else min(self.requeue_at, at)
