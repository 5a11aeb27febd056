"""Per-controller resource limits: the interface, the values, and the choice.

A limiter places one controller process under its limits and cleans up
after it. The supervisor drives it like this::

    placement = limiter.prepare(name, limits)     # check the values, make the cgroups
    Popen(..., preexec_fn=limiter.preexec(placement))
                                                  # the child joins its cgroups and sets
                                                  # its rlimits after fork, before exec
    limiter.place(placement, pid)                 # a check, nothing more
    ...                                           # the process ends
    limiter.oom_killed(placement)                 # did its memory limit kill it?
    limiter.release(placement)                    # kill what is left, remove the cgroups

Limits are declared on the controller class and overridden per controller
in the config (``[limits."net.HostnameController"]``):

``memory``  bytes: ``67108864``, ``"64M"``, ``"1.5G"`` (K, M, G, T are powers
            of 1024; ``"64Mi"`` and ``"64MB"`` mean the same)
``cpu``     cores: ``0.2``, ``"0.5"``, ``"200m"`` (millicores), ``"20%"``
``pids``    tasks, threads included: ``16``
``nofile``  open files: ``256``

``"max"`` (or ``"unlimited"``) lifts a limit, so a config can undo a class
default. Anything else is refused with a :class:`LimitError` that names the
controller and the key.

Implementations, best first (:func:`choose`):

``cgroup2``  a writable delegated cgroup v2 subtree (systemd ``Delegate=yes``)
             with memory, cpu and pids: memory.max, cpu.max, pids.max in a
             child cgroup per controller
``cgroup1``  the v1 memory, cpu and pids hierarchies: memory.limit_in_bytes,
             cpu.cfs_quota_us, pids.max below the supervisor's own cgroups
``cgroup2``  a writable cgroup v2 subtree with only some of those controllers,
             or none: a cgroup per controller still, the rest by rlimit
``rlimit``   no writable cgroup: RLIMIT_DATA for memory, RLIMIT_NPROC for pids
             (per user, and ignored for root), nothing for cpu
``none``     records the limits, enforces nothing

Open files are always an rlimit (RLIMIT_NOFILE): no cgroup counts them. A
limit a mechanism cannot express falls back to the rlimit, or to nothing;
``Placement.enforced`` says, per limit, which one holds it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from typing import Any, Callable, Protocol

from ...errors import InvalidRequestError

log = logging.getLogger("cosihost.supervisor")

KEYS = ("memory", "cpu", "pids", "nofile")
UNLIMITED = frozenset({"max", "unlimited", "infinity", "none"})

#: The exit code of a child that could not enter its cgroups or set its
#: rlimits (it writes why on its stderr first).
PLACEMENT_FAILED_EXIT = 125

MAX_CPU = 1024.0          # cores
MIN_CPU = 0.01            # cgroups refuse a quota under 1 ms per 100 ms period
MAX_TASKS = 4_194_304     # the kernel's highest pid_max
MAX_BYTES = 2 ** 62

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtpe]?)(i?b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


class LimitError(InvalidRequestError, ValueError):
    """A limit value that cannot be applied; the message names the
    controller and the key."""


def parse_size(value: Any) -> int | None:
    """Bytes from ``67108864``, ``"64M"``, ``"1.5G"``, ``"512KiB"``; ``None``
    for ``"max"``. Raises ``ValueError`` with a short reason."""
    if isinstance(value, bool):
        raise ValueError("is a boolean, not a size")
    if isinstance(value, str) and value.strip().lower() in UNLIMITED:
        return None
    if isinstance(value, (int, float)):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("is not a finite number")
    elif isinstance(value, str):
        match = _SIZE.match(value)
        if match is None:
            raise ValueError('is not a size like 64M, 1G, 512K or a number of bytes')
        number = float(match.group(1)) * 1024 ** _POWERS[match.group(2).lower()]
    else:
        raise ValueError(f"is a {type(value).__name__}, not a size")
    size = int(number)
    if size < 1:
        raise ValueError("must be at least 1 byte")
    if size > MAX_BYTES:
        raise ValueError("is larger than any machine")
    return size


def parse_cpu(value: Any) -> float | None:
    """Cores from ``0.2``, ``"0.5"``, ``"200m"`` or ``"20%"``; ``None`` for ``"max"``."""
    if isinstance(value, bool):
        raise ValueError("is a boolean, not a number of cores")
    if isinstance(value, str):
        text = value.strip().lower()
        if text in UNLIMITED:
            return None
        scale = 1.0
        if text.endswith("m"):
            text, scale = text[:-1], 0.001
        elif text.endswith("%"):
            text, scale = text[:-1], 0.01
        try:
            cores = float(text) * scale
        except ValueError:
            raise ValueError('is not a number of cores like 0.2, "200m" or "20%"') from None
    elif isinstance(value, (int, float)):
        cores = float(value)
    else:
        raise ValueError(f"is a {type(value).__name__}, not a number of cores")
    if not math.isfinite(cores):
        raise ValueError("is not a finite number")
    if cores < MIN_CPU:
        raise ValueError(f"must be at least {MIN_CPU} cores")
    if cores > MAX_CPU:
        raise ValueError(f"must be at most {MAX_CPU:g} cores")
    return cores


def parse_count(value: Any, *, most: int) -> int | None:
    """A whole number of at least 1 (``"max"`` gives ``None``)."""
    if isinstance(value, bool):
        raise ValueError("is a boolean, not a count")
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in UNLIMITED:
            return None
        if not text.isdigit():
            raise ValueError("is not a whole number")
        value = int(text)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("is not a whole number")
        value = int(value)
    if not isinstance(value, int):
        raise ValueError(f"is a {type(value).__name__}, not a count")
    if value < 1:
        raise ValueError("must be at least 1")
    if value > most:
        raise ValueError(f"must be at most {most}")
    return value


def parse_limits(name: str, limits: Any) -> dict[str, int | float]:
    """The limits as numbers (memory in bytes, cpu in cores, pids, nofile);
    lifted limits are left out. Raises :class:`LimitError`."""
    if not isinstance(limits, dict):
        raise LimitError(f"controller {name!r}: limits must be a table of "
                         f"{', '.join(KEYS)}, not {type(limits).__name__}")
    values: dict[str, int | float] = {}
    for key, raw in limits.items():
        try:
            if key == "memory":
                value: int | float | None = parse_size(raw)
            elif key == "cpu":
                value = parse_cpu(raw)
            elif key == "pids":
                value = parse_count(raw, most=MAX_TASKS)
            elif key == "nofile":
                value = parse_count(raw, most=2 ** 31 - 1)
            else:
                raise LimitError(f"controller {name!r}: unknown limit {key!r} (known: {', '.join(KEYS)})")
        except ValueError as exc:
            if isinstance(exc, LimitError):
                raise
            raise LimitError(f"controller {name!r}: limit {key!r}: {raw!r} {exc}") from None
        if value is not None:
            values[key] = value
    return values


@dataclasses.dataclass
class Placement:
    """Where one controller process runs and under which limits."""

    name: str
    limits: dict[str, Any]               # as declared, after config overrides
    mechanism: str = "none"
    paths: list[str] = dataclasses.field(default_factory=list)    # its cgroup directories
    values: dict[str, int | float] = dataclasses.field(default_factory=dict)  # parsed limits
    enforced: dict[str, str] = dataclasses.field(default_factory=dict)  # limit -> mechanism or "none"
    cgroups: dict[str, str] = dataclasses.field(default_factory=dict)   # cgroup controller -> directory
    procs: list[str] = dataclasses.field(default_factory=list)   # cgroup.procs files the child joins
    rlimits: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # "RLIMIT_NOFILE": [soft, hard]
    oom_base: int = 0                    # the cgroup's OOM-kill count when prepared
    released: bool = False

    @property
    def setup(self) -> dict[str, Any]:
        """What the new process must do before controller code runs, as
        plain data (for a fork server): write ``0`` into each ``procs``
        file, then set each rlimit. :meth:`Limiter.preexec` does the same."""
        return {"procs": list(self.procs), "rlimits": {k: list(v) for k, v in self.rlimits.items()}}


class Limiter(Protocol):
    mechanism: str

    def prepare(self, name: str, limits: dict[str, Any]) -> Placement: ...
    def preexec(self, placement: Placement) -> Callable[[], None] | None: ...
    def place(self, placement: Placement, pid: int) -> None: ...
    def oom_killed(self, placement: Placement) -> bool: ...
    def release(self, placement: Placement) -> None: ...
    def close(self) -> None: ...


class NoLimits:
    """Check and record the limits, enforce none (the last resort)."""

    mechanism = "none"

    def prepare(self, name: str, limits: dict[str, Any]) -> Placement:
        values = parse_limits(name, limits)
        return Placement(name, dict(limits), self.mechanism, values=values,
                         enforced={key: "none" for key in values})

    def preexec(self, placement: Placement) -> Callable[[], None] | None:
        return None

    def place(self, placement: Placement, pid: int) -> None:
        return None

    def oom_killed(self, placement: Placement) -> bool:
        return False

    def release(self, placement: Placement) -> None:
        placement.released = True

    def close(self) -> None:
        return None


def survey(*, root_name: str = "cosihost") -> tuple[Limiter, list[str]]:
    """The best limiter that works here, ready to use, and why each better
    one was passed over."""
    from .cgroup1 import Cgroup1Limiter
    from .cgroup2 import Cgroup2Limiter
    from .cgroupfs import CGROUP_CONTROLLERS
    from .rlimits import RlimitLimiter

    notes: list[str] = []
    v2, why = Cgroup2Limiter.find(root_name=root_name)
    if why:
        notes.append(f"cgroup2: {why}")
    v1, why = Cgroup1Limiter.find(root_name=root_name)
    if why:
        notes.append(f"cgroup1: {why}")
    full_v2 = v2 is not None and set(v2.bases) >= set(CGROUP_CONTROLLERS)
    order = [c for c in ((v2, v1) if full_v2 else (v1, v2)) if c is not None]
    for candidate in order:
        try:
            candidate.activate()
        except OSError as exc:
            notes.append(f"{candidate.mechanism}: {exc}")
            continue
        notes.extend(f"{candidate.mechanism}: {note}" for note in candidate.notes)
        return candidate, notes
    return RlimitLimiter(), notes


def choose(*, root_name: str = "cosihost") -> Limiter:
    """The best limiter that works here (what it passed over and why goes to the log)."""
    limiter, notes = survey(root_name=root_name)
    log.info("limits: enforced with %s%s", limiter.mechanism, "".join(f"; {note}" for note in notes))
    return limiter
