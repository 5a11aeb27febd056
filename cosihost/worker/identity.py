"""Becoming a controller's own user, in the new process, before its code runs.

It keeps exactly the capabilities its controller declared: every other one
leaves the bounding set while the process is still root, the declared ones
survive the uid change (keep-caps) and are set permitted, effective,
inheritable and ambient, so a tool it runs (``ip``) has them too.

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

PR_SET_KEEPCAPS, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 8, 24, 38, 47
PR_CAP_AMBIENT_RAISE = 2
CAPABILITY_VERSION_3 = 0x20080522
LAST_CAP = 40


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def become(identity: dict[str, Any]) -> None:
    """``{"uid": U, "gid": G, "groups": [socket gid]}``: drop to it, for good."""
    uid, gid, groups = int(identity["uid"]), int(identity["gid"]), [int(g) for g in identity["groups"]]
    keep = sorted(int(c) for c in identity.get("caps") or ())
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(LAST_CAP + 1):
        if cap not in keep and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:
            _fail("PR_CAPBSET_DROP")  # EINVAL (22): a capability this kernel does not have
    if keep:
        _prctl(libc, "PR_SET_KEEPCAPS", PR_SET_KEEPCAPS, 1)
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # root's capabilities go with it, but for those keep-caps kept
    if keep:
        _set_caps(libc, keep)
    _prctl(libc, "PR_SET_NO_NEW_PRIVS", PR_SET_NO_NEW_PRIVS, 1)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
        raise OSError("the process did not become its controller's user")


def _set_caps(libc: ctypes.CDLL, keep: list[int]) -> None:
    """Exactly ``keep``: permitted, effective, inheritable, then ambient."""
    data = (_Data * 2)()
    for cap in keep:
        word, bit = divmod(cap, 32)
        data[word].effective |= 1 << bit
        data[word].permitted |= 1 << bit
        data[word].inheritable |= 1 << bit
    if libc.capset(ctypes.byref(_Header(CAPABILITY_VERSION_3, 0)), data) != 0:
        _fail("capset")
    for cap in keep:
        _prctl(libc, "PR_CAP_AMBIENT_RAISE", PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)


def _prctl(libc: ctypes.CDLL, what: str, option: int, arg: int, arg2: int = 0) -> None:
    if libc.prctl(option, arg, arg2, 0, 0) != 0:
        _fail(what)


def _fail(what: str) -> None:
    errno = ctypes.get_errno()
    raise OSError(errno, f"{what} failed: {os.strerror(errno)}")

