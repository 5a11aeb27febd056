"""``transform``: a whole controller from one function mapping an input
resource to an output resource.

Every round lists the inputs, writes each one's output, then destroys the
outputs no input claims any more (orphans), tearing them down first and
waiting for other controllers' finalizers on them. With input finalizers,
an input being deleted keeps the controller's finalizer until its output is
destroyed, so nothing downstream outlives its source. This is the
list-diff-cleanup loop people otherwise write by hand, and get wrong.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

from ..controller import Controller, Input, Output, ResourceDefinition
from ..errors import PhaseConflictError
from ..resource import PHASE_TEARING_DOWN, Resource
from .base import (FinalizerRemovalFn, Kind, ShutdownFn, Skip, TransformFn, build_class, kind_of, let_go,
                   same_id, write_output)

MapFn = Callable[[Resource], "str | None"]


@dataclasses.dataclass(frozen=True)
class TransformSettings:
    input: Kind
    output: Kind
    transform: TransformFn
    map: MapFn
    input_finalizers: bool
    finalizer_removal: FinalizerRemovalFn | None
    ignore_tearing_down: bool
    input_labels: str | Sequence[str] | None
    input_id_regex: str | None
    on_shutdown: ShutdownFn | None


class TransformController(Controller):
    """The class every ``transform(...)`` controller derives from."""

    settings: TransformSettings

    def reconcile(self, rt: Any) -> None:
        s = self.settings
        touched: set[str] = set()
        release: dict[str, Resource] = {}  # output id -> tearing-down input whose finalizer may go
        errors: list[BaseException] = []
        for inp in rt.list(*s.input, labels=s.input_labels, id_regex=s.input_id_regex):
            oid = s.map(inp)
            if oid is None:
                continue
            try:
                if inp.metadata.phase == PHASE_TEARING_DOWN and not s.ignore_tearing_down:
                    if self._letting_go(rt, inp):
                        release[oid] = inp
                    else:
                        touched.add(oid)
                    continue
                touched.add(oid)
                if s.input_finalizers and self.name not in inp.metadata.finalizers:
                    rt.add_finalizer(*s.input, inp.metadata.id, self.name)
                write_output(rt, s.output, oid, inp, s.transform)
            except (Skip, PhaseConflictError):
                continue
            except Exception as exc:
                errors.append(exc)
        self._cleanup(rt, touched, release, errors)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise RuntimeError(f"{len(errors)} items failed; the first: {errors[0]!r}") from errors[0]

    def _letting_go(self, rt: Any, inp: Resource) -> bool:
        """A tearing-down input: True when its finalizer may go once its
        output is gone; False keeps the output (removal function not ready)."""
        s = self.settings
        if not s.input_finalizers:
            return False  # nothing to release; not touched, so its output is cleaned up
        if self.name not in inp.metadata.finalizers:
            return False
        if s.finalizer_removal is not None:
            s.finalizer_removal(rt, inp)  # Skip or an error: keep the output for now
        return True

    def _cleanup(self, rt: Any, touched: set[str], release: dict[str, Resource],
                 errors: list[BaseException]) -> None:
        s = self.settings
        for out in rt.list(*s.output):
            md = out.metadata
            if md.owner != self.name or (md.phase != PHASE_TEARING_DOWN and md.id in touched):
                release.pop(md.id, None)  # not ours, or still wanted
                continue
            try:
                if not let_go(rt, s.output, md.id):
                    release.pop(md.id, None)  # others' finalizers hold it: we come back when they go
            except Exception as exc:
                release.pop(md.id, None)
                errors.append(exc)
        for inp in release.values():
            try:
                rt.remove_finalizer(*s.input, inp.metadata.id, self.name)
            except Exception as exc:
                errors.append(exc)

    def shutdown(self, rt: Any) -> None:
        if self.settings.on_shutdown is not None:
            self.settings.on_shutdown(rt)


def transform(*, name: str, input: tuple[str, str], output: tuple[str, str], transform: TransformFn,
              map: MapFn = same_id, input_finalizers: bool = False,
              finalizer_removal: FinalizerRemovalFn | None = None, ignore_tearing_down: bool = False,
              input_labels: str | Sequence[str] | None = None, input_id_regex: str | None = None,
              extra_inputs: Sequence[Input] = (), extra_outputs: Sequence[Output] = (),
              output_kind: str = "exclusive", on_shutdown: ShutdownFn | None = None,
              capabilities: Sequence[str] = (), user: str = "", definitions: Sequence[ResourceDefinition] = (),
              limits: Mapping[str, Any] | None = None, module: str | None = None) -> type[TransformController]:
    """A controller class writing one ``output`` (namespace, type) per
    ``input`` (namespace, type) resource.

    ``map(input)`` gives the output's id (default: the input's; None skips
    the input). ``transform(rt, input, output)`` changes ``output.spec``
    (``{}`` for a new one) and ``output.metadata.labels`` in place; raise
    :class:`Skip` to leave the input for later. ``input_finalizers`` holds
    each input with a finalizer until its output is destroyed
    (``finalizer_removal(rt, input)`` may delay that by raising Skip);
    ``ignore_tearing_down`` keeps outputs of tearing-down inputs (the two
    exclude each other). ``input_labels``/``input_id_regex`` filter the
    inputs; ``extra_inputs``/``extra_outputs`` extend the declaration.
    """
    if input_finalizers and ignore_tearing_down:
        raise ValueError("input_finalizers and ignore_tearing_down exclude each other")
    in_kind, out_kind = kind_of(input, "input"), kind_of(output, "output")
    inputs = [Input(*in_kind, kind="strong" if input_finalizers else "weak")]
    if out_kind != in_kind:  # woken when an output torn down by someone else's finalizer is free to go
        inputs.append(Input(*out_kind, kind="destroy-ready"))
    settings = TransformSettings(in_kind, out_kind, transform, map, input_finalizers, finalizer_removal,
                                 ignore_tearing_down, input_labels, input_id_regex, on_shutdown)
    attrs = {"settings": settings, "inputs": inputs + list(extra_inputs),
             "outputs": [Output(out_kind[1], kind=output_kind), *extra_outputs]}
    return build_class(name, TransformController, attrs, module=module, definitions=definitions,
                       limits=dict(limits or {}), capabilities=capabilities, user=user)
