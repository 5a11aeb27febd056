"""The supervisor's end of the zygote (see :mod:`cosihost.worker.zygote`).

:class:`Zygote` starts the fork server and asks it for controller processes;
each comes back as a :class:`ZygoteProc`, which quacks like the part of
``subprocess.Popen`` supervision uses (``pid``, ``poll``, ``send_signal``,
``kill``, ``wait``). Exit statuses arrive as messages from the zygote, read
by the main loop whenever the zygote's socket is readable.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import msgpack

log = logging.getLogger("cosihost.supervisor")
MAX_PACKET = 1 << 20


class ZygoteProc:
    def __init__(self, zygote: "Zygote", pid: int) -> None:
        self.zygote = zygote
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise subprocess.TimeoutExpired(f"controller pid {self.pid}", timeout or 0)
            self.zygote.pump(remaining)
        return self.returncode


class Zygote:
    def __init__(self, *, pass_fds: tuple[int, ...] = ()) -> None:
        """``pass_fds``: descriptors every controller process inherits (the
        runtime folder's, see :meth:`identity.Isolation.open_runtime_dir`)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cosihost.worker", "zygote", str(theirs.fileno()), str(os.getpid())],
            pass_fds=[theirs.fileno(), *pass_fds], stdin=subprocess.DEVNULL, start_new_session=True)
        theirs.close()
        self.children: dict[int, ZygoteProc] = {}
        self._next_id = 0
        self._spawned: dict[int, dict[str, Any]] = {}

    def fileno(self) -> int:
        return self.sock.fileno()

    def alive(self) -> bool:
        return self.proc.poll() is None and self.sock.fileno() >= 0

    def spawn(self, config: dict[str, Any], setup: dict[str, Any], *, timeout: float = 10.0) -> ZygoteProc:
        self._next_id += 1
        ident = self._next_id
        self.sock.send(msgpack.packb({"op": "spawn", "id": ident, "config": config, "setup": setup},
                                     use_bin_type=True))
        deadline = time.monotonic() + timeout
        while ident not in self._spawned:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.alive():
                raise OSError("the zygote did not answer a spawn request")
            self.pump(remaining)
        answer = self._spawned.pop(ident)
        if answer["op"] == "failed":
            raise OSError(f"the zygote could not fork: {answer['error']}")
        proc = ZygoteProc(self, answer["pid"])
        self.children[proc.pid] = proc
        return proc

    def pump(self, timeout: float | None = 0.0) -> None:
        """Read what the zygote sent (waiting up to ``timeout`` for the first)."""
        wait = timeout
        while True:
            ready, _, _ = select.select([self.sock], [], [], wait)
            if not ready:
                return
            wait = 0.0
            try:
                packet = self.sock.recv(MAX_PACKET)
            except OSError:
                packet = b""
            if not packet:
                self._lost()
                return
            self._dispatch(msgpack.unpackb(packet, raw=False))

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if msg.get("op") in ("spawned", "failed"):
            self._spawned[msg["id"]] = msg
        elif msg.get("op") == "exited":
            proc = self.children.pop(msg["pid"], None)
            if proc is not None:
                proc.returncode = msg["code"]

    def _lost(self) -> None:
        """The zygote died: its children died with it (PDEATHSIG)."""
        if self.children:
            log.error("the zygote died; %d controller process(es) went with it", len(self.children))
        self.close()

    def close(self) -> None:
        """Stop the zygote; its children die with it (PDEATHSIG), and are
        told so, however the zygote ended."""
        for proc in self.children.values():
            if proc.returncode is None:
                proc.returncode = -signal.SIGKILL
        self.children.clear()
        if self.sock.fileno() >= 0:
            self.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
