"""What becomes of a removed controller's outputs.

A controller that is removed (its module deleted or no longer defining it,
then ``cosihost reload``) leaves resources it owned, and nobody may write
them: only an owner may. Whether they should outlive it depends on the
device. A status or a cached fact may be worth keeping for whoever comes
next; a spec that other controllers act on may be dangerous to keep.
So it is a choice, ``[controllers] removed_outputs``:

- ``"keep"`` (the default): they stay, owned by the name that is gone; a
  controller of that name that comes back takes them over, and its first
  cleanup sees them (see ``owned_kinds``).
- ``"destroy"``: each is torn down and destroyed. One that another
  controller still holds with a finalizer stays tearing down (its holders
  are told by the teardown, as for any output) and is destroyed when the
  last finalizer goes: the supervisor watches its events for that
  (:class:`Orphans`), unless a controller of the owner's name has come
  back meanwhile (it owns them again). A supervisor restart forgets what it
  was waiting for; those stay tearing down, as under ``"keep"``.

Outputs in local namespaces go at once, on the supervisor's loop (their
events must be published there); those in etcd namespaces go in a thread
of their own, since each write waits on the network.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Iterable

from ..errors import CosiError, NotFoundError
from ..resource import unpack
from ..state.events import DESTROYED, Record, meta_of
from ..state.router import NamespaceRouter
from .registry import Declaration

log = logging.getLogger("cosihost.supervisor")

KEEP, DESTROY = "keep", "destroy"
POLICIES = (KEEP, DESTROY)


Key = tuple[str, str, str]


class Orphans:
    """A removed controller's outputs that finalizers still held when it went:
    destroyed once their events show the last finalizer gone."""

    def __init__(self, state: NamespaceRouter, *, active: Callable[[str], bool]) -> None:
        self.state = state
        #: Whether a controller of this name runs (again): then it owns its outputs.
        self._active = active
        #: (namespace, type, id) -> the removed owner, while finalizers hold it.
        self.held: dict[Key, str] = {}
        #: Released by their last finalizer, to destroy at the end of the loop's turn.
        self._released: list[Key] = []
        #: Held keys found by the threads that tear down outputs in etcd namespaces.
        self._found: queue.SimpleQueue[tuple[Key, str]] = queue.SimpleQueue()

    def destroy_outputs(self, decl: Declaration) -> None:
        """Tear down and destroy every resource ``decl``'s controller owns."""
        state = self.state
        kinds = state.owned_kinds(decl.name, {o.type for o in decl.outputs})
        local = [kind for kind in kinds if not state.remote(kind[0])]
        remote = [kind for kind in kinds if state.remote(kind[0])]
        for key in _destroy(state, decl.name, local):
            self.held[key] = decl.name
        if remote:
            def work() -> None:
                for key in _destroy(state, decl.name, remote):
                    self._found.put((key, decl.name))
            threading.Thread(target=work, daemon=True, name=f"outputs of {decl.name}").start()

    @property
    def watching(self) -> bool:
        """Whether any change may concern them (cheap: asked for every change)."""
        return bool(self.held) or not self._found.empty()

    def saw(self, namespace: str, type: str, record: Record) -> None:
        """Every published change: a held one whose last finalizer went is released."""
        while not self._found.empty():
            key, owner = self._found.get()
            self.held[key] = owner
        key = (namespace, type, record.id)
        if key not in self.held:
            return
        if record.kind == DESTROYED:
            del self.held[key]
            return
        meta = record.meta if record.meta is not None else meta_of(unpack(record.blob))
        if meta[2]:  # finalizers empty
            self._released.append(key)

    def destroy_released(self) -> None:
        """Destroy what :meth:`saw` released (on the loop, after its turn's writes)."""
        if not self._released:
            return
        released, self._released = self._released, []
        for key in released:
            owner = self.held.pop(key, None)
            if owner is None or self._active(owner):
                continue
            if self.state.remote(key[0]):  # etcd: each write waits on the network
                threading.Thread(target=_destroy_one, args=(self.state, owner, key), daemon=True,
                                 name=f"output of {owner}").start()
            else:
                _destroy_one(self.state, owner, key)


def _destroy_one(state: NamespaceRouter, owner: str, key: Key) -> None:
    namespace, type, rid = key
    try:
        state.destroy(namespace, type, rid, owner=owner)
        log.info("removed %s: destroyed its output %s/%s/%s, no longer held", owner, namespace, type, rid)
    except NotFoundError:
        pass
    except CosiError as exc:
        log.warning("output %s/%s/%s of removed %s left in place: %s", namespace, type, rid, owner, exc)


def _destroy(state: NamespaceRouter, owner: str, kinds: Iterable[tuple[str, str]]) -> list[Key]:
    """Tear down and destroy ``owner``'s resources of ``kinds``; the keys
    finalizers still hold (torn down, not destroyed)."""
    destroyed, held = 0, []
    for namespace, type in kinds:
        try:
            mine = [r.metadata.id for r in state.list(namespace, type) if r.metadata.owner == owner]
        except CosiError as exc:
            log.warning("outputs of removed %s in %s/%s left in place: %s", owner, namespace, type, exc)
            continue
        for rid in mine:
            try:
                if state.teardown(namespace, type, rid, owner=owner):
                    state.destroy(namespace, type, rid, owner=owner)
                    destroyed += 1
                else:
                    held.append((namespace, type, rid))
            except NotFoundError:
                pass
            except CosiError as exc:
                log.warning("output %s/%s/%s of removed %s left in place: %s", namespace, type, rid, owner, exc)
    if destroyed or held:
        names = ", ".join("/".join(key) for key in held)
        log.info("removed %s: destroyed %d of its outputs%s", owner, destroyed,
                 f"; still held by finalizers, tearing down: {names}" if held else "")
    return held
