"""``destroy``: finish the deletion of a kind's resources once nothing
holds them any more.

Deleting a resource held by finalizers is two steps: tear it down (its
holders see that and clean up after it), then, once the last finalizer is
gone, destroy it. Whoever tore it down would otherwise have to wait for
that moment. COSI's destroy controller takes the second step for resources
with no owner. Here a controller writes only as itself, so this one takes
it for resources of the kind that *it* owns: created under its name (for
example by an operator with the admin token acting as the controller, or
seeded that way), and torn down the same way, or by an earlier version of
the controller that tore down and moved on. It never touches another
owner's resources; the supervisor would refuse anyway.

A queue controller: each resource is its own item, and the kind is a
destroy-ready input, so a resource comes back to it the moment its last
finalizer goes.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..controller import Input, Output, ResourceDefinition
from ..errors import ConflictError, NotFoundError
from ..qcontroller import Pointer, QController
from ..resource import PHASE_TEARING_DOWN
from .base import Kind, build_class, get_or_none, kind_of


class DestroyController(QController):
    """The class every ``destroy(...)`` controller derives from."""

    watched: Kind

    def reconcile(self, rt: Any, ptr: Pointer) -> None:  # type: ignore[override]
        res = get_or_none(rt, *ptr)
        if res is None:
            return
        md = res.metadata
        if md.phase != PHASE_TEARING_DOWN or md.owner != self.name or md.finalizers:
            return  # running, someone else's, or still held: its next event brings it back
        try:
            rt.destroy(*ptr)
        except NotFoundError:
            pass  # destroyed meanwhile
        except ConflictError as exc:
            if type(exc) is not ConflictError:
                raise
            # A finalizer added since the cache saw it: its removal is a new event.


def destroy(*, name: str, output: tuple[str, str], concurrency: int = 1, output_kind: str = "exclusive",
            capabilities: Sequence[str] = (), user: str = "", definitions: Sequence[ResourceDefinition] = (),
            limits: Mapping[str, Any] | None = None, module: str | None = None) -> type[DestroyController]:
    """A queue controller owning ``output`` (namespace, type) that destroys
    each of its resources there once it is tearing down and no finalizer
    holds it. Resources of other owners are left alone."""
    kind = kind_of(output, "output")
    attrs = {"watched": kind, "concurrency": concurrency,
             "primary": [Input(*kind, kind="destroy-ready")], "mapped": [],
             "outputs": [Output(kind[1], kind=output_kind)]}
    return build_class(name, DestroyController, attrs, module=module, definitions=definitions,
                       limits=dict(limits or {}), capabilities=capabilities, user=user)
