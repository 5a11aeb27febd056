"""``qtransform``: ``transform`` on a queue, one input at a time.

Each input is its own queue item: a failing input is retried alone while
the others converge, and ``concurrency`` can overlap slow transforms. The
controller always holds its inputs with a finalizer (an input cannot go
while its output exists); its own output type is a mapped destroy-ready
input, mapped back to the input by ``unmap``, so an output held by another
controller's finalizer is finished once that finalizer goes. Other kinds
the transform reads are mapped inputs with a mapper each.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..controller import Input, Output, ResourceDefinition
from ..errors import NotFoundError
from ..qcontroller import MappedMetadata, Pointer, QController
from ..resource import PHASE_TEARING_DOWN, Resource
from .base import (DestroyOutput, FinalizerRemovalFn, Kind, ShutdownFn, Skip, TransformFn, build_class,
                   get_or_none, kind_of, let_go, same_id, write_output)

MapFn = Callable[[Resource], "str | None"]
UnmapFn = Callable[[Resource], str]
#: ``mapper(rt, md)``: the input ids (or Pointers) a mapped input's change concerns.
MapperFn = Callable[[Any, MappedMetadata], Iterable["str | Pointer"]]


@dataclasses.dataclass(frozen=True)
class QTransformSettings:
    input: Kind
    output: Kind
    transform: TransformFn
    map: MapFn
    unmap: UnmapFn
    finalizer_removal: FinalizerRemovalFn | None
    mappers: dict[Kind, MapperFn]
    on_shutdown: ShutdownFn | None


class QTransformController(QController):
    """The class every ``qtransform(...)`` controller derives from."""

    settings: QTransformSettings

    def reconcile(self, rt: Any, ptr: Pointer) -> None:  # type: ignore[override]
        s = self.settings
        inp = get_or_none(rt, *ptr)
        if inp is None:
            self._orphaned(rt, ptr.id)
            return
        oid = s.map(inp)
        if oid is None:
            return
        try:
            if inp.metadata.phase == PHASE_TEARING_DOWN:
                self._tearing_down(rt, inp, oid)
                return
            if self.name not in inp.metadata.finalizers:
                rt.add_finalizer(*s.input, inp.metadata.id, self.name)
            cur = get_or_none(rt, *s.output, oid)
            if cur is not None and cur.metadata.phase == PHASE_TEARING_DOWN:
                if cur.metadata.finalizers:
                    return  # an earlier generation, held: its destroy-ready event brings us back
                rt.destroy(*s.output, oid)
            write_output(rt, s.output, oid, inp, s.transform)
        except Skip:
            return
        except DestroyOutput:
            let_go(rt, s.output, oid)

    def _tearing_down(self, rt: Any, inp: Resource, oid: str) -> None:
        s = self.settings
        if self.name not in inp.metadata.finalizers:
            return
        if s.finalizer_removal is not None:
            s.finalizer_removal(rt, inp)
        if let_go(rt, s.output, oid):  # the output first, then the input's finalizer
            rt.remove_finalizer(*s.input, inp.metadata.id, self.name)

    def _orphaned(self, rt: Any, input_id: str) -> None:
        """The input is gone: destroy any output of ours still claiming it."""
        s = self.settings
        for out in rt.list(*s.output):
            if out.metadata.owner == self.name and s.unmap(out) == input_id:
                let_go(rt, s.output, out.metadata.id)

    def map_input(self, rt: Any, md: MappedMetadata) -> list[Pointer]:
        s = self.settings
        if (md.namespace, md.type) == s.output:
            try:
                out = rt.get(md.namespace, md.type, md.id)
            except NotFoundError:
                return []
            return [Pointer(*s.input, s.unmap(out))]
        mapper = s.mappers[(md.namespace, md.type)]
        return [p if isinstance(p, tuple) else Pointer(*s.input, p) for p in mapper(rt, md)]

    def extra_items(self, rt: Any) -> list[Pointer]:
        """At start, the inputs of every output of ours, so an output whose
        input went meanwhile is found and destroyed."""
        s = self.settings
        return [Pointer(*s.input, s.unmap(out)) for out in rt.list(*s.output) if out.metadata.owner == self.name]

    def shutdown(self, rt: Any) -> None:
        if self.settings.on_shutdown is not None:
            self.settings.on_shutdown(rt)


def qtransform(*, name: str, input: tuple[str, str], output: tuple[str, str], transform: TransformFn,
               map: MapFn = same_id, unmap: UnmapFn = same_id,
               finalizer_removal: FinalizerRemovalFn | None = None,
               mapped: Mapping[Input, MapperFn] | None = None, extra_outputs: Sequence[Output] = (),
               output_kind: str = "exclusive", concurrency: int = 1, on_shutdown: ShutdownFn | None = None,
               capabilities: Sequence[str] = (), user: str = "", definitions: Sequence[ResourceDefinition] = (),
               limits: Mapping[str, Any] | None = None, module: str | None = None) -> type[QTransformController]:
    """A queue controller writing one ``output`` (namespace, type) per
    ``input`` (namespace, type) resource, one input per reconcile.

    ``map(input)``/``transform(rt, input, output)`` as in :func:`transform`;
    ``unmap(output)`` gives the input id an output came from (default: the
    same id). ``mapped`` maps extra inputs (``Input`` -> ``mapper(rt, md)``
    returning input ids) whose changes requeue those inputs. Raise
    :class:`Skip` to leave an input for its next event, :class:`DestroyOutput`
    to remove its output instead, :class:`cosihost.Requeue` to come back later.
    """
    in_kind, out_kind = kind_of(input, "input"), kind_of(output, "output")
    if in_kind == out_kind:
        raise ValueError("qtransform maps one kind to another; input and output are the same")
    extra = dict(mapped or {})
    settings = QTransformSettings(in_kind, out_kind, transform, map, unmap, finalizer_removal,
                                  {(i.namespace, i.type): fn for i, fn in extra.items()}, on_shutdown)
    attrs = {"settings": settings, "concurrency": concurrency,
             "primary": [Input(*in_kind, kind="strong")],
             "mapped": [Input(*out_kind, kind="destroy-ready"), *extra],
             "outputs": [Output(out_kind[1], kind=output_kind), *extra_outputs]}
    return build_class(name, QTransformController, attrs, module=module, definitions=definitions,
                       limits=dict(limits or {}), capabilities=capabilities, user=user)
