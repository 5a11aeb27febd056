"""Becoming a controller's own user, in the new process, before its code runs.

Run as root, every controller would otherwise be root too: able to read the
admin token and the state database, to signal or trace the supervisor and
the other controllers, and to write anywhere. Under a uid of its own, with
only the socket group as a supplementary group and ``no_new_privs`` set,
the kernel holds those lines whatever the controller's code does.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

PR_SET_NO_NEW_PRIVS = 38


def become(identity: dict[str, Any]) -> None:
    """``{"uid": U, "gid": G, "groups": [socket gid]}``: drop to it, for good."""
    uid, gid, groups = int(identity["uid"]), int(identity["gid"]), [int(g) for g in identity["groups"]]
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # root's capabilities go with it: permitted, effective, ambient
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
        raise OSError("the process did not become its controller's user")
