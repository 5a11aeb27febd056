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
  are told by the teardown, as for any output), to be deleted later.

Outputs in local namespaces go at once, on the supervisor's loop (their
events must be published there); those in etcd namespaces go in a thread
of their own, since each write waits on the network.
"""

from __future__ import annotations

import logging
import threading
from typing import Iterable

from ..errors import CosiError, NotFoundError
from ..state.router import NamespaceRouter
from .registry import Declaration

log = logging.getLogger("cosihost.supervisor")

KEEP, DESTROY = "keep", "destroy"
POLICIES = (KEEP, DESTROY)


def destroy_outputs(state: NamespaceRouter, decl: Declaration) -> None:
    """Tear down and destroy every resource ``decl``'s controller owns."""
    kinds = state.owned_kinds(decl.name, {o.type for o in decl.outputs})
    local = [kind for kind in kinds if not state.remote(kind[0])]
    remote = [kind for kind in kinds if state.remote(kind[0])]
    _destroy(state, decl.name, local)
    if remote:
        threading.Thread(target=_destroy, args=(state, decl.name, remote), daemon=True,
                         name=f"outputs of {decl.name}").start()


def _destroy(state: NamespaceRouter, owner: str, kinds: Iterable[tuple[str, str]]) -> None:
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
                    held.append(f"{namespace}/{type}/{rid}")
            except NotFoundError:
                pass
            except CosiError as exc:
                log.warning("output %s/%s/%s of removed %s left in place: %s", namespace, type, rid, owner, exc)
    if destroyed or held:
        log.info("removed %s: destroyed %d of its outputs%s", owner, destroyed,
                 f"; still held by finalizers, tearing down: {', '.join(held)}" if held else "")
