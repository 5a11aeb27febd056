"""Queue controllers: reconcile one input item at a time.

A plain :class:`~cosihost.Controller` reconciles *everything* after any
change, and one failure retries everything. A :class:`QController` keeps a
queue of items (one per resource of its *primary* inputs), reconciles one
item per call, and retries a failing item with its own exponential backoff
while the other items keep converging. Events of *mapped* inputs (another
kind the items depend on) go through :meth:`QController.map_input`, which
names the primary items to reconcile again.

The declaration is still plain inputs and outputs (``inputs`` is
``primary + mapped``), so the supervisor checks and enforces a QController
exactly like any controller; the extra ``queue`` part of the declaration
only tells the worker (and ``cosihost graph``) which inputs are which.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Iterable, NamedTuple

from .controller import Controller, Input


class Pointer(NamedTuple):
    """One queue item: a resource by namespace, type and id."""

    namespace: str
    type: str
    id: str


@dataclasses.dataclass(frozen=True)
class MappedMetadata:
    """What :meth:`QController.map_input` sees of a mapped input's change:
    the resource's pointer and a few metadata fields, not its spec."""

    namespace: str
    type: str
    id: str
    phase: str
    labels: dict[str, str]
    finalizers_empty: bool

    @property
    def pointer(self) -> Pointer:
        return Pointer(self.namespace, self.type, self.id)


class Requeue(Exception):
    """Raise from ``reconcile`` (or ``map_input``) to reconcile the item
    again after ``after`` seconds. Without ``error`` it is not a failure;
    with one, the error is logged and counted as a crash, and the item
    still comes back after ``after`` seconds (not after its backoff)."""

    def __init__(self, after: float, error: BaseException | None = None) -> None:
        super().__init__(str(error) if error is not None else f"requeue in {after:g} s")
        self.after = max(0.0, float(after))
        self.error = error


class QController(Controller):
    """Base class of queue controllers. Declare ``primary`` inputs (their
    resources are the queue's items) and ``mapped`` inputs (their changes go
    through :meth:`map_input`); ``inputs`` is derived from both.

    ``concurrency`` > 1 runs that many reconciles at once, in threads of the
    controller's process, never two for the same item. Threads help only
    when a reconcile waits on something other than Python code (a
    subprocess, a socket, a sleep): the GIL runs one thread's Python at a
    time, and every ``rt`` call is executed by the controller's main loop.
    """

    primary: ClassVar[list[Input]] = []
    mapped: ClassVar[list[Input]] = []
    concurrency: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "inputs" not in cls.__dict__:
            cls.inputs = [*cls.primary, *cls.mapped]

    def reconcile(self, rt: Any, ptr: Pointer) -> Any:  # type: ignore[override]
        """Bring the outputs of one item in line. The item may be gone
        (``rt.get`` raises NotFoundError): clean up after it then. Return to
        finish the item; raise :class:`Requeue` to come back later; any
        other exception retries it with backoff. ``async def`` works too."""
        raise NotImplementedError

    def map_input(self, rt: Any, md: MappedMetadata) -> Iterable[Pointer]:
        """The primary items a mapped input's change concerns."""
        return []

    def extra_items(self, rt: Any) -> Iterable[Pointer]:
        """Items to queue at start besides every primary resource (for
        example the inputs of outputs that may have lost theirs)."""
        return []

    @classmethod
    def declaration(cls) -> dict[str, Any]:
        decl = super().declaration()
        decl["queue"] = {
            "primary": [[i.namespace, i.type] for i in cls.primary],
            "mapped": [[i.namespace, i.type] for i in cls.mapped],
            "concurrency": int(cls.concurrency),
        }
        return decl
