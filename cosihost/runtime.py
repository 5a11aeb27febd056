"""The ``rt`` handle a controller's ``reconcile`` receives, as a type.

A controller module imports only the public API, so the handle's class
(which lives with the worker, beside the sockets it drives) stays private;
this protocol is what a controller author types ``rt`` with and what a
type checker holds both the worker's handle and the test harness's to.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from .controller import Input, Output
from .resource import Resource


class Runtime(Protocol):
    """What ``reconcile(rt)`` may do. Reads come from the controller's cache
    (its own writes included, at once); writes go to the supervisor, which
    checks each against the controller's declaration. Writes are pipelined:
    each returns what it will have written, decided against the cache, and
    all are acknowledged before the reconcile counts as returned; one the
    supervisor refuses although the cache allowed it fails the reconcile,
    which is retried."""

    name: str
    inputs: list[Input]
    outputs: list[Output]

    def get(self, namespace: str, type: str, id: str) -> Resource: ...

    def list(self, namespace: str, type: str, *, labels: str | Sequence[str] | None = None,
             id_regex: str | None = None) -> list[Resource]: ...

    def get_uncached(self, namespace: str, type: str, id: str) -> Resource: ...

    def list_uncached(self, namespace: str, type: str, *, labels: str | Sequence[str] | None = None,
                      id_regex: str | None = None) -> builtins.list[Resource]: ...

    def create(self, resource: Resource) -> Resource: ...

    def update(self, resource: Resource, *, expected_phase: str | None = "running") -> Resource: ...

    def modify(self, namespace: str, type: str, id: str, fn: Callable[[Any], Any], *,
               owner: str | None = None, expected_phase: str | None = "running") -> Resource: ...

    def destroy(self, namespace: str, type: str, id: str) -> None: ...

    def teardown(self, namespace: str, type: str, id: str) -> bool: ...

    def teardown_and_destroy(self, namespace: str, type: str, id: str) -> bool: ...

    def add_finalizer(self, namespace: str, type: str, id: str, *finalizers: str) -> Resource: ...

    def remove_finalizer(self, namespace: str, type: str, id: str, *finalizers: str) -> Resource: ...

    def update_inputs(self, inputs: Sequence[Input]) -> None: ...

    def start_tracking_outputs(self) -> None: ...

    def cleanup_outputs(self) -> None: ...

    def requeue(self, after: float = 0.0) -> None: ...

    def flush(self, *, raise_late: bool = True) -> None:
        """Wait until every write so far is acknowledged (the reconcile's
        return does this too); raise the first one refused on arrival."""
        ...


if TYPE_CHECKING:  # the worker's handle is a Runtime (checked by mypy, costs nothing at run time)
    from .worker.runtime import ControllerRuntime

    _CHECKED: type[Runtime] = ControllerRuntime
