"""Local users who may read but not write: ``[access] writers``.

``[access] group`` lets a group's members reach the sockets at all. With
``writers`` set, the supervisor also asks the kernel who each connection
is (ZAP on the request socket; on ipc libzmq passes the peer's uid, gid and
pid), and a user who is neither root, the supervisor's own user nor a
member of ``writers`` may read and watch but not write, restart or reload.
Controllers and the admin are known by their tokens and are unaffected.
"""

from __future__ import annotations

import os

ZAP_DOMAIN = b"cosihost.api"
#: What a read-only local user may not send.
REFUSED = frozenset({"create", "update", "destroy", "teardown", "add_finalizer", "remove_finalizer",
                     "transaction", "restart", "reload"})


def authenticate(address: bytes, writers: int) -> tuple[bytes, bytes, bytes]:
    """The ZAP answer for a local connection: always admitted, named by its role and uid."""
    parts = address.decode(errors="replace").rsplit(":", 3)
    if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
        return b"200", b"OK", b"local:read:?"   # no credentials: the least a user may do
    uid, gid, pid = (int(p) for p in parts[1:])
    writer = uid in (0, os.geteuid()) or gid == writers or writers in _groups(pid)
    return b"200", b"OK", f"local:{'write' if writer else 'read'}:{uid}".encode()


def read_only(user_id: str) -> str | None:
    """The uid of a read-only local user, from the ZAP user id; None for a writer."""
    _, role, uid = (user_id.split(":") + ["", "", ""])[:3]
    return uid if role == "read" else None


def _groups(pid: int) -> set[int]:
    """The supplementary groups of a process (the kernel passes only its gid)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()
