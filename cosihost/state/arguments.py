"""Checks of the arguments a state verb is given, before it takes any lock.

The in-memory state and the etcd-backed one must refuse the same malformed
requests with the same errors, whatever a client sends over the wire; the
checks live here, apart from either state, so that both share them.
"""

from __future__ import annotations

from typing import Any, Iterable

from ..errors import InvalidRequestError
from ..resource import Received, Resource, check_name, check_phase, check_strings, validated_copy


def _check_kind(namespace: Any, type: Any, id: Any = "-") -> None:
    check_name("namespace", namespace)
    check_name("type", type)
    check_name("id", id)


def _check_owner(owner: Any) -> None:
    if not isinstance(owner, str):
        raise InvalidRequestError(f"owner must be a string, not {type(owner).__name__}")


def _checked_finalizers(finalizers: Iterable[Any]) -> tuple[str, ...]:
    items = tuple(finalizers)
    check_strings("finalizers", items)
    if any(not f for f in items):
        raise InvalidRequestError("finalizers must not be empty strings")
    return items


def _incoming(resource: Any, owner: Any, expected_phase: Any = None) -> Resource:
    """A validated copy of a resource to write, once its arguments are checked
    (one just decoded from a peer's blob is taken as it is: no second copy)."""
    res = resource.take() if isinstance(resource, Received) else validated_copy(resource)
    _check_owner(owner)
    if expected_phase is not None:
        check_phase(expected_phase, field="expected_phase")
    return res
