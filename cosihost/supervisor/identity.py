"""Which user each controller runs as: ``[isolation]``.

On by default when the supervisor runs as root (``enabled = "auto"``);
``enabled = false`` turns it off. Each controller gets a uid of its own from a range (as systemd's
DynamicUser does), stable for its name across restarts, so files it makes
keep their owner, and never the uid of another running controller. Its
only supplementary group is the socket group, which owns the runtime folder
and the two sockets (and nothing else), so it can reach the supervisor and
not the admin token or the state folder. See cosihost.worker.identity for
what the new process does with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

from .. import capabilities
from ..errors import InvalidRequestError

#: Default uids for controllers: far above ordinary and system accounts.
DEFAULT_UIDS = (3_000_000, 3_065_535)


@dataclasses.dataclass
class Isolation:
    first: int
    last: int
    group: int      # the socket group: the runtime folder and the sockets belong to it
    taken: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Capabilities no controller may keep: one that declares any is refused.
    deny: list[str] = dataclasses.field(default_factory=list)
    #: ``enabled = true`` (not "auto"): a supervisor that cannot isolate warns.
    asked: bool = False
    #: The runtime folder, opened by the supervisor (-1: not yet).
    runtime_fd: int = -1

    def refusal(self, name: str, wanted: list[str]) -> str | None:
        """Why a controller declaring ``wanted`` capabilities may not run, or None."""
        denied = sorted(set(wanted) & set(self.deny))
        return f"{name} declares {', '.join(denied)}, which [isolation] deny refuses" if denied else None

    @classmethod
    def from_table(cls, table: Any, *, access_group: int | None) -> "Isolation | None":
        if not isinstance(table, dict) or set(table) - {"enabled", "uids", "group", "deny"}:
            raise InvalidRequestError("config: [isolation] takes enabled, uids = [FIRST, LAST], group and deny")
        enabled = table.get("enabled", "auto")
        if not isinstance(enabled, bool) and enabled != "auto":
            raise InvalidRequestError('config: [isolation] enabled must be "auto" (on when the supervisor '
                                      'runs as root), true or false')
        uids = table.get("uids", list(DEFAULT_UIDS))
        if (not isinstance(uids, list) or len(uids) != 2 or not all(isinstance(u, int) for u in uids)
                or not 0 < uids[0] <= uids[1] < 2 ** 32 - 1):
            raise InvalidRequestError("config: [isolation] uids must be [FIRST, LAST], two uids above 0")
        group = table.get("group", access_group if access_group is not None else uids[0] - 1)
        if not isinstance(group, int) or isinstance(group, bool) or group <= 0:
            raise InvalidRequestError("config: [isolation] group must be a gid above 0")
        deny = capabilities.checked(table.get("deny", []), who="config: [isolation] deny")
        return cls(uids[0], uids[1], group, deny=deny, asked=enabled is True) if enabled else None

    def why_not(self) -> str | None:
        """Why controllers cannot run as their own users here, or None."""
        return None if os.geteuid() == 0 else "the supervisor is not root: controllers run as its user"

    def assign(self, name: str, caps: Sequence[str] = ()) -> dict[str, Any]:
        """The identity of ``name``: its uid (kept while it runs), its group, the socket group,
        and the capabilities it keeps."""
        uid = self.taken.get(name)
        if uid is None:
            size = self.last - self.first + 1
            start = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % size
            used = set(self.taken.values())
            free = next((self.first + (start + i) % size for i in range(size)
                         if self.first + (start + i) % size not in used), None)
            if free is None:
                raise InvalidRequestError(f"no free uid in [isolation] uids for {name!r}")
            uid = self.taken[name] = free
        return {"uid": uid, "gid": uid, "groups": [self.group], "caps": capabilities.numbers(caps),
                "capabilities": list(caps)}

    def open_runtime_dir(self, runtime_dir: Path) -> None:
        """Open the runtime folder for the controllers to reach it by (see
        :meth:`reach`): it may sit below folders their users cannot enter
        (a 0700 temporary folder), and its sockets are all they need."""
        self.runtime_fd = os.open(runtime_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def reach(self, runtime_dir: Path) -> str:
        """The runtime folder as a controller process names it: through the
        descriptor it inherits (``pass_fds``), whatever lies above it."""
        return f"/proc/self/fd/{self.runtime_fd}" if self.runtime_fd >= 0 else str(runtime_dir)

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self.runtime_fd,) if self.runtime_fd >= 0 else ()

    def release(self, name: str) -> None:
        self.taken.pop(name, None)

