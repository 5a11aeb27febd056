"""A real supervisor in a child process, for integration tests.

``SupervisorProcess`` starts ``python -m cosihost run`` on private folders,
waits (with a deadline, never a fixed sleep) until it is ready, hands out
clients, and on ``stop()`` makes sure that neither it nor any controller
process it started is left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import psutil

from ..client import Client
from ..errors import CosiError

T = TypeVar("T")

STATUS_TYPE = "ControllerStatuses.runtime.cosihost.dev"


def wait_for(condition: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02,
             message: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except (CosiError, OSError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {message}{extra}")
        time.sleep(interval)



def process_gone(pid: int) -> bool:
    """Has the process ended (gone, or a zombie its parent has not reaped yet)?"""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True

class SupervisorProcess:
    """One supervisor with its own runtime, state and controllers folders."""

    def __init__(self, *, controllers: dict[str, str] | None = None, config: str | None = None,
                 base: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None,
                 bundled: bool = False, wrapper: list[str] | None = None) -> None:
        # Short paths: ipc socket paths must fit in sun_path (108 bytes).
        self.base = Path(tempfile.mkdtemp(prefix="ch-", dir=base))
        # Like /run: controllers under users of their own (isolation, as root)
        # pass through to the runtime folder, which guards itself (0750).
        os.chmod(self.base, 0o755)
        self.runtime_dir = self.base / "run"
        self.state_dir = self.base / "state"
        self.controllers_dir = self.base / "controllers"
        self.controllers_dir.mkdir()
        self.config_path: Path | None = None
        #: Whether the bundled device controllers run too (off: a test sees only its own).
        self.bundled = bundled
        #: A command the supervisor runs under, e.g. ["unshare", "--uts"] (it must exec, not fork).
        self.wrapper = list(wrapper or [])
        self.env = dict(os.environ, **(env or {}))
        self.proc: subprocess.Popen[bytes] | None = None
        self._known: dict[int, psutil.Process] = {}
        for name, source in (controllers or {}).items():
            self.write_controller(name, source)
        if config is not None:
            self.config_path = self.base / "config.toml"
            self.config_path.write_text(textwrap.dedent(config))

    def write_controller(self, filename: str, source: str) -> Path:
        """Drop a controller module into the controllers folder."""
        path = self.controllers_dir / (filename if filename.endswith(".py") else filename + ".py")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(textwrap.dedent(source))
        tmp.rename(path)
        return path

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> "SupervisorProcess":
        cmd = [sys.executable, "-m", "cosihost", "run", "--controllers", str(self.controllers_dir),
               "--bundled" if self.bundled else "--no-bundled",
               "--runtime-dir", str(self.runtime_dir), "--state-dir", str(self.state_dir)]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        self.proc = subprocess.Popen(self.wrapper + cmd, env=self.env, start_new_session=True)
        if wait:
            self.wait_ready(timeout=timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self, **kwargs: Any) -> Client:
        return Client(self.runtime_dir, **kwargs)

    def ping(self) -> dict[str, Any]:
        with self.client(timeout=1.0, retries=0) as c:
            reply: dict[str, Any] = c.call("ping")
            return reply

    def wait_ready(self, *, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"supervisor exited with {self.proc.returncode}")
            return bool(self.ping().get("ready"))
        wait_for(ready, timeout=timeout, message="the supervisor to be ready")
        self._remember_children()

    def statuses(self) -> dict[str, dict[str, Any]]:
        with self.client() as c:
            return {r.metadata.id: r.spec for r in c.list("runtime", STATUS_TYPE)}

    def wait_status(self, name: str, predicate: Callable[[dict[str, Any]], bool], *,
                    timeout: float = 15.0) -> dict[str, Any]:
        def check() -> dict[str, Any]:
            spec = self.statuses().get(name)
            return spec if spec is not None and predicate(spec) else {}
        return wait_for(check, timeout=timeout, message=f"status of {name}")

    def controller_pid(self, name: str) -> int:
        return int(self.wait_status(name, lambda s: s["state"] == "running" and s["pid"])["pid"])

    def _remember_children(self) -> None:
        if self.proc is None:
            return
        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self._known[child.pid] = child
        except psutil.NoSuchProcess:
            pass

    def stop(self, *, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; kill any controller left."""
        code = None
        if self.proc is not None:
            self._remember_children()
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    code = self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            else:
                code = self.proc.returncode
        for child in self._known.values():
            try:
                if child.is_running():
                    child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(list(self._known.values()), timeout=5)
        self._known.clear()
        return code

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "SupervisorProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
