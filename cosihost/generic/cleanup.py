"""``cleanup``: hold every resource of a kind with a finalizer, and let one
go only once a check says what depends on it is gone.

The usual use: a kind other resources refer to (a link an address is on, a
config a spec came from) must not vanish under them. ``has_no_outputs``
builds the common check: no resources of a kind whose labels point at it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from ..controller import Controller, Input, Output, ResourceDefinition
from ..resource import PHASE_TEARING_DOWN, Resource
from .base import FinalizerRemovalFn, Kind, Skip, build_class, kind_of


class CleanupController(Controller):
    """The class every ``cleanup(...)`` controller derives from."""

    watched: Kind
    check: tuple[FinalizerRemovalFn]  # a tuple, so the function is not bound as a method

    def reconcile(self, rt: Any) -> None:
        errors: list[BaseException] = []
        for res in rt.list(*self.watched):
            md = res.metadata
            held = self.name in md.finalizers
            try:
                if md.phase != PHASE_TEARING_DOWN:
                    if not held:
                        rt.add_finalizer(*self.watched, md.id, self.name)
                elif held:
                    self.check[0](rt, res)
                    rt.remove_finalizer(*self.watched, md.id, self.name)
            except Skip:
                continue
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise RuntimeError(f"{len(errors)} items failed; the first: {errors[0]!r}") from errors[0]


def cleanup(*, name: str, input: tuple[str, str], finalizer_removal: FinalizerRemovalFn,
            extra_inputs: Sequence[Input] = (), outputs: Sequence[Output] = (),
            capabilities: Sequence[str] = (), user: str = "", definitions: Sequence[ResourceDefinition] = (),
            limits: Mapping[str, Any] | None = None, module: str | None = None) -> type[CleanupController]:
    """A controller putting its finalizer on every ``input`` resource and
    removing it from one being deleted once ``finalizer_removal(rt, res)``
    returns (raise :class:`Skip` to wait; declare what it reads in
    ``extra_inputs`` so its changes wake the controller)."""
    kind = kind_of(input, "input")
    attrs = {"watched": kind, "check": (finalizer_removal,),
             "inputs": [Input(*kind, kind="strong"), *extra_inputs], "outputs": list(outputs)}
    return build_class(name, CleanupController, attrs, module=module, definitions=definitions,
                       limits=dict(limits or {}), capabilities=capabilities, user=user)


def has_no_outputs(namespace: str, type: str, labels: Callable[[Resource], str | Sequence[str]]) -> FinalizerRemovalFn:
    """A ``finalizer_removal`` waiting (Skip) while any ``namespace``/``type``
    resource matches the label query ``labels(input)``."""
    def check(rt: Any, res: Resource) -> None:
        left = rt.list(namespace, type, labels=labels(res))
        if left:
            raise Skip(f"{len(left)} {type} resource(s) still refer to {res.metadata.id}")
    return check
