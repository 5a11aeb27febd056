"""Who may do what: the rules of DESIGN section 3, checked per request and
per event subscription.

The caller is known from its token: a controller (which registered with its
spawn secret), a user client (no token), or the admin (the token in the
runtime directory's admin file, readable only by the supervisor's user).
Every check raises AccessDeniedError saying which rule was broken.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from .. import wire
from ..errors import AccessDeniedError, InvalidRequestError
from .registry import Declaration, Registry


@dataclasses.dataclass(frozen=True)
class Caller:
    name: str = ""  # the controller's name; "" for users and the admin
    decl: Declaration | None = None
    admin: bool = False

    def describe(self) -> str:
        if self.decl is not None:
            return f"controller {self.name}"
        return "the admin" if self.admin else "a user client"


USER = Caller()
ADMIN = Caller(admin=True)


def effective_owner(caller: Caller, owner: Any) -> str:
    """The owner a write is made as: the caller's own identity, always."""
    if owner is not None and not isinstance(owner, str):
        raise InvalidRequestError("owner must be a string")
    if caller.admin:
        return owner or ""
    if owner in (None, caller.name):
        return caller.name
    raise AccessDeniedError(f"{caller.describe()} cannot act as owner {owner!r}")


def check_read(caller: Caller, namespace: str, type: str) -> None:
    if caller.decl is None or caller.decl.reads(namespace, type):
        return
    raise AccessDeniedError(
        f"controller {caller.name} cannot read {namespace}/{type}: not among its inputs or outputs")


def check_subscribe(caller: Caller, topic: bytes) -> None:
    """The read rule on an event subscription. A controller subscribes to
    exactly one kind's topic it may read; a prefix that would match several
    kinds (``b""``, a bare namespace, part of a type) is refused. Users and
    the admin read everything, so they may subscribe to any prefix."""
    if caller.decl is None:
        return
    try:
        namespace, type = wire.parse_topic(topic)
    except (wire.WireError, UnicodeDecodeError):
        raise AccessDeniedError(
            f"controller {caller.name} may subscribe only to the topic of one kind, "
            f"not to the prefix {topic[:80]!r}") from None
    check_read(caller, namespace, type)


def check_write(caller: Caller, registry: Registry, namespace: str, type: str) -> None:
    if caller.admin:
        return
    if caller.decl is not None:
        if caller.decl.output(type) is None:
            raise AccessDeniedError(
                f"controller {caller.name} cannot write {namespace}/{type}: not among its outputs")
        return
    owner = registry.exclusive_owner(type)
    if owner is not None:
        raise AccessDeniedError(
            f"user clients cannot write {type}: it is the exclusive output of {owner}")


def check_finalizers(caller: Caller, registry: Registry, namespace: str, type: str,
                     resource_owner: Callable[[], str]) -> None:
    """``resource_owner`` looks the resource up; it is called only once the
    declaration allows the request, so a refused caller learns nothing (not
    even whether the resource exists)."""
    if caller.admin:
        return
    if caller.decl is not None:
        if not caller.decl.holds_strong(namespace, type):
            raise AccessDeniedError(
                f"controller {caller.name} may change finalizers only on its strong inputs, "
                f"not {namespace}/{type}")
        return
    check_write(caller, registry, namespace, type)
    owner = resource_owner()
    if owner:
        raise AccessDeniedError(
            f"user clients cannot change finalizers of {namespace}/{type}: owned by {owner}")
