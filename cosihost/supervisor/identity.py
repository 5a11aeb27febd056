"""Which user each controller runs as, and which capabilities it keeps: ``[isolation]``.

On by default when the supervisor runs as root (``enabled = "auto"``);
``enabled = false`` turns it off. Each controller gets a uid of its own from a range (as systemd's
DynamicUser does), stable for its name across restarts, so files it makes
keep their owner, and never the uid of another running controller; or a
named user (a passwd account) when its class declares ``user = "name"`` or
the config sets ``[isolation.controllers."NAME"] user`` (the config wins).
Either way its only supplementary group is the socket group, which owns the
runtime folder and the two sockets (and nothing else), so it can reach the
supervisor and not the admin token or the state folder. See
cosihost.worker.identity for what the new process does with it.

The rules live here, in one place, so the refusal a person reads in a
controller's status says exactly which line of the config (or of the
declaration) stood in the way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pwd
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .. import capabilities
from ..errors import InvalidRequestError

if TYPE_CHECKING:
    from .registry import Declaration

#: Default uids for controllers: far above ordinary and system accounts.
DEFAULT_UIDS = (3_000_000, 3_065_535)
_KEYS = {"enabled", "uids", "group", "deny", "controllers"}


@dataclasses.dataclass
class ControllerPolicy:
    """``[isolation.controllers."NAME"]``: one controller's named user, and
    the capabilities the config grants it beyond its declaration or denies it."""

    user: str = ""
    grant: list[str] = dataclasses.field(default_factory=list)
    deny: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def from_table(cls, name: str, table: Any) -> "ControllerPolicy":
        where = f'config: [isolation.controllers."{name}"]'
        if not isinstance(table, dict) or set(table) - {"user", "grant", "deny"}:
            raise InvalidRequestError(f"{where} takes user, grant and deny")
        user = table.get("user", "")
        if not isinstance(user, str) or (user and not user.strip()):
            raise InvalidRequestError(f"{where} user must be the name of a user (a passwd account)")
        grant = capabilities.checked(table.get("grant", []), who=f"{where} grant")
        deny = capabilities.checked(table.get("deny", []), who=f"{where} deny")
        both = sorted(set(grant) & set(deny))
        if both:
            raise InvalidRequestError(f"{where} both grants and denies {both[0]}")
        return cls(user.strip(), grant, deny)


@dataclasses.dataclass
class NamedUser:
    """A controller's passwd account, and where it was named."""

    name: str
    uid: int
    gid: int
    by_config: bool

    def origin(self, controller: str) -> str:
        return _origin(controller, by_config=self.by_config)


@dataclasses.dataclass
class Isolation:
    first: int
    last: int
    group: int      # the socket group: the runtime folder and the sockets belong to it
    taken: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Capabilities no controller may keep: one that declares any is refused
    #: (unless its own table grants it).
    deny: list[str] = dataclasses.field(default_factory=list)
    #: ``[isolation.controllers."NAME"]``, by controller name.
    controllers: dict[str, ControllerPolicy] = dataclasses.field(default_factory=dict)
    #: Controller names of the tables above that named no controller, said once.
    unmatched: set[str] = dataclasses.field(default_factory=set)
    #: ``enabled = true`` (not "auto"): a supervisor that cannot isolate warns.
    asked: bool = False
    #: The runtime folder, opened by the supervisor (-1: not yet).
    runtime_fd: int = -1

    @classmethod
    def from_table(cls, table: Any, *, access_group: int | None) -> "Isolation | None":
        if not isinstance(table, dict) or set(table) - _KEYS:
            raise InvalidRequestError("config: [isolation] takes enabled, uids = [FIRST, LAST], group, deny "
                                      'and [isolation.controllers."NAME"] tables')
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
        entries = table.get("controllers", {})
        if not isinstance(entries, dict):
            raise InvalidRequestError('config: [isolation.controllers."NAME"] must be tables, one per controller')
        policies = {name: ControllerPolicy.from_table(name, entry) for name, entry in entries.items()}
        return (cls(uids[0], uids[1], group, deny=deny, controllers=policies, asked=enabled is True)
                if enabled else None)

    def why_not(self) -> str | None:
        """Why controllers cannot run as their own users here, or None."""
        return None if os.geteuid() == 0 else "the supervisor is not root: controllers run as its user"

    def unknown_tables(self, names: Iterable[str]) -> list[str]:
        """The ``[isolation.controllers."NAME"]`` tables that name none of
        ``names`` (the controllers a scan found), each reported once: a typo
        there would silently leave a controller what the table denies it."""
        found = sorted(set(self.controllers) - set(names) - self.unmatched)
        self.unmatched.update(found)
        return found

    # -- one controller's policy -------------------------------------------------
    def policy(self, name: str) -> ControllerPolicy:
        return self.controllers.get(name) or ControllerPolicy()

    def kept(self, name: str, decl: "Declaration") -> list[str]:
        """The capabilities ``name`` keeps: those it declares and those its table grants."""
        return sorted(set(decl.capabilities) | set(self.policy(name).grant))

    def refusal(self, name: str, decl: "Declaration", others: Iterable[tuple[str, "Declaration"]] = ()) -> str | None:
        """Why ``name`` may not run (a denied capability, a user that is
        missing, root, inside the uids range, or another controller's), or None.
        ``others``: the controllers admitted already, by name."""
        own = self.policy(name)
        for cap in decl.capabilities:
            if cap in own.deny:
                return f'{name} declares {cap}, which [isolation.controllers."{name}"] deny refuses'
        denied = sorted((set(decl.capabilities) & set(self.deny)) - set(own.grant))
        if denied:
            return f"{name} declares {', '.join(denied)}, which [isolation] deny refuses"
        try:
            user = self.user_of(name, decl)
        except InvalidRequestError as exc:
            return str(exc)
        return self._shared(name, user, others) if user is not None else None

    def user_of(self, name: str, decl: "Declaration") -> NamedUser | None:
        """The named user ``name`` runs as (None: a dynamic uid); InvalidRequestError
        when that user does not exist or may not be a controller's."""
        by_config = bool(self.policy(name).user)
        account = self.policy(name).user or decl.user
        if not account:
            return None
        origin = _origin(name, by_config=by_config)
        try:
            entry = pwd.getpwnam(account)
        except KeyError:
            raise InvalidRequestError(f"{name}: user {account!r} (from {origin}) does not exist") from None
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise InvalidRequestError(f"{name}: user {account!r} (from {origin}) is root or in root's group "
                                      "(uid or gid 0); a controller runs as root only with [isolation] "
                                      "enabled = false")
        if self.first <= entry.pw_uid <= self.last:
            raise InvalidRequestError(f"{name}: user {account!r} (from {origin}) has uid {entry.pw_uid}, "
                                      f"inside [isolation] uids {[self.first, self.last]}, which are the "
                                      "dynamic users'")
        return NamedUser(account, entry.pw_uid, entry.pw_gid, by_config)

    def _shared(self, name: str, user: NamedUser, others: Iterable[tuple[str, "Declaration"]]) -> str | None:
        """A named user is one controller's unless the config names it for each that shares it."""
        for other, decl in others:
            try:
                theirs = self.user_of(other, decl) if other != name else None
            except InvalidRequestError:
                continue
            if theirs is not None and theirs.uid == user.uid and not (user.by_config and theirs.by_config):
                return (f"{name}: user {user.name!r} (uid {user.uid}, from {user.origin(name)}) already runs "
                        f"{other} (from {theirs.origin(other)}); controllers share a user only when the "
                        'config names it for each of them ([isolation.controllers."NAME"] user)')
        return None

    def shared_with(self, name: str, user: NamedUser) -> list[str]:
        """The other controllers the config runs as ``user`` too."""
        return sorted(other for other, policy in self.controllers.items()
                      if other != name and policy.user and _uid(policy.user) == user.uid)

    # -- processes ---------------------------------------------------------------
    def assign(self, name: str, decl: "Declaration") -> dict[str, Any]:
        """The identity of ``name``: its uid (kept while it runs), its group, the socket group,
        the capabilities it keeps and, for a named user, its name."""
        user = self.user_of(name, decl)
        kept = self.kept(name, decl)
        identity: dict[str, Any] = {"groups": [self.group], "caps": capabilities.numbers(kept),
                                    "capabilities": kept, "user": "", "shared_with": []}
        if user is not None:
            self.taken[name] = user.uid
            return {**identity, "uid": user.uid, "gid": user.gid, "user": user.name,
                    "shared_with": self.shared_with(name, user)}
        uid = self.taken.get(name)
        if uid is None or not self.first <= uid <= self.last:
            uid = self.taken[name] = self._free_uid(name)
        return {**identity, "uid": uid, "gid": uid}

    def _free_uid(self, name: str) -> int:
        size = self.last - self.first + 1
        start = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % size
        used = set(self.taken.values())
        free = next((self.first + (start + i) % size for i in range(size)
                     if self.first + (start + i) % size not in used), None)
        if free is None:
            raise InvalidRequestError(f"no free uid in [isolation] uids for {name!r}")
        return free

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


def _origin(controller: str, *, by_config: bool) -> str:
    return f'[isolation.controllers."{controller}"] user' if by_config else "its declaration"


def _uid(account: str) -> int | None:
    try:
        return pwd.getpwnam(account).pw_uid
    except KeyError:
        return None
