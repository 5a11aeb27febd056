"""Requests in, replies out: the supervisor's request handling.

Each frame is decoded strictly, its caller identified from the token, the
request checked against the caller's declaration and then applied to the
state. Whatever a peer sends, the answer is a reply (an error reply for
anything wrong) and never an exception escaping into the main loop. Write
replies are remembered by request id, so a retried write (Lazy Pirate) gets
the first answer instead of being applied twice; a retry of a deferred write
(restart, reload) that is still running waits for the same answer. A request
id is remembered with a digest of its frame: the same id on a different
request is refused rather than answered with another request's reply.
Replies are remembered per caller, and a controller's writes that run off
the loop run in the order they came (:mod:`.replies`): a controller keeps
several writes in flight (:mod:`cosihost.pipeline`).
When metrics are served, each answer is counted by verb and result with its
latency (:class:`~.metrics.RequestStats`, plain increments on this thread).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import secrets
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .. import wire
from ..errors import AccessDeniedError, CosiError, InvalidRequestError, NotFoundError, OverrunError, ThrottledError
from ..resource import Resource, check_name, pack, received
from ..state.router import NamespaceRouter
from ..state.events import Record
from ..state.txn import Op
from ..wire import Reply, Request
from . import access, local_access
from .access import ADMIN, USER, Caller
from .registry import Registry
from .remote import Answer
from .remote_access import RemotePeer
from .replies import InOrder, ReplyCache
from .status import STATUS_NAMESPACE, STATUS_TYPE

if TYPE_CHECKING:
    from .metrics import RequestStats

#: The result counted for a retry answered from the reply cache.
REPLAYED = "replayed"

log = logging.getLogger("cosihost.supervisor")

WRITES = frozenset({"create", "update", "destroy", "teardown", "add_finalizer", "remove_finalizer", "transaction",
                    "register", "update_inputs", "restart", "reload"})
REPLY_CACHE = 4096
#: Writes a controller's write rate limit counts.
LIMITED = frozenset({"create", "update", "destroy", "teardown", "add_finalizer", "remove_finalizer", "transaction"})

#: Sends the reply of a deferred request (restart, reload) when it is ready.
Respond = Callable[[Reply], None]


class Host(Protocol):
    """What the API needs from the supervisor beyond the state."""

    registry: Registry
    ready: bool
    #: Where metrics are served (HOST:PORT), or None.
    metrics_address: str | None

    def caller(self, token: str) -> Caller | None: ...
    def register(self, args: dict[str, Any]) -> dict[str, Any]: ...
    def heartbeat(self, caller: Caller, args: dict[str, Any]) -> None: ...
    def throttle(self, caller: Caller, writes: int) -> float: ...
    def write_limited(self, name: str) -> bool: ...
    def update_inputs(self, caller: Caller, inputs: Any) -> None: ...
    def restart(self, name: str, respond: Respond) -> None: ...
    def reload(self, respond: Respond) -> None: ...
    def offload(self, work: Callable[[], Any], respond: Respond) -> None: ...
    def pipeline(self, start: Callable[[Answer], None], respond: Respond) -> None: ...
    def controllers(self) -> list[bytes]: ...
    def summary(self) -> str: ...


class Deferred(Exception):
    """Raised by a handler whose reply will come later through ``respond``."""


def _names(args: dict[str, Any]) -> tuple[str, str, str]:
    ns, typ, rid = args["namespace"], args["type"], args["id"]
    check_name("namespace", ns)
    check_name("type", typ)
    check_name("id", rid)
    return ns, typ, rid


def _kind(args: dict[str, Any]) -> tuple[str, str]:
    check_name("namespace", args["namespace"])
    check_name("type", args["type"])
    return args["namespace"], args["type"]


def _resource(args: dict[str, Any]) -> Resource:
    """The resource of a write, decoded once: the state takes it as it is."""
    blob = args["resource"]
    if not isinstance(blob, bytes):
        raise InvalidRequestError("resource must be a packed resource (bin)")
    try:
        return received(blob)
    except Exception:
        raise InvalidRequestError("resource is not a packed resource") from None


class SnapshotPages:
    """Snapshots too big for one reply, held (as references to the stored
    blobs, taken at one sequence number) until their reader has paged
    through them, for a minute at most."""

    TTL = 60.0
    MOST = 64

    def __init__(self) -> None:
        self._open: collections.OrderedDict[str, tuple[Caller, list[Any], float]] = collections.OrderedDict()

    def start(self, caller: Caller, items: list[Any]) -> dict[str, Any]:
        first, rest = _page(items)
        if not rest:
            return {"items": first, "next": None}
        now = time.monotonic()
        for cursor, (_c, _items, expires) in list(self._open.items()):
            if expires < now or len(self._open) >= self.MOST:
                del self._open[cursor]
        cursor = secrets.token_hex(8)
        self._open[cursor] = (caller, rest, now + self.TTL)
        return {"items": first, "next": cursor}

    def page(self, caller: Caller, cursor: str) -> dict[str, Any]:
        entry = self._open.pop(cursor, None)
        if entry is None or entry[0] != caller or entry[2] < time.monotonic():
            raise NotFoundError("no such snapshot (expired or not yours): take a new one")
        items, rest = _page(entry[1])
        if not rest:
            return {"items": items, "next": None}
        self._open[cursor] = (caller, rest, entry[2])
        return {"items": items, "next": cursor}


def _page(items: list[Any]) -> tuple[list[Any], list[Any]]:
    size = 0
    for n, (rid, blob) in enumerate(items):
        size += len(blob) + len(rid) + 8
        if size > wire.SNAPSHOT_PAGE_BYTES and n:
            return [list(i) for i in items[:n]], items[n:]
    return [list(i) for i in items], []


class Api:
    def __init__(self, state: NamespaceRouter, host: Host, *, admin_token: str) -> None:
        self.state = state
        self.host = host
        self.admin_token = admin_token
        self.last_record: Record | None = None
        self.replayed = 0
        self._snapshots = SnapshotPages()
        #: Counts requests for the metrics when they are served (None: not counted).
        self.stats: RequestStats | None = None
        #: (token, rid) -> (frame digest, encoded reply) of answered writes.
        self._replies = ReplyCache()
        #: Off-loop writes of controllers, each controller's in the order they came.
        self._in_order = InOrder(lambda work, respond: self.host.offload(work, respond))
        #: The controller whose request is being handled (its token), or None.
        self._controller: str | None = None
        #: Whether the request just answered came from a peer that takes
        #: several replies in one message (``Request.batch``).
        self.batched = False
        #: (token, rid) -> (frame digest, responders) of deferred writes not answered yet.
        self._inflight: dict[tuple[str, str], tuple[bytes, list[Respond]]] = {}

    def saw(self, namespace: str, type: str, record: Record) -> None:
        """State hook: remember the record a write just produced."""
        self.last_record = record

    # -- entry -----------------------------------------------------------
    def handle(self, frame: bytes, respond_later: Callable[[str], Respond], *,
               remote: RemotePeer | None = None, reader: str | None = None) -> bytes | None:
        """Answer one request frame; None when the answer is deferred.
        ``remote``: the peer of a remote request (its role decides, not a token);
        ``reader``: the uid of a read-only local user ([access] writers)."""
        stats = self.stats
        started = time.perf_counter() if stats is not None else 0.0
        try:
            answer, op, result = self._handle(frame, respond_later, started, remote, reader)
        except Exception as exc:  # a bug here must not take the supervisor down
            log.exception("request handling failed")
            answer, op, result = wire.encode_reply(Reply(False, "", code="internal",
                                                         message=f"internal error: {exc!r}")), "unknown", "internal"
        if stats is not None and answer is not None:
            stats.record(op, result, started)
        return answer

    def _handle(self, frame: bytes, respond_later: Callable[[str], Respond], started: float,
                remote: RemotePeer | None, reader: str | None = None) -> tuple[bytes | None, str, str]:
        """(the answer or None when deferred, the verb, the result for the metrics)."""
        self.batched = False
        try:
            req = wire.decode_request(frame)
        except wire.WireError as exc:
            return wire.encode_reply(Reply.error(exc.rid, exc)), "unknown", exc.code
        self.batched = req.batch
        if self.stats is not None:
            respond_later = self.stats.timed(req.op, started, respond_later)
        key = (req.token if remote is None else f"remote:{remote.name}", req.rid)
        remember = req.op in WRITES and bool(req.rid)
        digest = hashlib.blake2b(frame, digest_size=16).digest() if remember else b""
        if remember:
            seen = self._replies.get(key) or self._inflight.get(key)
            if seen is not None:
                if seen[0] != digest:
                    return wire.encode_reply(Reply.error(req.rid, InvalidRequestError(
                        f"request id {req.rid!r} was already used for another request"))), req.op, \
                        InvalidRequestError.code
                self.replayed += 1  # a retry after a lost reply: answer, don't apply again
                answered = self._replies.get(key)
                if answered is not None:
                    return answered[1], req.op, REPLAYED
                self._inflight[key][1].append(respond_later(req.rid))  # still running: same answer, once
                return None, req.op, ""

        def later() -> Respond:
            if not remember:
                return respond_later(req.rid)
            self._inflight[key] = (digest, [respond_later(req.rid)])
            if len(self._inflight) > REPLY_CACHE:  # answers that never came: forget the oldest
                del self._inflight[next(iter(self._inflight))]
            return lambda reply: self._answer_deferred(key, digest, reply)

        try:
            caller = self._identify(req) if remote is None else remote.caller(req.op)
            self._controller = key[0] if caller.decl is not None else None
            if reader is not None and caller is USER and req.op in local_access.REFUSED:
                raise AccessDeniedError(f"local user {reader} may read but not {req.op}: "
                                        "not a member of the [access] writers group")
            if caller.decl is not None and req.op in LIMITED:
                self._throttle(caller, req)
            result = getattr(self, "op_" + req.op)(caller, req.args, later)
            if req.args.get("brief") is True and isinstance(result, dict):
                result.pop("resource", None)  # the writer decided it already: the seq will do
            reply = Reply(True, req.rid, result=result)
        except Deferred:
            return None, req.op, ""
        except CosiError as exc:
            reply = Reply.error(req.rid, exc)
        except Exception as exc:  # a bug here must not take the supervisor down
            log.exception("request %s failed", req.op)
            reply = Reply(False, req.rid, code="internal", message=f"internal error: {exc!r}")
        encoded = wire.encode_reply(reply)
        if remember and reply.code != ThrottledError.code:  # not applied: a resend must be tried again
            self._inflight.pop(key, None)  # answered now after all
            self._remember(key, digest, encoded)
        return encoded, req.op, reply.code or "ok"

    def _throttle(self, caller: Caller, req: Request) -> None:
        """Refuse a controller's write over its rate limit, before anything is applied."""
        ops = req.args.get("ops")
        wait = self.host.throttle(caller, len(ops) if req.op == "transaction" and isinstance(ops, list) else 1)
        if wait > 0:
            raise ThrottledError(f"{caller.name} writes faster than its write rate limit; "
                                 f"again in {wait:.3f} s", retry_after=wait)

    def _remember(self, key: tuple[str, str], digest: bytes, encoded: bytes) -> None:
        self._replies.put(key, digest, encoded)

    def _answer_deferred(self, key: tuple[str, str], digest: bytes, reply: Reply) -> None:
        """Send a deferred write's reply to the request and every retry of it."""
        _digest, responders = self._inflight.pop(key, (digest, []))
        reply.rid = key[1]
        self._remember(key, digest, wire.encode_reply(reply))
        for respond in responders:
            respond(reply)

    def _identify(self, req: Request) -> Caller:
        if req.op == "register":
            return USER
        if not req.token:
            return USER
        if req.token == self.admin_token:
            return ADMIN
        caller = self.host.caller(req.token)
        if caller is None:
            raise AccessDeniedError("unknown or expired token; register again")
        return caller

    def _write_result(self, res: Resource | None) -> dict[str, Any]:
        record, self.last_record = self.last_record, None
        if record is not None:
            return {"resource": record.blob if res is not None else None, "seq": record.seq}
        return {"resource": None if res is None else pack(res), "seq": 0}

    # -- state verbs -----------------------------------------------------
    def op_get(self, caller: Caller, args: dict[str, Any], _r: Any) -> bytes:
        ns, typ, rid = _names(args)
        access.check_read(caller, ns, typ)
        return pack(self.state.get(ns, typ, rid))

    def op_list(self, caller: Caller, args: dict[str, Any], _r: Any) -> list[bytes]:
        ns, typ = _kind(args)
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

    def _off_loop(self, namespace: str, later: Callable[[], Respond], work: Callable[[], Any]) -> Any:
        """``work()`` now, or, where the namespace is kept elsewhere (it may
        wait on the network), on the host's pool with the answer later."""
        if not self.state.remote(namespace):
            return work()
        if self._controller is not None:
            self._in_order.submit(self._controller, work, later())
        else:
            self.host.offload(work, later())
        raise Deferred

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
        ns, typ, rid = _names(args)
        owner = access.effective_owner(caller, args.get("owner"))
        access.check_write(caller, self.host.registry, ns, typ)
        def do() -> tuple[Resource | None, dict[str, Any]]:
            self.state.destroy(ns, typ, rid, owner=owner)
            return None, {}

        return self._write(ns, later, do, lambda: Op("destroy", ns, typ, rid, owner=owner))

    def op_teardown(self, caller: Caller, args: dict[str, Any], later: Any) -> dict[str, Any]:
        ns, typ, rid = _names(args)
        owner = access.effective_owner(caller, args.get("owner"))
        access.check_write(caller, self.host.registry, ns, typ)

        def do() -> tuple[Resource | None, dict[str, Any]]:
            ready = self.state.teardown(ns, typ, rid, owner=owner)
            return self.state.get(ns, typ, rid), {"ready": ready}

        return self._write(ns, later, do, lambda: Op("teardown", ns, typ, rid, owner=owner))

    def _finalizers(self, caller: Caller, args: dict[str, Any], add: bool,
                    later: Callable[[], Respond]) -> dict[str, Any]:
        ns, typ, rid = _names(args)
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

    # -- cache sync --------------------------------------------------------
    def op_snapshot(self, caller: Caller, args: dict[str, Any], _r: Any) -> dict[str, Any]:
        """The kind's items at one sequence number: ``[[id, blob], ...]``, the
        first page now and the rest from ``snapshot_page`` with ``next``."""
        ns, typ = _kind(args)
        access.check_read(caller, ns, typ)
        seq, items, mark = self.state.snapshot_marked(ns, typ)
        only = args.get("id")
        if only is not None:
            items = [item for item in items if item[0] == only]
        reply = {"epoch": self.state.epoch, "seq": seq, "mark": mark}
        reply.update(self._snapshots.start(caller, items))
        return reply

    def op_snapshot_page(self, caller: Caller, args: dict[str, Any], _r: Any) -> dict[str, Any]:
        cursor = args["cursor"]
        if not isinstance(cursor, str):
            raise InvalidRequestError("cursor must be a string")
        return self._snapshots.page(caller, cursor)

    def op_since(self, caller: Caller, args: dict[str, Any], _r: Any) -> dict[str, Any]:
        ns, typ = _kind(args)
        access.check_read(caller, ns, typ)
        seq = args["seq"]
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise InvalidRequestError("seq must be an integer")
        if seq < 0:
            head, mark = self.state.position(ns, typ)
            return {"epoch": self.state.epoch, "seq": head, "mark": mark, "records": []}
        head = self.state.head(ns, typ)
        records = self.state.records_since(ns, typ, seq)
        if records is None:
            raise OverrunError(f"events of {ns}/{typ} after {seq} are no longer in history")
        return {"epoch": self.state.epoch, "seq": head,
                "records": [[r.seq, r.kind, r.id, r.blob, r.old, r.mark_rev] for r in records]}

    def op_resume(self, caller: Caller, args: dict[str, Any], later: Any) -> dict[str, Any]:
        """The records after a bookmark of the kind's own backend (an etcd
        revision outlives this supervisor), replayed ones (seq 0) first.
        Catching up may read etcd: off the loop."""
        ns, typ = _kind(args)
        access.check_read(caller, ns, typ)

        def work() -> dict[str, Any]:
            seq, records, error = self.state.resume(ns, typ, args["bookmark"])
            return {"epoch": self.state.epoch, "seq": seq, "error": error,
                    "records": [[r.seq, r.kind, r.id, r.blob, r.old, r.mark_rev] for r in records]}

        resumed: dict[str, Any] = self._off_loop(ns, later, work)
        return resumed

    def op_probe(self, caller: Caller, args: dict[str, Any], _r: Any) -> None:
        topic, nonce = args["topic"], args["nonce"]
        if not isinstance(topic, bytes) or not isinstance(nonce, str):
            raise InvalidRequestError("probe needs a bin topic and a string nonce")
        try:
            ns, typ = wire.parse_topic(topic)
        except (wire.WireError, UnicodeDecodeError):
            raise InvalidRequestError("probe topic is not a kind topic") from None
        access.check_read(caller, ns, typ)
        self.host.publish_probe(topic, nonce)  # type: ignore[attr-defined]

    # -- controller life and control ----------------------------------------
    def op_register(self, caller: Caller, args: dict[str, Any], _r: Any) -> dict[str, Any]:
        """The controller's token; ``pipelined``: whether it may keep several
        writes in flight (not under a write rate limit, which would refuse them)."""
        registered = self.host.register(args)
        return {**registered, "pipelined": not self.host.write_limited(args["name"])}

    def op_update_inputs(self, caller: Caller, args: dict[str, Any], _r: Any) -> None:
        if caller.decl is None:
            raise AccessDeniedError("only controllers have inputs")
        self.host.update_inputs(caller, args["inputs"])

    def op_owned_kinds(self, caller: Caller, args: dict[str, Any], _r: Any) -> list[list[str]]:
        """Where the calling controller owns outputs, in any namespace, so that
        its first cleanup after a restart sees what its last life wrote."""
        if caller.decl is None:
            raise AccessDeniedError("only controllers own outputs")
        types = {o.type for o in caller.decl.outputs}
        return [list(kind) for kind in self.state.owned_kinds(caller.decl.name, types)]

    def op_heartbeat(self, caller: Caller, args: dict[str, Any], _r: Any) -> dict[str, Any]:
        if caller.decl is None:
            raise AccessDeniedError("only controllers send heartbeats")
        kinds = args.get("kinds") or []
        if not isinstance(kinds, list):
            raise InvalidRequestError("heartbeat: kinds must be a list of [namespace, type, seq]")
        self.host.heartbeat(caller, args)
        heads = []
        for entry in kinds:
            if isinstance(entry, list) and len(entry) == 3:
                ns, typ = entry[0], entry[1]
                if isinstance(ns, str) and isinstance(typ, str) and caller.decl.reads(ns, typ):
                    heads.append([ns, typ, self.state.head(ns, typ)])
        return {"heads": heads}

    def op_ping(self, caller: Caller, args: dict[str, Any], _r: Any) -> dict[str, Any]:
        return {"epoch": self.state.epoch, "protocol": wire.PROTOCOL, "caller": caller.describe(),
                "ready": self.host.ready, "pid": os.getpid(), "replayed": self.replayed,
                "summary": self.host.summary(), "metrics": self.host.metrics_address}

    def op_controllers(self, caller: Caller, args: dict[str, Any], _r: Any) -> list[bytes]:
        access.check_read(caller, STATUS_NAMESPACE, STATUS_TYPE)
        return self.host.controllers()

    def op_restart(self, caller: Caller, args: dict[str, Any], later: Callable[[], Respond]) -> None:
        if caller.decl is not None:
            raise AccessDeniedError("controllers cannot restart controllers")
        name = args["name"]
        if not isinstance(name, str):
            raise InvalidRequestError("name must be a string")
        self.host.restart(name, later())
        raise Deferred

    def op_reload(self, caller: Caller, args: dict[str, Any], later: Callable[[], Respond]) -> None:
        if caller.decl is not None:
            raise AccessDeniedError("controllers cannot reload the supervisor")
        self.host.reload(later())
        raise Deferred


def _txn_result(result: Any) -> Any:
    """A transaction verb's result on the wire: a packed resource, a bool or None."""
    return pack(result) if isinstance(result, Resource) else result
