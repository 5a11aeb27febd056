"""A controller's writes in flight: sent at once, acknowledged before its
reconcile returns.

Each write is decided first against the controller's cache, by the same
rules the supervisor applies (:func:`cosihost.state.txn.play`): a mistake the
cache can show (a version conflict, a missing resource, a foreign owner)
raises at the call that makes it, as before, and the call returns what the
write will leave, versions included. The write is then sent on the
controller's :class:`~cosihost.pipeline.Pipeline` without waiting, and the
cache shows it at once (a pending overlay entry), so the reconcile reads its
own writes. Replies are taken as they come; the last one for a resource
settles its overlay entry at the sequence number the supervisor gave it.

A write the supervisor refuses although the cache allowed it (another writer
got in first: the cache was behind) is found late. :meth:`InFlight.flush`,
which the scheduler calls when a reconcile returns, waits for every reply
and raises the first such error, so the reconcile fails and is retried with
the usual backoff, after the kinds concerned were read afresh. A reconcile
has returned only once all its writes are acknowledged.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from ..errors import ConflictError, CosiError, NotFoundError, ThrottledError, error_from_code
from ..pipeline import Pending, Pipeline
from ..resource import Resource, pack
from ..state.txn import KEEP, Key, Op, decide, result_of
from .cache import Cache


@dataclasses.dataclass
class _KeyWrites:
    """The writes of one resource not acknowledged yet."""

    count: int = 0
    seq: int = 0
    failed: bool = False


class InFlight:
    """The pipelined writes of one controller process (its loop's thread only)."""

    def __init__(self, pipe: Pipeline, cache: Cache) -> None:
        self._pipe = pipe
        self._cache = cache
        self._keys: dict[Key, _KeyWrites] = {}
        #: Writes refused on arrival, with their errors, raised by the next flush.
        self._late: list[tuple[Op, CosiError]] = []
        #: Set when the supervisor throttled a pipelined write: the limit came
        #: after registration (a reload), and the runtime stops pipelining.
        self.throttled = False

    def write(self, op: Op, *, current: Resource | None = None) -> Any:
        """Decide ``op`` against the cache, send it, and return its result.
        ``current``: what the cache holds for the key, when the caller has
        just read it (a fresh copy nobody else changes; rt.modify's read)."""
        key = op.key
        cur = self._cache.get(*key) if current is None else current
        # op.resource is the op's own decoded copy (Op.write): nobody else holds it.
        out = decide(op, cur, time.time(), new=op.resource)
        if out is not KEEP:
            self._cache.record_pending(*key, None if out is None else pack(out))
        result = result_of(op, cur if out is KEEP else out)
        kw = self._keys.get(key)
        if kw is None:
            kw = self._keys[key] = _KeyWrites()
        kw.count += 1
        self._pipe.send(op.verb, _args(op), on_reply=lambda p: self._acked(op, kw, p))
        return result

    def _acked(self, op: Op, kw: _KeyWrites, pending: Pending) -> None:
        reply = pending.reply
        assert reply is not None
        kw.count -= 1
        if reply.ok:
            seq = reply.result.get("seq") if isinstance(reply.result, dict) else 0
            kw.seq = max(kw.seq, seq if isinstance(seq, int) else 0)
        else:
            kw.failed = True
            self.throttled = self.throttled or reply.code == ThrottledError.code
            self._late.append((op, error_from_code(reply.code, f"{op.verb} {'/'.join(op.key)} "
                                                   f"(refused when it arrived): {reply.message}")))
        if kw.count == 0:
            del self._keys[op.key]
            if kw.failed:
                self._cache.forget_write(*op.key)
            else:
                self._cache.settle_write(*op.key, kw.seq)

    def flush(self, *, raise_late: bool = True) -> None:
        """Wait for every reply; raise the first write refused late (after
        reading its kind afresh when another writer got in first)."""
        self._pipe.flush()
        late, self._late = self._late, []
        stale = {(op.namespace, op.type) for op, exc in late if isinstance(exc, (ConflictError, NotFoundError))}
        for namespace, type in sorted(stale):
            if (namespace, type) in self._cache.kinds:
                self._cache.resync(namespace, type, "a pipelined write found it changed")
        if late and raise_late:
            raise late[0][1]


def _args(op: Op) -> dict[str, Any]:
    """A single write's request arguments, as the synchronous verbs send them,
    asking for a brief reply: the sequence number, not the resource again."""
    if op.verb in ("create", "update"):
        args: dict[str, Any] = {"resource": op.blob, "owner": op.owner, "brief": True}
        if op.verb == "update":
            args["expected_phase"] = op.expected_phase
        return args
    args = {"namespace": op.namespace, "type": op.type, "id": op.id, "owner": op.owner, "brief": True}
    if op.verb in ("add_finalizer", "remove_finalizer"):
        args["finalizers"] = list(op.finalizers)
    return args
