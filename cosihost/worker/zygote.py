"""The zygote: a fork server that makes controller processes start fast.

A cold ``python -m cosihost.worker run`` spends most of its start importing
Python, zmq, msgpack and cosihost. The zygote does that once, holds no zmq
context (a context must never cross a fork), and forks one child per
request. The child applies its placement (cgroup, rlimits), then runs the
controller exactly as a cold worker would. The zygote reaps its children and
reports each exit status to the supervisor, which cannot wait for processes
that are not its own.

Protocol (SOCK_SEQPACKET, one msgpack map per packet):
  supervisor -> zygote  {"op": "spawn", "id": N, "config": {...}, "setup": {...}}
  zygote -> supervisor  {"op": "spawned", "id": N, "pid": P} | {"op": "failed", "id": N, "error": "..."}
                        {"op": "exited", "pid": P, "code": C}   (C < 0: killed by signal -C)
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
from typing import Any

import msgpack

from . import entry
from .placement import apply_setup

MAX_PACKET = 1 << 20


def _send(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.send(msgpack.packb(msg, use_bin_type=True))


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"op": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status)})


def _child(sock: socket.socket, wake_r: int, wake_w: int, config: dict[str, Any], setup: dict[str, Any]) -> None:
    """In the forked child: become a controller process, never return."""
    code = 1
    try:
        sock.close()
        os.close(wake_r)
        os.close(wake_w)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the zygote ignores it; a controller must not
        os.setsid()
        apply_setup(setup, module=config["module"])  # before run_config: a change of user clears PDEATHSIG
        code = entry.run_config(dict(config, parent=os.getppid()))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(sock: socket.socket) -> int:
    """Fork children on request until the supervisor closes the socket."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the supervisor stops us by closing the socket
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            _reap(sock)
        if sock.fileno() not in ready:
            continue
        packet = sock.recv(MAX_PACKET)
        if not packet:
            return 0
        msg = msgpack.unpackb(packet, raw=False)
        if msg.get("op") != "spawn":
            continue
        try:
            pid = os.fork()
        except OSError as exc:
            _send(sock, {"op": "failed", "id": msg["id"], "error": str(exc)})
            continue
        if pid == 0:
            _child(sock, wake_r, wake_w, msg["config"], msg.get("setup") or {})
        _send(sock, {"op": "spawned", "id": msg["id"], "pid": pid})


def main(fd: int, parent: int) -> int:
    entry.die_with_parent(parent)
    try:
        import setproctitle
        setproctitle.setproctitle("cosihost: zygote")
    except ImportError:
        pass
    import zmq  # noqa: F401  preloaded for the children; no context is created here
    import psutil  # noqa: F401  what device controllers use most (the bundled ones do)

    from . import loop  # noqa: F401
    sock = socket.socket(fileno=fd)
    return serve(sock)
