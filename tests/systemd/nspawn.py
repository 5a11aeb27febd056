"""A real systemd, as PID 1 of a systemd-nspawn container, for the unit tests.

The unit file's promises (Type=notify readiness, the watchdog, Restart=,
reloads, the delegated cgroup) only mean something under a real systemd,
and the machines these tests run on usually have none as their PID 1. So
the tests boot one: this machine's own ``/usr``, read-only, over an empty
volatile root, with the interpreter and the checkout bound in, and talk to
it with ``nsenter``.

What a machine needs: root, ``systemd-nspawn`` and ``nsenter``
(``apt-get install -y systemd-container``), and a cgroup tree in which the
container can get a cgroup of its own (the hybrid layout of a machine whose
PID 1 is not systemd: ``/sys/fs/cgroup/systemd`` and ``/sys/fs/cgroup/unified``).
:func:`unavailable` says why not, for a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Sequence

import psutil

CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
#: Seconds to wait for the container's systemd to finish booting.
BOOT_TIMEOUT = 45.0
#: Seconds an orderly poweroff may take before the container is killed.
STOP_TIMEOUT = 15.0


def unavailable() -> str | None:
    """Why a container cannot boot here (a one-line skip reason), or None."""
    if os.geteuid() != 0:
        return "booting systemd in a container needs root"
    for tool in ("systemd-nspawn", "nsenter", "systemctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install -y systemd-container)"
    if not all(root.is_dir() for root in CGROUP_ROOTS):
        return ("no hybrid cgroup tree (/sys/fs/cgroup/systemd and /unified) to give the container a cgroup of "
                "its own: this machine's PID 1 is probably systemd already")
    return None


class BootError(RuntimeError):
    """The container did not come up; ``console`` holds what it printed."""

    def __init__(self, message: str, console: str) -> None:
        super().__init__(f"{message}\n{console[-3000:]}")
        self.console = console


class SystemdContainer:
    """One container: ``boot()``, ``exec(...)`` inside it, ``stop()``."""

    def __init__(self, name: str, state: Path, *, binds: Sequence[str] = ()) -> None:
        self.name = name
        self.state = state
        self.binds = list(binds)
        self.console = state / "console.log"
        self._nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def _cgroups(self) -> list[Path]:
        return [root / self.name for root in CGROUP_ROOTS]

    def _enter_cgroups(self) -> None:
        """In the child, before exec: its own cgroup, so that nspawn's do not
        land at the hierarchy's root."""
        for group in self._cgroups():
            (group / "cgroup.procs").write_text("0")

    def boot(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        for group in self._cgroups():
            group.mkdir(exist_ok=True)
        # --register=no --keep-unit: there is no systemd or D-Bus on the host to register with.
        cmd = ["systemd-nspawn", "-q", "-D", "/", "--volatile=yes", "--register=no", "--keep-unit",
               "--private-network", "-M", self.name, "--console=read-only", *self.binds,
               "-b", "systemd.firstboot=off"]
        with self.console.open("wb") as out:
            self._nspawn = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            preexec_fn=self._enter_cgroups)
        deadline = time.monotonic() + BOOT_TIMEOUT
        self.leader = self._await_leader(deadline)
        state = ""
        while time.monotonic() < deadline:
            state = self.exec("systemctl", "is-system-running", check=False, timeout=10).stdout.strip()
            if state in ("running", "degraded"):
                return
            if self._nspawn.poll() is not None:
                break
            time.sleep(0.1)  # polling a state that has no change notification we can wait on from outside
        raise BootError(f"the container's systemd did not finish booting (last state {state!r})", self.log())

    def _await_leader(self, deadline: float) -> int:
        """The container's PID 1, as this machine sees it: nspawn's child."""
        assert self._nspawn is not None
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise BootError(f"systemd-nspawn exited with {self._nspawn.returncode}", self.log())
            children = psutil.Process(self._nspawn.pid).children()
            if children:
                return children[0].pid
            time.sleep(0.02)
        raise BootError("systemd-nspawn started no container", self.log())

    def exec(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the container (all of its namespaces)."""
        done = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "--", *cmd], capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited with {done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def log(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def stop(self) -> None:
        """Power the container off (SIGTERM to nspawn), kill it if it hangs,
        and remove the cgroups it had."""
        proc = self._nspawn
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for group in self._cgroups():
            _remove_cgroup(group)
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}", ignore_errors=True)


def _remove_cgroup(group: Path) -> None:
    """Remove a cgroup and its children, deepest first (a cgroup dir only
    goes with rmdir, once empty of processes and children)."""
    if not group.is_dir():
        return
    for sub in sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            sub.rmdir()
        except OSError:
            pass
    try:
        group.rmdir()
    except OSError:
        pass
