"""The runtime folder a supervisor serves from, and the state folder it keeps.

A lock file makes each folder one supervisor's: a second one started on the
same folder stops at once with the first one's pid, instead of unlinking its
sockets. The admin token lives beside the sockets, readable by the
supervisor's user only; the folder and the sockets may be shared with a
group (``[access] group``, or the controllers' group under isolation).
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import IO, Any

from .. import wire
from ..errors import InvalidRequestError

log = logging.getLogger("cosihost.supervisor")


class AlreadyRunning(RuntimeError):
    pass


def lock_dir(directory: Path, doing: str) -> IO[Any]:
    """Hold ``directory/supervisor.lock`` for our lifetime: one supervisor per folder."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    lock = open(directory / "supervisor.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        pid = lock.read().strip() or "?"
        lock.close()
        raise AlreadyRunning(f"another supervisor (pid {pid}) is {doing} {directory}") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def write_admin_token(rd: Path, token: str) -> None:
    fd = os.open(rd / "admin.token", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)


def share_with_group(rd: Path, gid: int) -> None:
    """Let the members of ``gid`` (``[access] group``) use the sockets as
    local users: the folder 0750 and the sockets 0660, in that group. The
    admin token stays 0600, the supervisor's alone."""
    for path, mode in ((rd, 0o750), (rd / wire.API_SOCKET, 0o660), (rd / wire.EVENTS_SOCKET, 0o660)):
        try:
            os.chown(path, -1, gid)
            os.chmod(path, mode)
        except OSError as exc:
            raise InvalidRequestError(f"[access] group {gid}: cannot give {path} to it: {exc.strerror} "
                                      "(the supervisor must be root or a member of that group)") from None


def reshare(rd: Path, group: int | None) -> None:
    """Give the runtime folder back to the socket group if it lost it.
    systemd sets up RuntimeDirectory= again for every command of the unit,
    ExecReload's ``kill -HUP`` included: it finds the folder's group is
    not root's and chowns the whole tree to root, and a controller started
    by the reload could no longer reach the sockets."""
    try:
        if group is None or os.stat(rd).st_gid == group:
            return
        log.info("the runtime folder lost its group (systemd resets it on reload): giving it back to %d", group)
        share_with_group(rd, group)
    except (OSError, InvalidRequestError) as exc:
        log.error("cannot give the runtime folder back to group %d: %s", group, exc)


def remove_endpoints(rd: Path) -> None:
    """The sockets and the admin token, when the supervisor stops."""
    for name in (wire.API_SOCKET, wire.EVENTS_SOCKET, "admin.token"):
        try:
            (rd / name).unlink()
        except FileNotFoundError:
            pass
