"""The state API over an etcd cluster that several hosts share.

etcd decides every write; reads and watches are served by this host's
:class:`~.mirror.Mirror` of the prefix.

Every write, a single verb or a transaction, is one compare-and-swap
``Txn``: each key compared on the ``mod_revision`` it was decided on
(``version == 0`` for an absent one). The rules (owner, phase, expected
version, pending finalizers; :mod:`cosihost.state.rules`) are checked
against exactly those values, first as the mirror has them and, after a
lost race, again as etcd's answer has them, so when two hosts race one wins
and the other re-checks against the winner's value. Writes go through
:mod:`.pipeline`: many in flight on one channel, each key's in order;
:meth:`EtcdState.submit` is the asynchronous form the supervisor uses, the
verbs wait for it.

When a write had to be retried after an attempt whose answer was lost, the
first attempt may have been applied: if etcd now holds exactly what we
wrote, it was ours; if it holds something else, the outcome is unknown and
the caller is told so rather than given a guess.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, Sequence

from ...errors import InvalidRequestError, NotFoundError, UnavailableError
from ...resource import PHASE_RUNNING, Resource, unpack
from ..events import Record
from ..arguments import _check_kind, _check_owner, _checked_finalizers
from ..inmemory import recorded_in_transaction
from ..modify import modify_spec
from ..txn import Key, Op
from . import keys
from .mirror import Mirror
from .pipeline import Outcome, Pipeline
from .schema import EQUAL, TARGET_MOD, TARGET_VERSION


class EtcdState(Mirror):
    """The state API with etcd as the authority. Close it when done."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pipeline = Pipeline(self)

    def _defer(self, work: Callable[[], None]) -> None:
        self._pipeline.defer(work)

    def close(self) -> None:
        super().close()
        self._pipeline.close()

    def last_written(self) -> Record | None:
        """The record of this thread's last write (None if it wrote nothing
        or the mirror did not get it in time): its ``seq`` is the kind's
        position, as for :class:`InMemoryState`'s event hook."""
        return getattr(self._local, "record", None)

    def _check_namespace(self, namespace: str) -> None:
        if not self.owns(namespace):
            raise InvalidRequestError(f"namespace {namespace!r} is not kept in this etcd")

    # -- writes, in flight or waited for ----------------------------------------------
    def submit(self, ops: Sequence[Op], done: Callable[[Outcome], None], *, waiting: bool = False) -> None:
        """Apply ``ops`` (one verb, or a transaction) without waiting:
        ``done(outcome)`` runs when etcd has decided and the mirror holds
        the result, on the write thread (or at once, for a no-op decided on
        a current mirror). ``done`` must be quick and must not write.
        ``waiting``: see :meth:`.pipeline.Pipeline.submit`."""
        for op in ops:
            self._check_namespace(op.namespace)
        self._pipeline.submit(ops, done, waiting=waiting)

    def _wait(self, ops: Sequence[Op]) -> Outcome:
        """Submit and wait: the outcome, or its error raised."""
        self._local.record = None
        box: list[Outcome] = []
        finished = threading.Event()

        def done(outcome: Outcome) -> None:
            box.append(outcome)
            finished.set()

        self.submit(ops, done, waiting=True)
        finished.wait()
        out = box[0]
        if out.error is not None:
            raise out.error
        self._local.record = out.record
        return out

    @recorded_in_transaction
    def create(self, resource: Resource, *, owner: str = "") -> Resource:
        _check_owner(owner)
        created: Resource = self._wait([Op.write("create", resource, owner=owner)]).results[0]
        return created

    @recorded_in_transaction
    def update(self, resource: Resource, *, owner: str = "",
               expected_phase: str | None = PHASE_RUNNING) -> Resource:
        _check_owner(owner)
        op = Op.write("update", resource, owner=owner, expected_phase=expected_phase)
        updated: Resource = self._wait([op]).results[0]
        return updated

    @recorded_in_transaction
    def destroy(self, namespace: str, type: str, id: str, *, owner: str = "") -> None:
        _check_kind(namespace, type, id)
        _check_owner(owner)
        self._wait([Op("destroy", namespace, type, id, owner=owner)])

    @recorded_in_transaction
    def teardown(self, namespace: str, type: str, id: str, *, owner: str = "") -> bool:
        _check_kind(namespace, type, id)
        _check_owner(owner)
        ready: bool = self._wait([Op("teardown", namespace, type, id, owner=owner)]).results[0]
        return ready

    def _change_finalizers(self, namespace: str, type: str, id: str,
                           finalizers: Iterable[str], *, add: bool) -> Resource:
        _check_kind(namespace, type, id)
        op = Op("add_finalizer" if add else "remove_finalizer", namespace, type, id,
                finalizers=_checked_finalizers(finalizers))
        changed: Resource = self._wait([op]).results[0]
        return changed

    @recorded_in_transaction
    def modify(self, namespace: str, type: str, id: str, fn: Callable[[Any], Any], *,
               owner: str = "", expected_phase: str | None = PHASE_RUNNING) -> Resource:
        """As :meth:`InMemoryState.modify`; after a conflict it reads from
        etcd, not the mirror, which may not have caught up yet."""
        _check_kind(namespace, type, id)
        _check_owner(owner)
        fresh = [False]

        def get(ns: str, typ: str, rid: str) -> Resource:
            if not fresh[0]:
                return self.get(ns, typ, rid)
            blob = self._fetch((ns, typ, rid))
            if blob is None:
                raise NotFoundError(f"resource {ns}/{typ}/{rid} doesn't exist")
            return unpack(blob)

        res, _written = modify_spec(
            namespace, type, id, fn, owner=owner, get=get, on_conflict=lambda: fresh.__setitem__(0, True),
            create=lambda r: self.create(r, owner=owner), expected_phase=expected_phase,
            update=lambda r: self.update(r, owner=owner, expected_phase=expected_phase))
        return res

    def apply(self, ops: Sequence[Op], *, written: dict[Key, bytes | None] | None = None) -> list[Any]:
        """One etcd Txn: every key compared on the revision its operations
        were decided on, every net change written; lost to another writer,
        decided again from etcd's values (the rules may then refuse)."""
        if not ops:
            return []
        out = self._wait(ops)
        if written is not None:
            written.update(out.written)
        return out.results

    # -- what the pipeline reads and sends ----------------------------------------------
    def _key(self, names: Key) -> bytes:
        return keys.key(self._root, *names)

    def _mirrored(self, names: Key) -> tuple[bytes | None, int]:
        """The value and mod_revision of a key as the mirror has it ((None, 0): absent)."""
        coll = self._existing(names[0], names[1])
        if coll is None:
            return None, 0
        with coll.cond:
            blob = coll.items.get(names[2])
            return (None, 0) if blob is None else (blob, self._revs.get(names, 0))

    def _fetch(self, names: Key) -> bytes | None:
        """The value of a key as etcd has it now."""
        resp, _ = self._conn.call("KV", "Range", self._m.RangeRequest(key=self._key(names)))
        self._note(resp.header.revision)
        return resp.kvs[0].value if resp.kvs else None

    @staticmethod
    def _decoded(blob: bytes | None) -> Resource | None:
        return None if blob is None else unpack(blob)

    @staticmethod
    def _unknown(names: list[Key]) -> UnavailableError:
        what = "/".join(names[0]) if len(names) == 1 else f"a transaction on {len(names)} keys"
        return UnavailableError(f"etcd: the outcome of the write to {what} is unknown (an attempt timed out "
                                "and etcd holds something else now); read it and decide again")

    def _txn_request(self, reads: dict[Key, tuple[bytes | None, int]], blobs: dict[Key, bytes | None]) -> Any:
        m, compares, success, failure = self._m, [], [], []
        for names, (_blob, rev) in reads.items():
            key = keys.key(self._root, *names)
            compares.append(m.Compare(result=EQUAL, target=TARGET_MOD, key=key, mod_revision=rev) if rev
                            else m.Compare(result=EQUAL, target=TARGET_VERSION, key=key, version=0))
            failure.append(m.RequestOp(request_range=m.RangeRequest(key=key)))
        for names, blob in blobs.items():
            key = keys.key(self._root, *names)
            success.append(m.RequestOp(request_put=m.PutRequest(key=key, value=blob)) if blob is not None
                           else m.RequestOp(request_delete_range=m.DeleteRangeRequest(key=key)))
        return m.TxnRequest(compare=compares, success=success, failure=failure)
