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
The verbs themselves are methods gathered from mixins, one concern each:
resources (:mod:`.state_verbs`), cache sync (:mod:`.sync_verbs`) and a
controller's life and the operator's control (:mod:`.control_verbs`), on the
common ground of :mod:`.verbs`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING, Callable

from .. import wire
from ..errors import AccessDeniedError, CosiError, InvalidRequestError, ThrottledError
from ..state.router import NamespaceRouter
from ..state.events import Record
from ..wire import Reply, Request
from . import local_access
from .access import ADMIN, USER, Caller
from .control_verbs import ControlVerbs
from .remote_access import RemotePeer
from .replies import InOrder, ReplyCache
from .state_verbs import StateVerbs
from .sync_verbs import SnapshotPages, SyncVerbs
from .verbs import Deferred, Host, Respond

if TYPE_CHECKING:
    from .metrics import RequestStats

__all__ = ["Api", "Deferred", "Host", "Respond", "SnapshotPages", "REPLAYED", "WRITES", "LIMITED", "REPLY_CACHE"]

#: The result counted for a retry answered from the reply cache.
REPLAYED = "replayed"

log = logging.getLogger("cosihost.supervisor")

WRITES = frozenset({"create", "update", "destroy", "teardown", "add_finalizer", "remove_finalizer", "transaction",
                    "register", "update_inputs", "restart", "reload"})
REPLY_CACHE = 4096
#: Writes a controller's write rate limit counts.
LIMITED = frozenset({"create", "update", "destroy", "teardown", "add_finalizer", "remove_finalizer", "transaction"})


class Api(StateVerbs, SyncVerbs, ControlVerbs):
    """Answers request frames: ``op_<verb>`` handles the verb ``<verb>``."""

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
