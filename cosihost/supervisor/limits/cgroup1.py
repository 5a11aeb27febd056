"""Limits by cgroup v1: the memory, cpu and pids hierarchies.

Each hierarchy is mounted on its own (``/sys/fs/cgroup/memory``, ...) or with
others (``cpu,cpuacct``); /proc/self/mountinfo says where, and
/proc/self/cgroup says which cgroup of it the supervisor is in. A
controller's cgroups are made below those, one per hierarchy:

    memory  memory.limit_in_bytes (swap is not limited, as with v2's memory.max);
            OOM kills counted by "oom_kill" in memory.oom_control
    cpu     cpu.cfs_quota_us per cpu.cfs_period_us (100 ms)
    pids    pids.max

v1 has no "no internal processes" rule, so the supervisor stays where it
is. A hierarchy that is missing or not writable is left out; its limit
falls back to the rlimit (see :mod:`.rlimits`).
"""

from __future__ import annotations

import os
from pathlib import Path

from .cgroupfs import (CGROUP_CONTROLLERS, PERIOD_US, CgroupLimiter, keyed, mounts, own_cgroups, quota_us,
                       resolve)


class Cgroup1Limiter(CgroupLimiter):
    mechanism = "cgroup1"
    LIMIT_FILES = {"memory": "memory.limit_in_bytes", "cpu": "cpu.cfs_quota_us", "pids": "pids.max"}

    @classmethod
    def find(cls, *, root_name: str = "cosihost", mountinfo: str = "/proc/self/mountinfo",
             cgroup_file: str = "/proc/self/cgroup") -> tuple["Cgroup1Limiter | None", str]:
        """A limiter for the v1 hierarchies this process can make cgroups
        in (not yet active), and why the others cannot be used; or None
        and why none can."""
        mounted = mounts("cgroup", mountinfo)
        own = own_cgroups(cgroup_file)
        bases: dict[str, Path] = {}
        missing: list[str] = []
        for ctrl in CGROUP_CONTROLLERS:
            line = next((c for c in own if ctrl in c[1]), None)
            mount = next((m for m in mounted if ctrl in m[2]), None)
            if mount is None:
                missing.append(f"no {ctrl} hierarchy is mounted")
                continue
            if line is None:
                missing.append(f"{ctrl}: /proc/self/cgroup names no cgroup of ours")
                continue
            base = resolve(mount[0], mount[1], line[2])
            if base is None or not base.is_dir():
                missing.append(f"{ctrl}: our cgroup {line[2]} is not visible under {mount[1]}")
                continue
            if not os.access(base, os.W_OK):
                missing.append(f"{ctrl}: {base} is not writable")
                continue
            bases[ctrl] = base
        why = "; ".join(missing)
        if not bases:
            return None, why or "no cgroup v1 hierarchy"
        return cls(bases, root_name=root_name), why

    def limit_writes(self, ctrl: str, value: int | float | None, leaf: Path) -> list[tuple[str, str]]:
        if ctrl == "memory":
            return [("memory.limit_in_bytes", "-1" if value is None else str(int(value)))]
        if ctrl == "cpu":
            return [("cpu.cfs_period_us", str(PERIOD_US)), ("cpu.cfs_quota_us", quota_us(value) or "-1")]
        return [("pids.max", "max" if value is None else str(int(value)))]

    def oom_count(self, dirs: dict[str, Path]) -> int:
        if "memory" not in dirs:
            return 0
        return keyed(dirs["memory"] / "memory.oom_control", "oom_kill")
