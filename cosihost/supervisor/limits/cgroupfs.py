"""What cgroup v1 and v2 limiters share: finding cgroups, naming, placing, removing.

Each controller process gets a cgroup of its own, made fresh for each run
below the supervisor's own cgroup and named
``<root>-<supervisor pid>-<controller name>`` (``cosihost-812-net.LinkController``).
The supervisor's pid in the name keeps two supervisors that share a parent
cgroup (two test runs, a shell's cgroup) from ever touching each other's;
a directory whose supervisor no longer exists is a leftover of a crash and
is removed, with anything still running in it, when a limiter starts.

A cgroup is made even for a controller without limits: it costs little, and
release then also ends whatever the controller left running.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import logging
import os
import re
import signal
import time
from pathlib import Path
from typing import Any, Callable

from . import LimitError, Placement, parse_limits
from .rlimits import enter, plan

log = logging.getLogger("cosihost.supervisor")

CGROUP_CONTROLLERS = ("memory", "cpu", "pids")  # the cgroup controllers that hold limits
RELEASE_TIMEOUT = 2.0
PERIOD_US = 100_000  # the CPU quota's period
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


# -- reading the system ----------------------------------------------------------
def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def mounts(fstype: str, mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str, set[str]]]:
    """``(mount root, mount point, super options)`` of every mount of ``fstype``."""
    found = []
    for line in _lines(mountinfo):
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if sep and len(fields) >= 5 and len(rest) >= 3 and rest[0] == fstype:
            found.append((_unescape(fields[3]), _unescape(fields[4]), set(rest[2].split(","))))
    return found


def own_cgroups(path: str = "/proc/self/cgroup") -> list[tuple[str, set[str], str]]:
    """``(hierarchy id, controllers, path)`` per line of /proc/self/cgroup."""
    found = []
    for line in _lines(path):
        hid, sep1, rest = line.partition(":")
        ctrls, sep2, cgpath = rest.partition(":")
        if sep1 and sep2:
            found.append((hid, set(filter(None, ctrls.split(","))), cgpath))
    return found


def resolve(mount_root: str, mount_point: str, cgroup: str) -> Path | None:
    """The directory of ``cgroup`` in a mount of its hierarchy, or None when
    the mount does not show it."""
    root = mount_root.rstrip("/")
    if cgroup != root and not cgroup.startswith(root + "/"):
        return None
    return Path(mount_point) / cgroup[len(root):].lstrip("/")


# -- files ---------------------------------------------------------------------------
def write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def set_limit(name: str, key: str, path: Path, text: str) -> None:
    """Write one limit file. The kernel refusing the value is the value's
    fault (:class:`LimitError`); any other failure is the system's (OSError)."""
    try:
        write(path, text)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ERANGE, errno.EOVERFLOW):
            raise LimitError(f"controller {name!r}: limit {key!r}: the kernel refused {text!r} "
                             f"for {path.name}: {exc.strerror}") from None
        raise OSError(exc.errno, f"controller {name!r}: cannot set limit {key!r} in {path}: "
                                 f"{exc.strerror}") from None


def read(path: Path) -> str:
    with open(path) as fh:
        return fh.read()


def keyed(path: Path, key: str) -> int:
    """The number after ``key`` in a "key value" per line file (memory.events,
    memory.oom_control); 0 when absent."""
    try:
        for line in read(path).splitlines():
            name, _sep, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def tasks(directory: Path) -> list[int]:
    """The pids in a cgroup (never 0 or below: os.kill would take those as
    process groups)."""
    try:
        text = read(directory / "cgroup.procs")
    except FileNotFoundError:
        return []
    return [pid for pid in (int(p) for p in text.split() if p.isdigit()) if pid > 0]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- naming ---------------------------------------------------------------------
def leaf_name(root_name: str, name: str, pid: int | None = None) -> str:
    """``<root>-<pid>-<name>`` with the name made safe for a directory; a
    name that had to be changed or shortened gets a hash, so two names
    never share a cgroup."""
    clean = _SAFE.sub("_", name)
    if clean != name or len(clean) > 120 or clean.startswith("."):
        clean = f"{clean[:100]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return f"{root_name}-{os.getpid() if pid is None else pid}-{clean}"


def probe_name(root_name: str) -> str:
    """A leaf no controller name can produce ("~" is never left in one)."""
    return f"{root_name}-{os.getpid()}-~probe"


def quota_us(cpu: float | None) -> str | None:
    """Microseconds of CPU per :data:`PERIOD_US` for ``cpu`` cores (at
    least the kernel's 1 ms); None for no limit."""
    return None if cpu is None else str(max(1000, round(cpu * PERIOD_US)))


def owner_of(root_name: str, entry: str) -> int | None:
    match = re.match(rf"^{re.escape(root_name)}-(\d+)-", entry)
    return int(match.group(1)) if match else None


# -- emptying and removing -------------------------------------------------------------
def drain(directory: Path, deadline: float) -> bool:
    """SIGKILL everything in the cgroup until it is empty (new forks
    included); True once empty."""
    me = os.getpid()
    killer = directory / "cgroup.kill"
    use_kill_file = killer.exists()
    pause = 0.002
    while True:
        try:
            found = tasks(directory)
        except OSError:
            return True
        left = [p for p in found if p != me]
        if not left:
            return True
        killed = False
        if use_kill_file and me not in found:  # cgroup.kill would take us too
            try:
                write(killer, "1")
                killed = True
            except OSError:
                use_kill_file = False
        if not killed:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)  # the kernel needs a moment to let them go
        pause = min(pause * 2, 0.05)


class CgroupLimiter:
    """The part of the cgroup v1 and v2 limiters that does not depend on the version.

    ``bases`` maps each cgroup controller the limiter uses ("memory", "cpu",
    "pids") to the directory below which it makes the controllers' cgroups;
    in v2 they are all the same directory, in v1 one per hierarchy.
    Subclasses write the limit files and read the OOM count.
    """

    mechanism = "cgroup"
    #: The file each cgroup controller's limit goes in; a new cgroup must have it.
    LIMIT_FILES: dict[str, str] = {}

    def __init__(self, bases: dict[str, Path], *, root_name: str = "cosihost") -> None:
        self.bases = dict(bases)
        self.root_name = root_name
        self.live: dict[int, Placement] = {}
        self.leftovers: set[Path] = set()
        self.notes: list[str] = []
        self.active = False

    # -- the hooks where a test can stand in for the kernel ------------------------
    def _mkdir(self, path: Path) -> None:
        path.mkdir()

    def _rmdir(self, path: Path) -> None:
        path.rmdir()

    # -- version-specific -------------------------------------------------------------
    def limit_writes(self, ctrl: str, value: int | float | None, leaf: Path) -> list[tuple[str, str]]:
        """``(file, text)`` to write in ``leaf`` for one controller's limit
        (``None``: no limit)."""
        raise NotImplementedError

    def oom_count(self, dirs: dict[str, Path]) -> int:
        raise NotImplementedError

    def write_limits(self, name: str, dirs: dict[str, Path], values: dict[str, int | float]) -> None:
        """Every controller's file, limited or not: a reused cgroup must not
        keep an old limit."""
        for ctrl, leaf in dirs.items():
            for filename, text in self.limit_writes(ctrl, values.get(ctrl), leaf):
                set_limit(name, ctrl, leaf / filename, text)

    def check_leaf(self, dirs: dict[str, Path]) -> dict[str, str]:
        """The controllers whose files a fresh cgroup lacks, and why."""
        return {ctrl: f"a new cgroup has no {self.LIMIT_FILES[ctrl]} ({path})"
                for ctrl, path in dirs.items() if not (path / self.LIMIT_FILES[ctrl]).exists()}

    # -- setup ---------------------------------------------------------------------------
    def directories(self) -> list[Path]:
        """Where controllers' cgroups are made: the distinct base
        directories, in a stable order."""
        return list(dict.fromkeys(self.bases.values()))

    def activate(self) -> None:
        """Clean up after dead supervisors, prove a cgroup can be made and
        removed here, and arrange for cleanup at exit. Raises OSError."""
        self.clean_stale()
        leaf = probe_name(self.root_name)
        dirs = {ctrl: base / leaf for ctrl, base in self.bases.items()}
        made: list[Path] = []
        try:
            for path in [home / leaf for home in self.directories()]:
                if path.exists():
                    self.remove(path)
                self._mkdir(path)
                made.append(path)
            for ctrl, why in self.check_leaf(dirs).items():
                self.notes.append(f"{ctrl} left to rlimits: {why}")
                del self.bases[ctrl]
        finally:
            for path in reversed(made):
                try:
                    self._rmdir(path)
                except OSError:
                    self.leftovers.add(path)
        if not self.directories():
            raise OSError(errno.ENOTSUP, "; ".join(self.notes) or "no usable cgroup controller")
        self.active = True
        atexit.register(self.close)

    def clean_stale(self) -> list[Path]:
        """Remove the cgroups of supervisors that no longer run (and end
        what still runs in them); returns what was removed."""
        removed = []
        for base in self.directories():
            try:
                entries = list(os.scandir(base))
            except OSError:
                continue
            for entry in entries:
                owner = owner_of(self.root_name, entry.name)
                if owner is None or owner == os.getpid() or pid_alive(owner) or not entry.is_dir():
                    continue
                path = Path(entry.path)
                if self.remove(path):
                    log.info("limits: removed %s, left by supervisor %d", path, owner)
                    removed.append(path)
                else:
                    log.warning("limits: could not remove %s, left by supervisor %d", path, owner)
        return removed

    def remove(self, path: Path, *, timeout: float = RELEASE_TIMEOUT) -> bool:
        """End every process in ``path`` and remove it; True when it is gone."""
        deadline = time.monotonic() + timeout
        drain(path, deadline)
        pause = 0.002
        while True:
            try:
                self._rmdir(path)
                return True
            except FileNotFoundError:
                return True
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() >= deadline:
                    return False
            drain(path, deadline)
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _retry_leftovers(self) -> None:
        for path in list(self.leftovers):
            if self.remove(path, timeout=0.1):
                self.leftovers.discard(path)

    # -- the Limiter interface ------------------------------------------------------------
    def prepare(self, name: str, limits: dict[str, Any]) -> Placement:
        values = parse_limits(name, limits)
        covered = {key for key in values if key in self.bases}
        rlimits, enforced = plan(name, values, set(values) - covered)
        enforced.update({key: self.mechanism for key in covered})
        self._retry_leftovers()
        leaf = leaf_name(self.root_name, name)
        dirs = {ctrl: base / leaf for ctrl, base in self.bases.items()}
        made: list[Path] = []
        try:
            for path in [home / leaf for home in self.directories()]:
                if path.exists():  # a run whose release could not finish
                    if not self.remove(path):
                        raise OSError(errno.EBUSY, f"controller {name!r}: {path} is still busy")
                self._mkdir(path)
                made.append(path)
            self.write_limits(name, dirs, values)
            oom_base = self.oom_count(dirs)
        except (OSError, LimitError):
            for path in reversed(made):
                if not self.remove(path):
                    self.leftovers.add(path)
            raise
        placement = Placement(name, dict(limits), self.mechanism,
                              paths=[str(p) for p in made], values=values,
                              enforced={key: enforced[key] for key in sorted(enforced)},
                              cgroups={ctrl: str(p) for ctrl, p in dirs.items()},
                              procs=[str(p / "cgroup.procs") for p in made],
                              rlimits=rlimits, oom_base=oom_base)
        self.live[id(placement)] = placement
        return placement

    def preexec(self, placement: Placement) -> Callable[[], None] | None:
        return enter(placement.procs, placement.rlimits)

    def place(self, placement: Placement, pid: int) -> None:
        """The child places itself before any controller code runs (after
        fork, before exec; or a fork server's child, before it imports the
        controller). This only makes sure of it: a child that has not got
        there yet is moved from here, which is harmless either way."""
        for procs in placement.procs:
            try:
                inside = pid in tasks(Path(procs).parent)
            except OSError:
                inside = False
            if not inside and pid_alive(pid) and not _is_zombie(pid):
                try:
                    write(Path(procs), str(pid))
                except OSError as exc:
                    log.error("limits: cannot move %s (pid %d) into %s: %s", placement.name, pid, procs, exc)

    def oom_killed(self, placement: Placement) -> bool:
        dirs = {ctrl: Path(p) for ctrl, p in placement.cgroups.items()}
        return self.oom_count(dirs) > placement.oom_base

    def release(self, placement: Placement) -> None:
        if placement.released:
            return
        placement.released = True
        self.live.pop(id(placement), None)
        for path in map(Path, placement.paths):
            if not self.remove(path):
                self.leftovers.add(path)
                log.warning("limits: %s: cannot remove %s yet; will retry", placement.name, path)

    def close(self) -> None:
        """Release every placement still held and retry what could not be
        removed (the supervisor's exit calls this too)."""
        for placement in list(self.live.values()):
            self.release(placement)
        for path in list(self.leftovers):
            if self.remove(path):
                self.leftovers.discard(path)
        self.active = False
        atexit.unregister(self.close)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rpartition(b")")[2].split()[0] == b"Z"
    except (OSError, IndexError):
        return True
