"""Linux capabilities a controller may declare, by name.

A controller that changes the device (brings a link up, sets the clock,
renames the host) needs one or two of root's powers, not all of them.
With ``[isolation]`` it runs as a user of its own and keeps exactly the
capabilities it declares, ``capabilities = ["CAP_NET_ADMIN"]``, in its
permitted, effective, ambient and bounding sets, plus those the config
grants it (``[isolation.controllers."NAME"] grant``); the config may refuse
some (``[isolation] deny``, or that table's ``deny``). The numbers are the
kernel's (linux/capability.h).
"""

from __future__ import annotations

from typing import Any, Iterable

from .errors import InvalidRequestError

_NAMES = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
    "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
    "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE "
    "AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ "
    "PERFMON BPF CHECKPOINT_RESTORE").split()
#: "CAP_NET_ADMIN" -> 12, and so on.
CAPABILITIES: dict[str, int] = {f"CAP_{name}": number for number, name in enumerate(_NAMES)}
LAST = len(_NAMES) - 1


def checked(names: Any, *, who: str) -> list[str]:
    """The capability names, each one the kernel knows; InvalidRequestError otherwise."""
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise InvalidRequestError(f"{who}: capabilities must be a list of names like \"CAP_NET_ADMIN\"")
    unknown = [n for n in names if n.upper() not in CAPABILITIES]
    if unknown:
        raise InvalidRequestError(f"{who}: unknown capability {unknown[0]!r} (e.g. CAP_NET_ADMIN, CAP_SYS_TIME)")
    return sorted({n.upper() for n in names})


def numbers(names: Iterable[str]) -> list[int]:
    return sorted(CAPABILITIES[n] for n in names)
