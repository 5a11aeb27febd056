"""What the ready-made controllers share: building the class a controllers
module declares, writing one output from one input, and letting one go.

A ready-made controller is a real class (so the probe finds it in the
module, the supervisor checks its declaration and ``cosihost graph`` draws
it); its settings live in one frozen dataclass on the class, so the
functions in them stay plain functions, never bound methods.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Callable, Sequence

from ..controller import ResourceDefinition
from ..errors import NotFoundError, PhaseConflictError
from ..resource import PHASE_TEARING_DOWN, Resource

#: ``transform(rt, input, output)``: change ``output`` (its spec and labels) in place.
TransformFn = Callable[[Any, Resource, Resource], None]
#: ``finalizer_removal(rt, input)``: return to let the input go; raise Skip to wait.
FinalizerRemovalFn = Callable[[Any, Resource], None]
#: ``on_shutdown(rt)``: called once when the controller stops.
ShutdownFn = Callable[[Any], None]
Kind = tuple[str, str]


class Skip(Exception):
    """Raise from a transform or finalizer-removal function to leave this
    input alone for now, without an error: a later event brings it back."""


class DestroyOutput(Exception):
    """Raise from a transform to tear down and destroy the output instead
    of writing it (the input no longer wants one)."""


def caller_module(depth: int = 2) -> str:
    """The module that called the builder: the class must say it belongs
    there, or the controllers-module probe would not count it as declared."""
    return str(sys._getframe(depth).f_globals.get("__name__", "__main__"))


def build_class(name: str, base: type, attrs: dict[str, Any], *, module: str | None,
                definitions: Sequence[ResourceDefinition], limits: dict[str, Any] | None,
                capabilities: Sequence[str] = (), user: str = "") -> type:
    if not name:
        raise ValueError("a controller needs a name")
    cls_name = re.sub(r"\W", "_", name.rsplit(".", 1)[-1]) or "Generic"
    attrs.update(name=name, __module__=module or caller_module(3), __qualname__=cls_name,
                 definitions=list(definitions), limits=dict(limits or {}), capabilities=list(capabilities),
                 user=user)
    return type(cls_name, (base,), attrs)


def kind_of(value: Any, what: str) -> Kind:
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return (value[0], value[1])
    raise ValueError(f"{what} is (namespace, type), not {value!r}")


def same_id(res: Resource) -> str:
    return res.metadata.id


def get_or_none(rt: Any, namespace: str, type: str, id: str) -> Resource | None:
    try:
        return rt.get(namespace, type, id)  # type: ignore[no-any-return]
    except NotFoundError:
        return None


def write_output(rt: Any, kind: Kind, oid: str, inp: Resource, transform: TransformFn) -> None:
    """Create or update one output from ``transform``; written only when it
    changed. An output still tearing down (an earlier generation) is left
    for the teardown to finish."""
    cur = get_or_none(rt, *kind, oid)
    if cur is not None and cur.metadata.phase == PHASE_TEARING_DOWN:
        return
    out = cur.copy() if cur is not None else Resource(kind[0], kind[1], oid, {})
    transform(rt, inp, out)
    if cur is None:
        rt.create(out)
    elif out.spec != cur.spec or out.metadata.labels != cur.metadata.labels:
        try:
            rt.update(out)
        except PhaseConflictError:
            pass  # torn down meanwhile: the teardown wins


def let_go(rt: Any, kind: Kind, oid: str) -> bool:
    """Tear down and destroy an output; True once it is gone (False while
    other controllers' finalizers hold it: its destroy-ready event comes back)."""
    try:
        if not rt.teardown(*kind, oid):
            return False
        rt.destroy(*kind, oid)
    except NotFoundError:
        pass
    return True
