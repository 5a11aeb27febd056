"""Transactions: several writes that apply together or not at all.

A controller that replaces one output by another, or a user applying a
file of resources, must never leave the state showing half of the change;
and one commit (one lock round, one fsync, one request over the wire) is
also the cheapest way to move many writes. So every backend takes a list
of :class:`Op` and applies it atomically, deciding each operation with the
same rules (:mod:`cosihost.state.rules`) as a single write.

Inside ``with state.transaction() as txn:`` the write verbs, called on the
transaction or on the state itself from the same thread, are checked and
recorded, and return what they will have written; the whole list is
applied on exit, or nothing is when the block raises. Reads inside the
block see the committed state; ``modify`` sees the transaction's own
earlier writes. A key written several times is stored once, as its last
write leaves it, with one event.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any, Callable, Iterator, Sequence

from ..errors import ConflictError, InvalidRequestError, NotFoundError
from ..resource import (MAX_RESOURCE_BYTES, PHASE_RUNNING, Resource, check_name, check_phase, check_resource,
                        check_strings, unpack, validated, validated_copy)
from .modify import modify_spec
from .rules import check_destroy, created, finalizers_changed, torn_down, updated

Key = tuple[str, str, str]
#: What an operation does to the stored resource: the new one, None (gone) or KEEP.
KEEP: Any = object()
VERBS = ("create", "update", "destroy", "teardown", "add_finalizer", "remove_finalizer")
#: Most operations one transaction may carry (an etcd Txn allows 128 by default).
MAX_OPS = 128


@dataclasses.dataclass(frozen=True)
class Op:
    """One write of a transaction."""

    verb: str
    namespace: str
    type: str
    id: str
    resource: Resource | None = None
    #: The resource packed (create and update): what ``decide`` starts from.
    blob: bytes | None = None
    owner: str = ""
    expected_phase: str | None = PHASE_RUNNING
    finalizers: tuple[str, ...] = ()

    @property
    def key(self) -> Key:
        return (self.namespace, self.type, self.id)

    @classmethod
    def write(cls, verb: str, resource: Resource, *, owner: str = "",
              expected_phase: str | None = PHASE_RUNNING) -> "Op":
        """A create or an update, its resource validated and copied (which
        checks its names: only the phase is left to check)."""
        blob, res = validated(resource)
        md = res.metadata
        if verb not in ("create", "update"):
            raise InvalidRequestError(f"transaction: {verb!r} does not take a resource")
        if expected_phase is not None:
            check_phase(expected_phase, field="expected_phase")
        return cls(verb, md.namespace, md.type, md.id, res, blob, _owner(owner), expected_phase)

    @classmethod
    def from_blob(cls, verb: str, blob: bytes, *, owner: str = "",
                  expected_phase: str | None = PHASE_RUNNING) -> "Op":
        """A create or an update from a packed resource (off the wire): decoded
        and checked once, not encoded again."""
        if len(blob) > MAX_RESOURCE_BYTES:
            raise InvalidRequestError(f"spec: the resource is {len(blob)} bytes packed, "
                                      f"over the {MAX_RESOURCE_BYTES} limit")
        try:
            res = unpack(blob)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"resource cannot be decoded: {exc}") from None
        check_resource(res)
        md = res.metadata
        return cls(verb, md.namespace, md.type, md.id, res, blob, _owner(owner), expected_phase).checked()

    def checked(self) -> "Op":
        if self.verb not in VERBS:
            raise InvalidRequestError(f"transaction: unknown operation {self.verb!r} ({', '.join(VERBS)})")
        for field in ("namespace", "type", "id"):
            check_name(field, getattr(self, field))
        if self.expected_phase is not None:
            check_phase(self.expected_phase, field="expected_phase")
        check_strings("finalizers", self.finalizers)
        return self


def _owner(owner: Any) -> str:
    if not isinstance(owner, str):
        raise InvalidRequestError(f"owner must be a string, not {type(owner).__name__}")
    return owner


def decide(op: Op, cur: Resource | None, now: float, *, new: Resource | None = None) -> Any:
    """What ``op`` leaves in place of ``cur`` (a copy it may change): a
    Resource, None for gone, or KEEP; or the COSI error that forbids it.
    ``new``: for a create or an update, a fresh decoding of ``op.blob`` that
    nobody else holds (it is changed), to spare decoding it again."""
    if op.verb == "create":
        if cur is not None:
            raise ConflictError(f"resource {op.namespace}/{op.type}/{op.id} already exists")
        assert op.blob is not None
        return created(new or unpack(op.blob), owner=op.owner, now=now)
    if cur is None:
        raise NotFoundError(f"resource {op.namespace}/{op.type}/{op.id} doesn't exist")
    if op.verb == "update":
        assert op.blob is not None
        return updated(cur, new or unpack(op.blob), owner=op.owner, expected_phase=op.expected_phase, now=now)
    if op.verb == "destroy":
        check_destroy(cur, op.owner)
        return None
    if op.verb == "teardown":
        return cur if torn_down(cur, op.owner, now) else KEEP
    return cur if finalizers_changed(cur, op.finalizers, add=op.verb == "add_finalizer", now=now) else KEEP


def result_of(op: Op, after: Resource | None) -> Any:
    """What the verb returns, given the resource as ``op`` left it (never
    changed afterwards: each operation decides on a copy of it)."""
    if op.verb == "destroy":
        return None
    assert after is not None
    if op.verb == "teardown":
        return not after.metadata.finalizers
    return after


def play(ops: Sequence[Op], current: Callable[[Key], Resource | None], now: float, *,
         first: int = 1) -> tuple[list[Any], dict[Key, Resource | None]]:
    """Decide every operation in order, each seeing the ones before it.

    Returns the verbs' results and the net change per key (only keys whose
    stored value changes). Raises the first operation's error, naming it
    (operations are numbered from ``first``).
    """
    if len(ops) > MAX_OPS:
        raise InvalidRequestError(f"transaction: {len(ops)} operations, more than {MAX_OPS}")
    staged: dict[Key, Resource | None] = {}
    changed: set[Key] = set()
    results = []
    for index, op in enumerate(ops, start=first):
        if op.key in staged:  # decided before: decide on a copy, the earlier result stays as it was
            cur = staged[op.key]
            mine = None if cur is None else validated_copy(cur)
        else:
            cur = mine = current(op.key)  # a fresh object: nobody else holds it
        try:
            out = decide(op, mine, now)
        except (ConflictError, NotFoundError, InvalidRequestError) as exc:
            exc.args = (f"transaction operation {index} ({op.verb} {'/'.join(op.key)}): {exc}",)
            raise
        if out is not KEEP:
            staged[op.key] = out
            changed.add(op.key)
        results.append(result_of(op, staged.get(op.key, cur)))
    return results, {key: staged[key] for key in sorted(changed)}


class Transaction:
    """Writes recorded now, applied together when the block ends."""

    def __init__(self, *, read: Callable[[Key], Resource | None], now: Callable[[], float],
                 owner: str = "") -> None:
        self.ops: list[Op] = []
        #: Who writes when a verb names no owner (a controller's ``rt``: itself).
        self.owner = owner
        self._read = read
        self._now = now
        self._staged: dict[Key, Resource | None] = {}

    def _who(self, owner: str | None) -> str:
        return self.owner if owner is None else _owner(owner)

    def _current(self, key: Key) -> Resource | None:
        """A fresh object (play may change it): what the key holds so far."""
        if key not in self._staged:
            return self._read(key)
        staged = self._staged[key]
        return None if staged is None else validated_copy(staged)

    def _record(self, op: Op) -> Any:
        results, changes = play([op], self._current, self._now(), first=len(self.ops) + 1)
        self.ops.append(op)
        self._staged.update(changes)
        return results[0]

    def create(self, resource: Resource, *, owner: str | None = None) -> Resource:
        result: Resource = self._record(Op.write("create", resource, owner=self._who(owner)))
        return result

    def update(self, resource: Resource, *, owner: str | None = None,
               expected_phase: str | None = PHASE_RUNNING) -> Resource:
        result: Resource = self._record(Op.write("update", resource, owner=self._who(owner),
                                                 expected_phase=expected_phase))
        return result

    def get(self, namespace: str, type: str, id: str) -> Resource:
        """The resource as the transaction so far leaves it."""
        found = self._current((namespace, type, id))
        if found is None:
            raise NotFoundError(f"resource {namespace}/{type}/{id} doesn't exist")
        return found

    def modify(self, namespace: str, type: str, id: str, fn: Callable[[Any], Any], *,
               owner: str | None = None, expected_phase: str | None = PHASE_RUNNING) -> Resource:
        owner = self._who(owner)
        res, _ = modify_spec(namespace, type, id, fn, owner=owner, get=self.get, expected_phase=expected_phase,
                             create=lambda r: self.create(r, owner=owner),
                             update=lambda r: self.update(r, owner=owner, expected_phase=expected_phase))
        return res

    def destroy(self, namespace: str, type: str, id: str, *, owner: str | None = None) -> None:
        self._record(Op("destroy", namespace, type, id, owner=self._who(owner)).checked())

    def teardown(self, namespace: str, type: str, id: str, *, owner: str | None = None) -> bool:
        ready: bool = self._record(Op("teardown", namespace, type, id, owner=self._who(owner)).checked())
        return ready

    def add_finalizer(self, namespace: str, type: str, id: str, *finalizers: str) -> Resource:
        result: Resource = self._record(Op("add_finalizer", namespace, type, id,
                                           finalizers=tuple(finalizers)).checked())
        return result

    def remove_finalizer(self, namespace: str, type: str, id: str, *finalizers: str) -> Resource:
        result: Resource = self._record(Op("remove_finalizer", namespace, type, id,
                                           finalizers=tuple(finalizers)).checked())
        return result



def committed(get: Callable[[str, str, str], Resource]) -> Callable[[Key], Resource | None]:
    """A transaction's reader of the committed state, from a ``get`` verb."""
    def read(key: Key) -> Resource | None:
        try:
            return get(*key)
        except NotFoundError:
            return None
    return read


def outside_transaction(local: threading.local, what: str) -> None:
    """Refuse ``what`` (a transaction of its own) inside an open transaction."""
    if getattr(local, "txn", None) is not None:
        raise InvalidRequestError(f"{what} is a transaction of its own: not inside another")


@contextlib.contextmanager
def open_transaction(local: threading.local, *, read: Callable[[Key], Resource | None],
                     now: Callable[[], float], commit: Callable[[list[Op]], Any],
                     owner: str = "") -> Iterator[Transaction]:
    """The ``transaction()`` of a state implementation: record in this
    thread (``local.txn``), then ``commit`` the operations, unless the block raised."""
    if getattr(local, "txn", None) is not None:
        raise InvalidRequestError("a transaction is already open in this thread")  # they do not nest
    txn = Transaction(read=read, now=now, owner=owner)
    local.txn = txn
    try:
        yield txn
    finally:
        local.txn = None
    commit(txn.ops)


def teardown_and_destroy(apply: Callable[[list[Op]], Any], get: Callable[[str, str, str], Resource],
                         namespace: str, typ: str, id: str, *, owner: str) -> bool:
    """Tear a resource down and, when no finalizer holds it, destroy it, in
    one transaction. True once destroyed; False when finalizers remain (it
    is then tearing down, and its holders see that). NotFoundError if it
    does not exist."""
    teardown = Op("teardown", namespace, typ, id, owner=_owner(owner)).checked()
    destroy = Op("destroy", namespace, typ, id, owner=owner)
    for attempt in range(3):  # finalizers added or removed between two tries: again
        try:
            apply([teardown, destroy])
            return True
        except NotFoundError:
            if attempt == 0:
                raise
            return True  # destroyed meanwhile by someone else
        except ConflictError as exc:
            if type(exc) is not ConflictError:
                raise  # the owner or the phase, not finalizers
        try:
            if get(namespace, typ, id).metadata.finalizers:
                apply([teardown])
                return False
        except NotFoundError:
            return True
    return False
