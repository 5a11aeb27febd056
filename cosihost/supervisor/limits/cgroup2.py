"""Limits by cgroup v2: a delegated subtree, as systemd gives with ``Delegate=yes``.

The supervisor's own cgroup (the ``0::/path`` line of /proc/self/cgroup)
must be writable. v2 lets a cgroup either hold processes or hand controllers to children, not
both ("no internal processes"), so the supervisor first moves itself into a
leaf of its own, ``<own>/supervisor``, then enables the controllers in
``<own>/cgroup.subtree_control``. Each controller process then gets
``<own>/cosihost-<pid>-<name>`` with:

    memory  memory.max, and memory.oom.group = 1 (an OOM kill ends the whole
            controller, not one of its children); OOM kills counted by
            "oom_kill" in memory.events
    cpu     cpu.max "quota period" (period 100 ms)
    pids    pids.max

Controllers the cgroup does not offer (a container may delegate a subtree
with none) leave their limits to rlimits, but each controller process still
gets its own cgroup: ``cgroup.kill`` then ends all it left behind, and the
tree shows which process belongs to which controller. With no controller
to enable, the supervisor needs no leaf and stays where it is.

This refuses to start when controllers are to be enabled but other
processes share the supervisor's cgroup (a shell's session scope, say): it
cannot move them, and enabling controllers there would fail. The root
cgroup is exempt from the rule, so there the supervisor stays put. On close
the supervisor moves back and the controllers it enabled are disabled again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

from .cgroupfs import (CGROUP_CONTROLLERS, PERIOD_US, CgroupLimiter, keyed, mounts, own_cgroups, quota_us, read,
                       resolve, tasks, write)

log = logging.getLogger("cosihost.supervisor")

SUPERVISOR_LEAF = "supervisor"


class Cgroup2Limiter(CgroupLimiter):
    mechanism = "cgroup2"
    LIMIT_FILES = {"memory": "memory.max", "cpu": "cpu.max", "pids": "pids.max"}

    def __init__(self, base: Path, controllers: Iterable[str], *, root_name: str = "cosihost",
                 root_cgroup: bool = False) -> None:
        super().__init__({c: base for c in CGROUP_CONTROLLERS if c in set(controllers)},
                         root_name=root_name)
        self.base = base
        self.root_cgroup = root_cgroup      # the hierarchy's root: processes may stay in it
        self.moved_to: Path | None = None   # the leaf we moved ourselves into
        self.enabled: list[str] = []        # what we enabled in base's cgroup.subtree_control

    @classmethod
    def find(cls, *, root_name: str = "cosihost", mountinfo: str = "/proc/self/mountinfo",
             cgroup_file: str = "/proc/self/cgroup") -> tuple["Cgroup2Limiter | None", str]:
        """A limiter for this process's cgroup v2 (not yet active), or None and why not."""
        mounted = mounts("cgroup2", mountinfo)
        if not mounted:
            return None, "no cgroup2 file system is mounted"
        line = next((c for c in own_cgroups(cgroup_file) if c[0] == "0" and not c[1]), None)
        if line is None:
            return None, "/proc/self/cgroup has no cgroup v2 line"
        base = next((b for b in (resolve(r, p, line[2]) for r, p, _o in mounted)
                     if b is not None and b.is_dir()), None)
        if base is None:
            return None, f"our cgroup {line[2]} is not visible in any cgroup2 mount"
        try:
            available = read(base / "cgroup.controllers").split()
        except OSError as exc:
            return None, f"cannot read {base / 'cgroup.controllers'}: {exc.strerror}"
        wanted = [c for c in CGROUP_CONTROLLERS if c in available]
        needed = [base, base / "cgroup.procs"] + ([base / "cgroup.subtree_control"] if wanted else [])
        for path in needed:
            if not os.access(path, os.W_OK):
                return None, f"{path} is not writable (no delegated subtree)"
        why = ""
        if len(wanted) < len(CGROUP_CONTROLLERS):
            why = (f"{base} offers {', '.join(wanted) or 'none'} of memory, cpu, pids "
                   f"(cgroup.controllers: {' '.join(available) or 'empty'}): the rest by rlimit")
        root_cgroup = not (base / "cgroup.type").exists()  # only the root lacks it
        if wanted and not root_cgroup:
            try:
                enabled = read(base / "cgroup.subtree_control").split()
                others = [p for p in tasks(base) if p != os.getpid()]
            except OSError as exc:
                return None, f"cannot read {base}: {exc.strerror}"
            if not set(wanted) <= set(enabled) and others:
                return None, (f"{base} also holds {len(others)} other process(es), so no controller "
                              f"can be enabled below it; run the supervisor in a cgroup of its own "
                              f"(systemd Delegate=yes)")
        return cls(base, wanted, root_name=root_name, root_cgroup=root_cgroup), why

    def directories(self) -> list[Path]:
        return [self.base]  # even with no controller to enable: a cgroup still groups and kills

    # -- the supervisor's own place ------------------------------------------------------
    def activate(self) -> None:
        try:
            self.enter_leaf()
            super().activate()
        except OSError:
            self.leave_leaf()
            raise

    def enter_leaf(self) -> None:
        """Move the supervisor into ``<base>/supervisor`` (not from the root
        cgroup) and enable the controllers for the children of ``base``."""
        enabled = read(self.base / "cgroup.subtree_control").split()
        need = [c for c in self.bases if c not in enabled]
        if not need:
            return
        if not self.root_cgroup:
            leaf = self.base / SUPERVISOR_LEAF
            if not leaf.is_dir():
                self._mkdir(leaf)
            write(leaf / "cgroup.procs", str(os.getpid()))
            self.moved_to = leaf
        write(self.base / "cgroup.subtree_control", " ".join(f"+{c}" for c in need))
        self.enabled = need

    def leave_leaf(self) -> None:
        """Undo :meth:`enter_leaf` as far as the system lets us."""
        if self.enabled:
            try:
                write(self.base / "cgroup.subtree_control", " ".join(f"-{c}" for c in self.enabled))
                self.enabled = []
            except OSError as exc:
                log.warning("limits: cannot disable %s in %s: %s", " ".join(self.enabled), self.base, exc)
                return
        if self.moved_to is not None:
            try:
                write(self.base / "cgroup.procs", str(os.getpid()))
                self._rmdir(self.moved_to)
                self.moved_to = None
            except OSError as exc:
                log.warning("limits: cannot leave %s: %s", self.moved_to, exc)

    def close(self) -> None:
        super().close()
        self.leave_leaf()

    # -- limit files -------------------------------------------------------------------
    def limit_writes(self, ctrl: str, value: int | float | None, leaf: Path) -> list[tuple[str, str]]:
        if ctrl == "memory":
            group = [("memory.oom.group", "1")] if (leaf / "memory.oom.group").exists() else []
            return [("memory.max", "max" if value is None else str(int(value)))] + group
        if ctrl == "cpu":
            return [("cpu.max", f"{quota_us(value) or 'max'} {PERIOD_US}")]
        return [("pids.max", "max" if value is None else str(int(value)))]

    def oom_count(self, dirs: dict[str, Path]) -> int:
        if "memory" not in dirs:
            return 0
        return keyed(dirs["memory"] / "memory.events", "oom_kill")
