"""The state verbs: reading and writing resources on a caller's behalf.

Each verb checks the caller against its declaration (:mod:`.access`) before
it touches the state, then writes either at once on the loop or, for a
namespace kept elsewhere (etcd), off it: in flight with the backend's own
asynchronous write where it has one, else on the host's pool. The reply
names the record the write produced, so the writer can tell its own change
in the events. A mixin of :class:`~.api.Api`, apart from the request entry
point so that each file holds one concern.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from .. import wire
from ..errors import InvalidRequestError, NotFoundError
from ..resource import Resource, pack, received
from ..state.txn import Op
from . import access
from .access import Caller
from .verbs import Deferred, Respond, Verbs, key_of, kind_of


def _resource(args: dict[str, Any]) -> Resource:
    """The resource of a write, decoded once: the state takes it as it is."""
    blob = args["resource"]
    if not isinstance(blob, bytes):
        raise InvalidRequestError("resource must be a packed resource (bin)")
    try:
        return received(blob)
    except Exception:
        raise InvalidRequestError("resource is not a packed resource") from None


class StateVerbs(Verbs):
    """get, list, create, update, destroy, teardown, finalizers, transaction."""

    def _write_result(self, res: Resource | None) -> dict[str, Any]:
        record, self.last_record = self.last_record, None
        if record is not None:
            return {"resource": record.blob if res is not None else None, "seq": record.seq}
        return {"resource": None if res is None else pack(res), "seq": 0}

    def op_get(self, caller: Caller, args: dict[str, Any], _r: Any) -> bytes:
        ns, typ, rid = key_of(args)
        access.check_read(caller, ns, typ)
        return pack(self.state.get(ns, typ, rid))

    def op_list(self, caller: Caller, args: dict[str, Any], _r: Any) -> list[bytes]:
        ns, typ = kind_of(args)
        access.check_read(caller, ns, typ)
        items = self.state.list(ns, typ, labels=args.get("labels"), id_regex=args.get("id_regex"))
        return [pack(r) for r in items]

    def _write(self, namespace: str, later: Callable[[], Respond],
               do: Callable[[], tuple[Resource | None, dict[str, Any]]],
               op: Callable[[], Op] | None = None) -> dict[str, Any]:
        """Apply a write now, or (to a namespace kept elsewhere) off the loop,
        answering later: the reply names the record the write produced.
        ``op``: the write as an operation, for a backend that takes it in
        flight (etcd), with no thread waiting for it."""
        if not self.state.remote(namespace):
            self.last_record = None
            res, extra = do()
            return {**self._write_result(res), **extra}
        if op is not None:
            the_op = op()
            self._in_flight([the_op], later, lambda out: self._verb_result(the_op, out))

        def work() -> dict[str, Any]:
            res, extra = do()
            record = self.state.last_written(namespace)
            blob = None if res is None else record.blob if record is not None else pack(res)
            return {"resource": blob, "seq": record.seq if record is not None else 0, **extra}

        written: dict[str, Any] = self._off_loop(namespace, later, work)
        return written

    def _in_flight(self, ops: list[Op], later: Callable[[], Respond], shape: Callable[[Any], Any]) -> None:
        """Hand ``ops`` to their backend's asynchronous write, if it has one
        (returns if not): the reply, ``shape(outcome)``, is sent when it is done."""
        backends = {id(b): b for b in (self.state.backend(op.namespace) for op in ops)}
        submit = getattr(next(iter(backends.values())), "submit", None) if len(backends) == 1 else None
        if submit is None:
            return
        self.host.pipeline(lambda answer: submit(ops, lambda out: answer(out.error, lambda: shape(out))), later())
        raise Deferred

    def _verb_result(self, op: Op, out: Any) -> dict[str, Any]:
        """The reply to one verb written in flight, as ``_write`` gives it."""
        record, result = out.record, out.results[0]
        seq = record.seq if record is not None else 0
        if op.verb == "destroy":
            return {"resource": None, "seq": seq}
        if op.verb == "teardown":
            blob = record.blob if record is not None else self._blob_or_none(op.key)
            return {"resource": blob, "seq": seq, "ready": result}
        return {"resource": record.blob if record is not None else pack(result), "seq": seq}

    def op_create(self, caller: Caller, args: dict[str, Any], later: Any) -> dict[str, Any]:
        res = _resource(args)
        owner = access.effective_owner(caller, args.get("owner"))
        access.check_write(caller, self.host.registry, res.metadata.namespace, res.metadata.type)
        return self._write(res.metadata.namespace, later, lambda: (self.state.create(res, owner=owner), {}),
                           lambda: Op.write("create", res, owner=owner))

    def op_update(self, caller: Caller, args: dict[str, Any], later: Any) -> dict[str, Any]:
        res = _resource(args)
        owner = access.effective_owner(caller, args.get("owner"))
        access.check_write(caller, self.host.registry, res.metadata.namespace, res.metadata.type)
        phase = args.get("expected_phase", "running")
        return self._write(res.metadata.namespace, later, lambda: (
            self.state.update(res, owner=owner, expected_phase=phase), {}),
            lambda: Op.write("update", res, owner=owner, expected_phase=phase))

    def op_destroy(self, caller: Caller, args: dict[str, Any], later: Any) -> dict[str, Any]:
        ns, typ, rid = key_of(args)
        owner = access.effective_owner(caller, args.get("owner"))
        access.check_write(caller, self.host.registry, ns, typ)
        def do() -> tuple[Resource | None, dict[str, Any]]:
            self.state.destroy(ns, typ, rid, owner=owner)
            return None, {}

        return self._write(ns, later, do, lambda: Op("destroy", ns, typ, rid, owner=owner))

    def op_teardown(self, caller: Caller, args: dict[str, Any], later: Any) -> dict[str, Any]:
        ns, typ, rid = key_of(args)
        owner = access.effective_owner(caller, args.get("owner"))
        access.check_write(caller, self.host.registry, ns, typ)

        def do() -> tuple[Resource | None, dict[str, Any]]:
            ready = self.state.teardown(ns, typ, rid, owner=owner)
            return self.state.get(ns, typ, rid), {"ready": ready}

        return self._write(ns, later, do, lambda: Op("teardown", ns, typ, rid, owner=owner))

    def _finalizers(self, caller: Caller, args: dict[str, Any], add: bool,
                    later: Callable[[], Respond]) -> dict[str, Any]:
        ns, typ, rid = key_of(args)
        fins = args["finalizers"]
        if not isinstance(fins, list) or not all(isinstance(f, str) and f for f in fins):
            raise InvalidRequestError("finalizers must be a list of non-empty strings")
        # The rules first, so that a caller learns nothing about a kind it may not touch.
        access.check_finalizers(caller, self.host.registry, ns, typ,
                                lambda: self.state.get(ns, typ, rid).metadata.owner)
        verb = self.state.add_finalizer if add else self.state.remove_finalizer
        return self._write(ns, later, lambda: (verb(ns, typ, rid, *fins), {}),
                           lambda: Op("add_finalizer" if add else "remove_finalizer", ns, typ, rid,
                                      finalizers=tuple(fins)))

    def op_add_finalizer(self, caller: Caller, args: dict[str, Any], later: Any) -> dict[str, Any]:
        return self._finalizers(caller, args, True, later)

    def op_remove_finalizer(self, caller: Caller, args: dict[str, Any], later: Any) -> dict[str, Any]:
        return self._finalizers(caller, args, False, later)

    def op_transaction(self, caller: Caller, args: dict[str, Any], later: Any) -> Any:
        """Several writes applied together, each checked as its own verb would be."""
        ops = [self._authorized(caller, op) for op in wire.decode_ops(args["ops"])]
        if not ops:
            return {"results": [], "heads": [], "keys": []}
        kinds = sorted({(op.namespace, op.type) for op in ops})

        want_results = args.get("results", True) is not False

        def reply(results: list[Any], written: dict[tuple[str, str, str], bytes | None]) -> dict[str, Any]:
            keys = sorted({op.key for op in ops})
            return {"results": [_txn_result(r) for r in results] if want_results else None,
                    "heads": [[ns, typ, self.state.head(ns, typ)] for ns, typ in kinds],
                    "keys": [[*key, written[key] if key in written else self._blob_or_none(key)]
                             for key in keys]}

        def work() -> dict[str, Any]:
            written: dict[tuple[str, str, str], bytes | None] = {}
            return reply(self.state.apply(ops, written=written), written)

        if self.state.remote(ops[0].namespace):
            self._in_flight(ops, later, lambda out: reply(out.results, out.written))
        return self._off_loop(ops[0].namespace, later, work)

    def _authorized(self, caller: Caller, op: Op) -> Op:
        if op.verb in ("add_finalizer", "remove_finalizer"):
            access.check_finalizers(caller, self.host.registry, op.namespace, op.type,
                                    lambda: self._owner_or_none(op))
            return op
        owner = access.effective_owner(caller, op.owner or None)
        access.check_write(caller, self.host.registry, op.namespace, op.type)
        return dataclasses.replace(op, owner=owner)

    def _blob_or_none(self, key: tuple[str, str, str]) -> bytes | None:
        """What a key holds after a transaction, for the writer's cache."""
        try:
            return pack(self.state.get(*key))
        except NotFoundError:
            return None

    def _owner_or_none(self, op: Op) -> str:
        """The stored owner; "" when the transaction itself creates the resource."""
        try:
            return self.state.get(op.namespace, op.type, op.id).metadata.owner
        except NotFoundError:
            return ""

def _txn_result(result: Any) -> Any:
    """A transaction verb's result on the wire: a packed resource, a bool or None."""
    return pack(result) if isinstance(result, Resource) else result
