"""What a write may do to a resource, written once for every backend.

Each function takes the resource as stored and returns what should be
stored instead (or raises the COSI error that forbids it). The in-memory
state applies the answer under its kind's lock; the etcd state applies it
with a compare-and-swap on the revision it read. Either way the same rules
decide, so backends cannot drift apart.
"""

from __future__ import annotations

from typing import Iterable

from ..errors import ConflictError, OwnerConflictError, PhaseConflictError
from ..resource import PHASE_RUNNING, PHASE_TEARING_DOWN, Resource


def require_owner(cur: Resource, owner: str, verb: str) -> None:
    if cur.metadata.owner != owner:
        md = cur.metadata
        raise OwnerConflictError(
            f"cannot {verb} {md.namespace}/{md.type}/{md.id}: owned by {md.owner!r}, not {owner!r}")


def require_phase(cur: Resource, expected: str | None) -> None:
    md = cur.metadata
    if expected is not None and md.phase != expected:
        raise PhaseConflictError(f"{md.namespace}/{md.type}/{md.id} is {md.phase}, expected {expected}")


def created(res: Resource, *, owner: str, now: float) -> Resource:
    """``res`` (modified in place) as it is first stored."""
    md = res.metadata
    md.version, md.owner, md.phase = 1, owner, PHASE_RUNNING
    md.created = md.updated = now
    return res


def updated(cur: Resource, new: Resource, *, owner: str, expected_phase: str | None,
            now: float) -> Resource:
    """``new`` (modified in place) as it replaces ``cur``: the caller's spec
    and labels; the stored owner, phase, finalizers and creation time."""
    md, cmd = new.metadata, cur.metadata
    require_owner(cur, owner, "update")
    if md.version != cmd.version:
        raise ConflictError(f"version conflict on {md.namespace}/{md.type}/{md.id}: "
                            f"expected {md.version}, stored {cmd.version}")
    require_phase(cur, expected_phase)
    md.version, md.owner, md.phase = cmd.version + 1, cmd.owner, cmd.phase
    md.finalizers, md.created, md.updated = cmd.finalizers, cmd.created, now
    return new


def check_destroy(cur: Resource, owner: str) -> None:
    require_owner(cur, owner, "destroy")
    md = cur.metadata
    if md.finalizers:
        raise ConflictError(f"cannot destroy {md.namespace}/{md.type}/{md.id}: finalizers pending: "
                            f"{', '.join(md.finalizers)}")


def torn_down(cur: Resource, owner: str, now: float) -> bool:
    """Move ``cur`` (in place) to tearing-down; False when it already was."""
    require_owner(cur, owner, "tear down")
    md = cur.metadata
    if md.phase == PHASE_TEARING_DOWN:
        return False
    md.phase, md.version, md.updated = PHASE_TEARING_DOWN, md.version + 1, now
    return True


def finalizers_changed(cur: Resource, finalizers: Iterable[str], *, add: bool, now: float) -> bool:
    """Add or remove finalizers on ``cur`` (in place); False when nothing changed."""
    md = cur.metadata
    changed = md.add_finalizers(*finalizers) if add else md.remove_finalizers(*finalizers)
    if changed:
        md.version, md.updated = md.version + 1, now
    return changed
