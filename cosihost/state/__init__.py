"""The state API: one interface, several implementations.

:class:`State` is the contract of DESIGN section 2a. :class:`InMemoryState`
implements it in process (optionally durable through a :class:`Store`);
``cosihost.Client`` implements it over the wire. The conformance suite in
``tests/conformance`` runs unchanged against every implementation.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from ..resource import Resource
from .events import BOOTSTRAPPED, CREATED, DESTROYED, ERROR, UPDATED, AggregatedWatch, Event, Watch
from .inmemory import InMemoryState
from .persist import SqliteStore, Store


class State(Protocol):
    """The verbs every state implementation offers, with these signatures."""

    def get(self, namespace: str, type: str, id: str) -> Resource: ...
    def list(self, namespace: str, type: str, *, labels: str | Sequence[str] | None = None,
             id_regex: str | None = None) -> list[Resource]: ...
    def create(self, resource: Resource, *, owner: str = "") -> Resource: ...
    def update(self, resource: Resource, *, owner: str = "",
               expected_phase: str | None = "running") -> Resource: ...
    def modify(self, namespace: str, type: str, id: str, fn: Callable[[Any], Any], *,
               owner: str = "", expected_phase: str | None = "running") -> Resource: ...
    def destroy(self, namespace: str, type: str, id: str, *, owner: str = "") -> None: ...
    def teardown(self, namespace: str, type: str, id: str, *, owner: str = "") -> bool: ...
    def teardown_and_destroy(self, namespace: str, type: str, id: str, *, owner: str = "") -> bool: ...
    def add_finalizer(self, namespace: str, type: str, id: str, *finalizers: str) -> Resource: ...
    def remove_finalizer(self, namespace: str, type: str, id: str, *finalizers: str) -> Resource: ...
    def watch(self, namespace: str, type: str, id: str) -> Any: ...
    def watch_for(self, namespace: str, type: str, id: str, *, event_types: Any = None, phase: str | None = None,
                  finalizers_empty: bool | None = None, condition: Callable[[Resource], bool] | None = None,
                  timeout: float | None = None) -> Resource: ...
    def watch_kind(self, namespace: str, type: str, *, bootstrap: bool = False,
                   labels: str | Sequence[str] | None = None, since: str | None = None) -> Any: ...
    def watch_kind_aggregated(self, namespace: str, type: str, *, bootstrap: bool = False,
                              labels: str | Sequence[str] | None = None, since: str | None = None,
                              max_batch: int = ...) -> Any: ...


__all__ = [
    "State", "InMemoryState", "Store", "SqliteStore", "Event", "Watch", "AggregatedWatch",
    "CREATED", "UPDATED", "DESTROYED", "BOOTSTRAPPED", "ERROR",
]
