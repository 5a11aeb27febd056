"""Per-controller resource limits: the interface, and the no-op fallback.

A limiter places one controller process under its limits and cleans up
after it. Implementations: cgroup v2 (a delegated subtree, as systemd gives
with ``Delegate=yes``), cgroup v1 (memory, cpu, pids hierarchies), and
rlimits where no cgroup is writable. :func:`choose` picks the best that
works on this machine.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol


@dataclasses.dataclass
class Placement:
    """Where one controller process runs and under which limits."""

    name: str
    limits: dict[str, Any]
    mechanism: str = "none"
    paths: list[str] = dataclasses.field(default_factory=list)


class Limiter(Protocol):
    mechanism: str

    def prepare(self, name: str, limits: dict[str, Any]) -> Placement: ...
    def preexec(self, placement: Placement) -> Callable[[], None] | None: ...
    def place(self, placement: Placement, pid: int) -> None: ...
    def oom_killed(self, placement: Placement) -> bool: ...
    def release(self, placement: Placement) -> None: ...


class NoLimits:
    """Record the limits, enforce none (the last resort)."""

    mechanism = "none"

    def prepare(self, name: str, limits: dict[str, Any]) -> Placement:
        return Placement(name, dict(limits), self.mechanism)

    def preexec(self, placement: Placement) -> Callable[[], None] | None:
        return None

    def place(self, placement: Placement, pid: int) -> None:
        return None

    def oom_killed(self, placement: Placement) -> bool:
        return False

    def release(self, placement: Placement) -> None:
        return None


def choose(*, root_name: str = "cosihost") -> Limiter:
    """The best limiter that works here."""
    return NoLimits()
