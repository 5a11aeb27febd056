"""Read-modify-write, written once for every implementation of the state API.

``modify`` is defined on top of ``get``/``create``/``update``, so the
in-process state, the wire client and a controller's ``rt`` share this loop
and cannot drift apart: the same owner and phase checks before ``fn`` runs,
the same "nothing changed, nothing written" rule, the same retry when another
writer got in between.
"""

from __future__ import annotations

from typing import Any, Callable

import msgpack

from ..errors import ConflictError, NotFoundError
from ..resource import PHASE_RUNNING, Resource
from .rules import require_owner, require_phase


def _copy(spec: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(spec, use_bin_type=True), raw=False, strict_map_key=False)


def _is_plain_conflict(exc: ConflictError) -> bool:
    """Already exists or version conflict: another writer won; try again."""
    return exc.__class__ is ConflictError


def modify_spec(
    namespace: str, type: str, id: str, fn: Callable[[Any], Any], *, owner: str,
    get: Callable[[str, str, str], Resource],
    create: Callable[[Resource], Resource],
    update: Callable[[Resource], Resource],
    on_conflict: Callable[[], None] = lambda: None,
    expected_phase: str | None = PHASE_RUNNING,
) -> tuple[Resource, bool]:
    """``fn(spec)`` mutates a copy of the spec (``{}`` when missing); its
    return value is ignored. Returns the resource and whether it was written.
    Raises OwnerConflictError / PhaseConflictError before calling ``fn`` when
    the resource belongs to someone else or is not in ``expected_phase``
    (running, by default; None: any phase). ``update`` must check the same
    phase when it writes."""
    while True:
        try:
            cur = get(namespace, type, id)
        except NotFoundError:
            spec: Any = {}
            fn(spec)
            try:
                return create(Resource(namespace, type, id, spec)), True
            except ConflictError as exc:
                if not _is_plain_conflict(exc):
                    raise
                on_conflict()
                continue
        require_owner(cur, owner, "modify")
        require_phase(cur, expected_phase)
        spec = _copy(cur.spec)
        fn(spec)
        if spec == cur.spec:
            return cur, False
        cur.spec = spec
        try:
            return update(cur), True
        except ConflictError as exc:
            if not _is_plain_conflict(exc):
                raise
            on_conflict()
