"""What a controller module declares: the public face of a controller.

A controller is a class with a ``name``, declared ``inputs`` and ``outputs``,
optional ``limits`` and resource ``definitions``, and a ``reconcile(rt)``
method. The declaration is data, so the supervisor can check it (and refuse
a bad one) without ever importing the module itself.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Awaitable, ClassVar

if TYPE_CHECKING:
    from .runtime import Runtime

INPUT_KINDS = ("weak", "strong", "destroy-ready")
OUTPUT_KINDS = ("exclusive", "shared")


@dataclasses.dataclass(frozen=True)
class Input:
    """A kind the controller reads: watched (weak), held with finalizers
    (strong), or woken only once torn down and free of finalizers."""

    namespace: str
    type: str
    kind: str = "weak"
    id: str | None = None

    def to_wire(self) -> list[Any]:
        return [self.namespace, self.type, self.kind, self.id]

    @classmethod
    def from_wire(cls, data: Any) -> "Input":
        if isinstance(data, Input):
            return data
        if not isinstance(data, (list, tuple)) or len(data) != 4:
            raise ValueError(f"an input is [namespace, type, kind, id], not {data!r}")
        return cls(*data)


@dataclasses.dataclass(frozen=True)
class Output:
    """A type the controller writes: alone (exclusive) or beside others (shared)."""

    type: str
    kind: str = "exclusive"

    def to_wire(self) -> list[Any]:
        return [self.type, self.kind]

    @classmethod
    def from_wire(cls, data: Any) -> "Output":
        if isinstance(data, Output):
            return data
        if not isinstance(data, (list, tuple)) or len(data) != 2:
            raise ValueError(f"an output is [type, kind], not {data!r}")
        return cls(*data)


#: How a printed column shows its value in ``cosihost get``'s table: as it
#: is (""), ``bytes`` (KiB, MiB, GiB), ``timestamp`` (seconds since the
#: epoch, shown as the age since then) or ``duration`` (seconds, shown as
#: 12s, 5m, 3h, 2d). ``-o wide``, JSON and YAML keep the stored value.
COLUMN_FORMATS = ("", "bytes", "timestamp", "duration")


@dataclasses.dataclass(frozen=True)
class ResourceDefinition:
    """How people see a type: aliases, default namespace, printed columns
    (``(("HEADER", "dotted.path.in.spec"), ("SIZE", "size", "bytes"), ...)``:
    a header, a path, and optionally one of :data:`COLUMN_FORMATS`), and
    whether its spec is sensitive."""

    type: str
    aliases: tuple[str, ...] = ()
    default_namespace: str = "default"
    print_columns: tuple[tuple[str, ...], ...] = ()
    sensitive: bool = False

    def __post_init__(self) -> None:
        for col in self.print_columns:
            if len(col) not in (2, 3) or (len(col) == 3 and col[2] not in COLUMN_FORMATS):
                raise ValueError(f"{self.type}: a printed column is (header, path) or (header, path, format) "
                                 f"with a format among {COLUMN_FORMATS[1:]}, not {col!r}")

    def to_spec(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "aliases": list(self.aliases),
            "default_namespace": self.default_namespace,
            "print_columns": [list(c) for c in self.print_columns],
            "sensitive": self.sensitive,
        }


class Controller:
    """Base class of every controller. Subclass it in a module of the
    controllers directory; each subclass runs in its own process."""

    name: ClassVar[str] = ""
    inputs: ClassVar[list[Input]] = []
    outputs: ClassVar[list[Output]] = []
    limits: ClassVar[dict[str, Any]] = {}
    #: Linux capabilities it needs, e.g. ["CAP_NET_ADMIN"]: kept when it runs
    #: as its own user ([isolation]); every other one is dropped.
    capabilities: ClassVar[list[str]] = []
    #: The user it runs as under [isolation] (a passwd account, e.g. "daemon");
    #: "" for a uid of its own. The config may name another.
    user: ClassVar[str] = ""
    definitions: ClassVar[list[ResourceDefinition]] = []

    def reconcile(self, rt: Runtime) -> None | Awaitable[None]:
        """Bring outputs in line with inputs. Called after start, after input
        changes (coalesced) and when requeued. May be ``async def``: it is then
        awaited on the controller's own event loop."""
        raise NotImplementedError

    def shutdown(self, rt: Any) -> None:
        """Called once when the controller stops (its process ends, or the
        test harness stops), after the last reconcile. ``rt`` still works
        if the supervisor is up; a failure here is logged, nothing more."""

    @classmethod
    def declaration(cls) -> dict[str, Any]:
        """The declaration as plain data, as it is sent at registration."""
        return {
            "name": cls.name,
            "inputs": [i.to_wire() for i in cls.inputs],
            "outputs": [o.to_wire() for o in cls.outputs],
            "limits": dict(cls.limits),
            "capabilities": list(cls.capabilities),
            "user": cls.user,
            "definitions": [d.to_spec() for d in cls.definitions],
        }
