"""Controller processes: probing modules, starting, judging exits, backoff.

The supervisor never imports controller code. A module is probed in a
short-lived child (``python -m cosihost.worker probe``) that prints its
declarations; each controller class then runs in a child of its own. A
module that raises, hangs, exits or crashes during the probe is reported
under its own name and harms nothing else.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import importlib.util
import json
import marshal
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack

from ..settings import Timing
from .limits import Placement
from .registry import Declaration

STARTING, RUNNING, BACKOFF, CRASH_LOOP, STOPPED, REFUSED = (
    "starting", "running", "backoff", "crash-loop", "stopped", "refused")


@dataclasses.dataclass
class ProbeResult:
    module: Path
    digest: str
    declarations: list[dict[str, Any]]
    error: str = ""


def module_digest(path: Path) -> str:
    try:
        return _digest(path.read_bytes())
    except OSError:
        return ""


def _digest(source: bytes) -> str:
    return hashlib.sha256(source).hexdigest()[:16]


def discover(*folders: Path) -> list[Path]:
    """Controller modules: ``*.py`` files not starting with ``_`` or ``.``.

    Folders are layered as systemd layers unit folders: a module in a later
    folder replaces the one of the same file name in an earlier folder (the
    drop-in folder over the bundled one), and an empty file replaces it with
    nothing, which is how one bundled controller is turned off.
    """
    by_name: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            by_name.update((p.name, p) for p in folder.glob("*.py") if not p.name.startswith(("_", ".")))
    return sorted((p for p in by_name.values() if not _masked(p)), key=lambda p: (p.name, str(p)))


def _masked(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return True


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def probe(module: Path, *, timeout: float) -> ProbeResult:
    """Import ``module`` in a child and read back its declarations."""
    digest = module_digest(module)
    cmd = [sys.executable, "-m", "cosihost.worker", "probe", str(module)]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return ProbeResult(module, digest, [], f"import did not finish within {timeout:g} s (hung)")
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        last = lines[-1] if lines else ""
        return ProbeResult(module, digest, [],
                           f"import failed: {describe_exit(done.returncode)}" + (f": {last}" if last else ""))
    try:
        decls = json.loads(done.stdout)["controllers"]
    except (ValueError, KeyError, TypeError):
        return ProbeResult(module, digest, [], "import printed something that is not a declaration")
    if not decls:
        return ProbeResult(module, digest, [], "defines no Controller subclass with a name")
    return ProbeResult(module, digest, decls)


@dataclasses.dataclass
class Slot:
    """One controller: its declaration, its current process, its history."""

    name: str
    module: Path
    cls: str
    digest: str
    decl: Declaration | None
    declared_inputs: list[Any] = dataclasses.field(default_factory=list)  # the module's, before update_inputs
    state: str = STARTING
    proc: Any = None  # subprocess.Popen or zygote.ZygoteProc
    secret: str = ""
    token: str = ""
    restarts: int = 0
    started_at: float = 0.0
    started_wall: float = 0.0
    last_seen: float = 0.0
    attempted: bool = False
    counters: dict[str, int] = dataclasses.field(default_factory=dict)
    last_exit: dict[str, Any] | None = None
    failures: int = 0
    next_start: float | None = None
    crash_times: collections.deque[float] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=64))
    kill_reason: str = ""
    placement: Placement | None = None
    #: The user it runs as (uid, gid, groups), or None: the supervisor's.
    identity: dict[str, Any] | None = None
    waiters: list[Any] = dataclasses.field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


#: A module larger than this is read by the controller itself, not sent to it.
MAX_SOURCE = 256 * 1024


def worker_config(slot: Slot, *, runtime_dir: Path | str, timing: Timing) -> dict[str, Any]:
    """A fresh secret and everything a controller process needs to start.

    The module's source goes along: a controller under its own user may not
    be able to read the folder the module lives in (the supervisor reads it
    for it, as it reads it to probe it)."""
    slot.secret = secrets.token_hex(16)
    try:
        source: bytes | None = slot.module.read_bytes()
    except OSError:
        source = None
    if source is not None and len(source) > MAX_SOURCE:
        source = None
    code = None
    if source is not None and _digest(source) == slot.digest:
        code = compiled(str(slot.module), source)
    return {
        "name": slot.name, "module": str(slot.module), "class": slot.cls,
        "source": None if code else source, "code": code, "magic": importlib.util.MAGIC_NUMBER,
        "secret": slot.secret, "runtime_dir": str(runtime_dir), "parent": os.getpid(),
        "heartbeat": timing.heartbeat, "backoff_cap": timing.backoff_cap,
        "subscriber_hwm": timing.subscriber_hwm, "request_timeout": timing.request_timeout,
    }


@functools.lru_cache(maxsize=128)
def compiled(path: str, source: bytes) -> bytes | None:
    """The module's code, compiled once here and marshalled, for every start.

    Compiling in each controller process cost about 1.4 MB of its private
    memory (the compiler's allocations scatter over pages shared with the
    zygote) and CPU at every restart; unmarshalling is what importing a
    ``.pyc`` does. Only a source whose digest is the probed one is compiled
    here: the probe child compiled those same bytes already, so nothing a
    module can hold breaks the supervisor's compiler."""
    try:
        return marshal.dumps(compile(source, path, "exec", dont_inherit=True))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None  # the controller compiles it and reports the error itself


def spawn_cold(config: dict[str, Any], *, preexec: Any = None,
               pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    """Start a fresh interpreter; the settings and secret go over stdin."""
    proc = subprocess.Popen([sys.executable, "-m", "cosihost.worker", "run"],
                            stdin=subprocess.PIPE, start_new_session=True, preexec_fn=preexec,
                            pass_fds=pass_fds)
    assert proc.stdin is not None
    try:
        proc.stdin.write(msgpack.packb(config))
        proc.stdin.close()
    except BrokenPipeError:
        pass
    return proc


def started(slot: Slot, proc: Any) -> None:
    slot.proc = proc
    slot.token = ""
    slot.attempted = False
    slot.kill_reason = ""
    slot.state = STARTING
    slot.started_at = slot.last_seen = time.monotonic()
    slot.started_wall = time.time()


def next_delay(slot: Slot, timing: Timing, now: float) -> float:
    """Exponential backoff, reset after a stable run; marks crash loops."""
    if slot.started_at and now - slot.started_at >= timing.stable_after:
        slot.failures = 0
    slot.failures += 1
    slot.crash_times.append(now)
    recent = [t for t in slot.crash_times if now - t <= timing.crash_loop_window]
    slot.state = CRASH_LOOP if len(recent) >= timing.crash_loop_restarts else BACKOFF
    return min(timing.backoff_cap, timing.backoff_base * 2.0 ** (slot.failures - 1))


def stop(slot: Slot, *, reason: str) -> None:
    """Ask the process to stop (SIGTERM); the caller escalates after a timeout."""
    if slot.alive():
        slot.kill_reason = reason
        assert slot.proc is not None
        try:
            slot.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass


def kill(slot: Slot, *, reason: str) -> None:
    if slot.alive():
        slot.kill_reason = slot.kill_reason or reason
        assert slot.proc is not None
        try:
            slot.proc.kill()
        except ProcessLookupError:
            pass
