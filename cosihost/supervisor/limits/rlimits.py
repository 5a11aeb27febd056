"""Limits by rlimit: the fallback where no cgroup is writable, and open files always.

``nofile`` is RLIMIT_NOFILE whatever else is used. Where no cgroup holds
them, ``memory`` is RLIMIT_DATA and ``pids`` is RLIMIT_NPROC. ``cpu`` has no
rlimit (RLIMIT_CPU caps total seconds, not a share) and stays unenforced.

What these can and cannot do:

- RLIMIT_DATA caps the heap and private anonymous mappings (Linux >= 4.7),
  which is where a Python process grows. RLIMIT_AS would be the literal
  "address space" limit but counts every reserved mapping (thread stacks,
  malloc arenas, shared libraries): an idle worker already reserves about
  110 MB of it with 25 MB resident, so a "64M" limit would stop it from
  starting. An allocation past the limit fails (``MemoryError`` in the
  reconcile, which the worker retries); nothing is killed, so no exit is
  ever put down to the memory limit.
- RLIMIT_NPROC counts every task of the user, not of one controller, and
  the kernel ignores it for root and for holders of CAP_SYS_RESOURCE or
  CAP_SYS_ADMIN. For anyone else the limit is set to the tasks the user
  already has plus the controller's ``pids``: its forks stop about there.

Everything is set in the child between fork and exec (:func:`enter`), with
the soft and the hard limit equal, so the controller cannot raise it again.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any, Callable, Iterable

from . import PLACEMENT_FAILED_EXIT, LimitError, Placement, parse_limits

MECHANISM = "rlimit"
CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24


def nr_open() -> int:
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return 1 << 20


def nproc_exempt() -> bool:
    """Whether the kernel ignores RLIMIT_NPROC for our children (root, or
    CAP_SYS_RESOURCE / CAP_SYS_ADMIN in the effective set)."""
    if os.getuid() == 0:
        return True
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                caps = int(line.split()[1], 16)
                return bool(caps & (1 << CAP_SYS_RESOURCE) or caps & (1 << CAP_SYS_ADMIN))
    except (OSError, ValueError, IndexError):
        pass
    return False


def user_tasks(uid: int) -> int:
    """Tasks (threads included) whose real user is ``uid``: what RLIMIT_NPROC counts."""
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as fh:
                status = fh.read()
        except OSError:
            continue
        real = threads = None
        for line in status.splitlines():
            if line.startswith(b"Uid:"):
                real = int(line.split()[1])
            elif line.startswith(b"Threads:"):
                threads = int(line.split()[1])
        if real == uid and threads:
            count += threads
    return count


def plan(name: str, values: dict[str, int | float], keys: Iterable[str]) -> tuple[dict[str, list[int]], dict[str, str]]:
    """The rlimits (by name, [soft, hard]) for the limits in ``keys``
    (``nofile`` always), and what enforces each of them ("rlimit" or "none")."""
    rlimits: dict[str, list[int]] = {}
    enforced: dict[str, str] = {}
    for key in sorted(set(keys) | {"nofile"}):
        if key not in values:
            continue
        if key == "nofile":
            value = int(values[key])
            ceiling = nr_open()
            if value > ceiling:
                raise LimitError(f"controller {name!r}: limit 'nofile': {value} is above this "
                                 f"system's fs.nr_open ({ceiling})")
            _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            if os.geteuid() != 0 and hard != resource.RLIM_INFINITY:
                value = min(value, hard)  # cannot raise it; the lower one still holds
            rlimits["RLIMIT_NOFILE"] = [value, value]
            enforced[key] = MECHANISM
        elif key == "memory":
            rlimits["RLIMIT_DATA"] = [int(values[key])] * 2
            enforced[key] = MECHANISM
        elif key == "pids":
            if nproc_exempt():
                enforced[key] = "none"
            else:
                total = user_tasks(os.getuid()) + int(values[key])
                rlimits["RLIMIT_NPROC"] = [total, total]
                enforced[key] = MECHANISM
        else:
            enforced[key] = "none"
    return rlimits, enforced


def enter(procs: list[str], rlimits: dict[str, list[int]]) -> Callable[[], None] | None:
    """The function the child runs after fork and before exec: write itself
    into each ``cgroup.procs`` file, then set the rlimits. It only calls
    os.open, os.write, os.close and setrlimit on values made beforehand. If
    anything fails it says so on stderr and exits with
    :data:`PLACEMENT_FAILED_EXIT`: the controller never runs unlimited."""
    if not procs and not rlimits:
        return None
    paths = [os.fsencode(p) for p in procs]
    limits = [(getattr(resource, name), (soft, hard)) for name, (soft, hard) in rlimits.items()]
    setrlimit = resource.setrlimit
    prefix = b"cosihost: cannot put the controller under its limits: "

    def child() -> None:
        try:
            for path in paths:
                fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
                try:
                    os.write(fd, b"0")  # 0: the writing process
                finally:
                    os.close(fd)
            for res, pair in limits:
                setrlimit(res, pair)
        except BaseException as exc:  # noqa: BLE001 - nothing may escape into exec
            try:
                os.write(2, prefix + str(exc).encode(errors="replace") + b"\n")
            finally:
                os._exit(PLACEMENT_FAILED_EXIT)

    return child


class RlimitLimiter:
    """Limits by rlimit only: no cgroup could be used."""

    mechanism = MECHANISM

    def prepare(self, name: str, limits: dict[str, Any]) -> Placement:
        values = parse_limits(name, limits)
        rlimits, enforced = plan(name, values, values)
        return Placement(name, dict(limits), self.mechanism, values=values,
                         enforced=enforced, rlimits=rlimits)

    def preexec(self, placement: Placement) -> Callable[[], None] | None:
        return enter(placement.procs, placement.rlimits)

    def place(self, placement: Placement, pid: int) -> None:
        return None

    def oom_killed(self, placement: Placement) -> bool:
        return False  # an rlimit makes allocations fail; it kills nothing

    def release(self, placement: Placement) -> None:
        placement.released = True

    def close(self) -> None:
        return None
