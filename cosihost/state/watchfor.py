"""``watch_for``: wait until a resource is as the caller needs it.

COSI's ``WatchFor``: a caller that must wait for a resource to exist, to
reach a phase, to lose its finalizers or to go away would otherwise write
the same watch-and-check loop each time, and forget the deadline. Written
once over ``watch``, so it works on every state implementation.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from ..errors import InvalidRequestError
from ..resource import Resource
from .events import CREATED, DESTROYED, ERROR, UPDATED

EVENT_TYPES = (CREATED, UPDATED, DESTROYED)


def watch_for(watch: Callable[[str, str, str], Any], namespace: str, type: str, id: str, *,
              event_types: Iterable[str] | None = None, phase: str | None = None,
              finalizers_empty: bool | None = None, condition: Callable[[Resource], bool] | None = None,
              timeout: float | None = None) -> Resource:
    """The resource once an event of one of ``event_types`` (default
    created or updated) shows it matching every condition given: its
    ``phase``, whether its finalizers are empty, ``condition(resource)``.
    Waiting for ``destroyed`` returns the last state of the resource (at
    once if it does not exist). Raises TimeoutError after ``timeout`` s."""
    kinds = set(event_types) if event_types is not None else {CREATED, UPDATED}
    if not kinds or not kinds <= set(EVENT_TYPES):
        raise InvalidRequestError(f"event_types must be among {', '.join(EVENT_TYPES)}, not {sorted(kinds)}")

    def matches(res: Resource) -> bool:
        md = res.metadata
        return ((phase is None or md.phase == phase)
                and (finalizers_empty is None or (not md.finalizers) == finalizers_empty)
                and (condition is None or condition(res)))

    deadline = None if timeout is None else time.monotonic() + timeout
    with watch(namespace, type, id) as events:
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            event = events.next(timeout=left)
            if event is None:
                raise TimeoutError(f"{namespace}/{type}/{id}: no matching event within {timeout:g} s")
            if event.kind == ERROR:
                raise InvalidRequestError(f"watch of {namespace}/{type}/{id} ended: {event.error}")
            found: Resource | None = event.resource
            if event.kind in kinds and found is not None and (event.kind == DESTROYED or matches(found)):
                return found
