"""The state API over an etcd cluster that several hosts share.

etcd decides every write; reads and watches are served by this host's
:class:`~.mirror.Mirror` of the prefix.

Every write is a compare-and-swap transaction on the key's ``mod_revision``
(``version == 0`` for a create). The rules (owner, phase, expected version,
pending finalizers; :mod:`cosihost.state.rules`) are checked against the
exact revision the transaction compares on, first as the mirror has it and,
when the mirror was behind, again as etcd answers, so when two hosts race
one wins and the other re-checks against the winner's value.

When a write had to be retried after an attempt whose answer was lost, the
first attempt may have been applied: if etcd now holds exactly what we
wrote, it was ours; if it holds something else, the outcome is unknown and
the caller is told so rather than given a guess.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Sequence

from ...errors import ConflictError, CosiError, InvalidRequestError, NotFoundError, UnavailableError
from ...resource import PHASE_RUNNING, Resource, pack, unpack, validated_copy
from ..events import Record
from ..inmemory import _check_kind, _check_owner, _checked_finalizers, _incoming, recorded_in_transaction
from ..txn import Key, Op, play
from ..modify import modify_spec
from ..rules import check_destroy, created, finalizers_changed, torn_down, updated
from . import keys
from .mirror import Mirror, Names
from .schema import EQUAL, TARGET_MOD, TARGET_VERSION

#: What a write wants instead of the current resource: a new one to put,
#: None to delete it, or ``KEEP`` to leave it as it is.
KEEP = object()
Decide = Callable[[Resource], Any]


def _unknown(names: Names) -> UnavailableError:
    return UnavailableError(f"etcd: the outcome of the write to {'/'.join(names)} is unknown (an attempt "
                            "timed out and the resource has changed since); read it and decide again")


class EtcdState(Mirror):
    """The state API with etcd as the authority. Close it when done."""

    def last_written(self) -> Record | None:
        """The record of this thread's last write (None if it wrote nothing
        or the mirror did not get it in time): its ``seq`` is the kind's
        position, as for :class:`InMemoryState`'s event hook."""
        return getattr(self._local, "record", None)

    def _check_namespace(self, namespace: str) -> None:
        if not self.owns(namespace):
            raise InvalidRequestError(f"namespace {namespace!r} is not kept in this etcd")

    # -- compare-and-swap ----------------------------------------------------------
    def _current(self, names: Names, *, fresh: bool) -> tuple[bytes | None, int]:
        """The value and mod_revision of a key: from the mirror, or from etcd."""
        if not fresh:
            coll = self._existing(names[0], names[1])
            if coll is not None:
                with coll.cond:
                    blob = coll.items.get(names[2])
                    if blob is not None:
                        return blob, self._revs.get(names, 0)
        resp, _ = self._conn.call("KV", "Range", self._m.RangeRequest(key=keys.key(self._root, *names)))
        if not resp.kvs:
            return None, 0
        return resp.kvs[0].value, resp.kvs[0].mod_revision

    def _cas(self, names: Names, expect: int, blob: bytes | None) -> tuple[Any, bool]:
        """Put (or delete, for None) if the key is still at ``expect`` (0: absent)."""
        key, m = keys.key(self._root, *names), self._m
        compare = (m.Compare(result=EQUAL, target=TARGET_MOD, key=key, mod_revision=expect) if expect
                   else m.Compare(result=EQUAL, target=TARGET_VERSION, key=key, version=0))
        op = (m.RequestOp(request_put=m.PutRequest(key=key, value=blob)) if blob is not None
              else m.RequestOp(request_delete_range=m.DeleteRangeRequest(key=key)))
        txn = m.TxnRequest(compare=[compare], success=[op],
                           failure=[m.RequestOp(request_range=m.RangeRequest(key=key))])
        return self._conn.call("KV", "Txn", txn)

    def _write(self, names: Names, decide: Decide) -> Resource | None:
        """Read, decide, compare-and-swap; again from etcd's answer when the
        mirror was behind or another writer got in first. Returns what was
        written (or the resource, when nothing had to be)."""
        self._local.record = None
        blob, rev = self._current(names, fresh=False)
        fresh = False
        while True:
            if blob is None and not fresh:
                blob, rev, fresh = *self._current(names, fresh=True), True
                continue
            if blob is None:
                raise NotFoundError(f"resource {'/'.join(names)} doesn't exist")
            try:
                want = decide(unpack(blob))
            except CosiError:
                if fresh:
                    raise
                blob, rev, fresh = *self._current(names, fresh=True), True  # the mirror may lag
                continue
            if want is KEEP:
                if fresh:
                    kept: Resource = unpack(blob)
                    return kept
                blob, rev, fresh = *self._current(names, fresh=True), True  # nothing to do, says etcd too?
                continue
            wanted: Resource | None = want
            new = None if wanted is None else pack(wanted)
            resp, maybe_applied = self._cas(names, rev, new)
            kvs = [] if resp.succeeded else resp.responses[0].response_range.kvs
            if resp.succeeded:
                self._local.record = self._settle(names, new, resp.header.revision)
                return wanted
            if maybe_applied:  # the first attempt may have done it
                if new is None and not kvs:
                    self._settle_gone(names)
                    return wanted
                if kvs and kvs[0].value == new:
                    self._local.record = self._settle(names, new, kvs[0].mod_revision)
                    return wanted
                raise _unknown(names)
            blob, rev, fresh = (kvs[0].value, kvs[0].mod_revision, True) if kvs else (None, 0, True)

    # -- writes ------------------------------------------------------------------
    @recorded_in_transaction
    def create(self, resource: Resource, *, owner: str = "") -> Resource:
        res = _incoming(resource, owner)
        md = res.metadata
        self._check_namespace(md.namespace)
        created(res, owner=owner, now=self._clock())
        names = (md.namespace, md.type, md.id)
        new = pack(res)
        self._local.record = None
        resp, maybe_applied = self._cas(names, 0, new)
        if resp.succeeded:
            self._local.record = self._settle(names, new, resp.header.revision)
            return res
        kvs = resp.responses[0].response_range.kvs
        if maybe_applied and kvs and kvs[0].value == new:  # ours, from an attempt whose answer was lost
            self._local.record = self._settle(names, new, kvs[0].mod_revision)
            return res
        if maybe_applied:
            raise _unknown(names)
        raise ConflictError(f"resource {md.namespace}/{md.type}/{md.id} already exists")

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
            blob, _rev = self._current((ns, typ, rid), fresh=True)
            if blob is None:
                raise NotFoundError(f"resource {ns}/{typ}/{rid} doesn't exist")
            return unpack(blob)

        res, _written = modify_spec(
            namespace, type, id, fn, owner=owner, get=get, on_conflict=lambda: fresh.__setitem__(0, True),
            create=lambda r: self.create(r, owner=owner), expected_phase=expected_phase,
            update=lambda r: self.update(r, owner=owner, expected_phase=expected_phase))
        return res

    @recorded_in_transaction
    def update(self, resource: Resource, *, owner: str = "",
               expected_phase: str | None = PHASE_RUNNING) -> Resource:
        new = _incoming(resource, owner, expected_phase)
        md = new.metadata
        self._check_namespace(md.namespace)

        def decide(cur: Resource) -> Resource:
            return updated(cur, validated_copy(new), owner=owner, expected_phase=expected_phase,
                           now=self._clock())

        return _kept(self._write((md.namespace, md.type, md.id), decide))

    @recorded_in_transaction
    def destroy(self, namespace: str, type: str, id: str, *, owner: str = "") -> None:
        _check_kind(namespace, type, id)
        _check_owner(owner)
        self._check_namespace(namespace)

        def decide(cur: Resource) -> None:
            check_destroy(cur, owner)

        self._write((namespace, type, id), decide)

    @recorded_in_transaction
    def teardown(self, namespace: str, type: str, id: str, *, owner: str = "") -> bool:
        _check_kind(namespace, type, id)
        _check_owner(owner)
        self._check_namespace(namespace)

        def decide(cur: Resource) -> Any:
            return cur if torn_down(cur, owner, self._clock()) else KEEP

        return not _kept(self._write((namespace, type, id), decide)).metadata.finalizers

    def _change_finalizers(self, namespace: str, type: str, id: str,
                           finalizers: Iterable[str], *, add: bool) -> Resource:
        _check_kind(namespace, type, id)
        finalizers = _checked_finalizers(finalizers)
        self._check_namespace(namespace)

        def decide(cur: Resource) -> Any:
            return cur if finalizers_changed(cur, finalizers, add=add, now=self._clock()) else KEEP

        return _kept(self._write((namespace, type, id), decide))


    # -- transactions ----------------------------------------------------------------
    #: Compare-and-swap rounds one transaction may lose to other writers.
    TXN_ATTEMPTS = 16

    def apply(self, ops: Sequence[Op], *, written: dict[Key, bytes | None] | None = None) -> list[Any]:
        """One etcd Txn: every key compared on the revision its operations
        were decided on, every net change written; lost to another writer,
        decided again from etcd's values (the rules may then refuse)."""
        if not ops:
            return []
        for op in ops:
            self._check_namespace(op.namespace)
        self._local.record = None
        wanted = sorted({op.key for op in ops})
        reads = {key: self._current(key, fresh=False) for key in wanted}
        fresh = False
        for _attempt in range(self.TXN_ATTEMPTS):
            results, changes = play(ops, lambda k: _decoded(reads[k][0]), self._clock())
            if not changes and fresh:
                return results
            if changes:
                blobs = {key: None if res is None else pack(res) for key, res in changes.items()}
                resp, maybe_applied = self._conn.call("KV", "Txn", self._txn_request(reads, blobs))
                if written is not None:
                    written.update(blobs)
                if resp.succeeded:
                    self._await_revision(resp.header.revision)
                    return results
                if maybe_applied and self._holds(resp, wanted, blobs):
                    self._await_revision(max(kv.mod_revision for r in resp.responses
                                              for kv in r.response_range.kvs) if blobs else 0)
                    return results
                if maybe_applied:
                    raise _unknown(("transaction", str(len(ops)), "operations"))
            reads, fresh = {key: self._current(key, fresh=True) for key in wanted}, True
        raise ConflictError(f"transaction of {len(ops)} operations lost {self.TXN_ATTEMPTS} times to "
                            "other writers; try again")

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

    @staticmethod
    def _holds(resp: Any, wanted: list[Key], blobs: dict[Key, bytes | None]) -> bool:
        """Does etcd hold exactly what this transaction wrote (an earlier
        attempt, whose answer was lost, applied it)?"""
        now = {key: (r.response_range.kvs[0].value if r.response_range.kvs else None)
               for key, r in zip(wanted, resp.responses)}
        return all(now.get(key) == blob for key, blob in blobs.items())

    def _await_revision(self, rev: int) -> None:
        """Wait until the watch has applied revision ``rev`` to the mirror, so
        that reads after the transaction see it (as after any write)."""
        deadline = time.monotonic() + self.config.timeout
        with self._applying:
            while self._applied < rev and not self._stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._applying.wait(remaining)


def _kept(res: Resource | None) -> Resource:
    """What a write that keeps its resource returned (only a destroy returns None)."""
    assert res is not None, "a write that keeps its resource returns it"
    return res


def _decoded(blob: bytes | None) -> Resource | None:
    return None if blob is None else unpack(blob)
