"""Becoming a controller's own user, in the new process, before its code runs.

It keeps exactly the capabilities its controller declared (and the config
granted; see cosihost.supervisor.identity): every other one
leaves the bounding set while the process is still root, the declared ones
survive the uid change (keep-caps) and are set permitted, effective,
inheritable and ambient, so a tool it runs (``ip``) has them too.

Run as root, every controller would otherwise be root too: able to read the
admin token and the state database, to signal or trace the supervisor and
the other controllers, and to write anywhere. Under a uid of its own, with
only the socket group as a supplementary group and ``no_new_privs`` set,
the kernel holds those lines whatever the controller's code does. A named
user (``user = "daemon"``) is taken the same way, with its account's uid and
primary gid.

It is taken in the new process after exec (a cold start reads it with its
settings) or after fork (a zygote child), never in a ``preexec_fn`` before
exec: the interpreter may live where the controller's user cannot reach (a
Python under a 0700 home). The folders of the import path are opened while
still root, and those the new user cannot enter are reached through those
descriptors afterwards (``/proc/self/fd/N``): it reads what any user of a
usual installation reads, and no more, since the files' own modes apply.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import sys
from types import ModuleType
from typing import Any, Sequence

PR_SET_KEEPCAPS, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 8, 24, 38, 47
PR_CAP_AMBIENT_RAISE = 2
CAPABILITY_VERSION_3 = 0x20080522
LAST_CAP = 40
#: The exit code of a process that could not take its identity (it says why
#: on stderr first); it never runs controller code as root.
IDENTITY_FAILED_EXIT = 123


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



def take_or_exit(identity: dict[str, Any], *, module: str = "") -> None:
    """Become ``identity`` keeping the import path (and ``module``'s folder,
    for helpers beside it) importable; exit with :data:`IDENTITY_FAILED_EXIT`
    saying why if the kernel refuses any step."""
    folder = os.path.dirname(os.path.abspath(module)) if module else ""
    if folder and folder not in sys.path:
        sys.path.append(folder)
    handles = open_dirs(sys.path)
    try:
        become(identity)
    except OSError as exc:
        print(f"cosihost: cannot take the controller's identity: {exc}", file=sys.stderr, flush=True)
        os._exit(IDENTITY_FAILED_EXIT)
    reroute(handles)


def open_dirs(paths: list[str]) -> dict[str, int]:
    """Descriptors of the import path's folders, opened while still root."""
    handles: dict[str, int] = {}
    for path in paths:
        if path and os.path.isabs(path) and path not in handles and os.path.isdir(path):
            try:
                handles[path] = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                pass
    return handles


def reroute(handles: dict[str, int]) -> None:
    """Name each import folder the new user cannot enter by its descriptor:
    in ``sys.path``, and for the packages already imported from it (their
    submodules load later) by a finder asked first, which looks in their
    ``__path__`` renamed. The packages themselves are left untouched: in a
    zygote child, writing to each one's ``__path__`` would copy a page of
    the zygote's memory per package (about 1 MB per controller). The
    descriptors of folders the user can enter are closed."""
    moved: dict[str, str] = {}
    for path, fd in handles.items():
        if os.access(path, os.R_OK | os.X_OK):
            os.close(fd)
        else:
            moved[path] = f"/proc/self/fd/{fd}"
    if moved:
        rename = _Renamer(moved)
        sys.path[:] = [rename(p) for p in sys.path]
        sys.meta_path.insert(0, _MovedPackages(rename))


class _Renamer:
    def __init__(self, moved: dict[str, str]) -> None:
        self.moved = moved

    def __call__(self, entry: str) -> str:
        for old, new in self.moved.items():
            if entry == old or entry.startswith(old + os.sep):
                return new + entry[len(old):]
        return entry


class _MovedPackages:
    """A meta path finder: a submodule of a package whose folder moved is
    looked up in the renamed folder (the default finders would try the old
    path and fail with EACCES)."""

    def __init__(self, rename: _Renamer) -> None:
        self.rename = rename

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if path is None:
            return None  # top level: sys.path is renamed already
        entries = [self.rename(p) if isinstance(p, str) else p for p in path]
        if entries == list(path):
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, entries, target)
