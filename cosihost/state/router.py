"""One state API over several backends, chosen by namespace.

The supervisor serves every namespace through one object: most live in
process (in memory, or durable in SQLite), and those the config puts in
etcd go to an :class:`~cosihost.state.etcd.EtcdState`. Controllers, the
wire and the CLI see one state; only the supervisor asks :meth:`remote`
to know which writes may block on the network.
"""

from __future__ import annotations

import builtins
import fnmatch
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..errors import InvalidRequestError, UnavailableError
from ..resource import Resource
from .events import Record
from .inmemory import InMemoryState
from .txn import Key, Op


class NamespaceRouter:
    """The state API, each namespace answered by its backend."""

    def __init__(self, local: InMemoryState, remote: Mapping[str, InMemoryState] | None = None) -> None:
        self.local = local
        self._remote = dict(remote or {})

    @property
    def epoch(self) -> str:
        return self.local.epoch

    def backend(self, namespace: Any) -> InMemoryState:
        """The namespace's backend; UnavailableError while it cannot serve yet."""
        found = self._find(namespace)
        why = getattr(found, "not_ready", None)
        if why is not None:
            raise UnavailableError(f"namespace {namespace!r} is kept in etcd, not reached yet: {why}")
        return found

    def _find(self, namespace: Any) -> InMemoryState:
        if not isinstance(namespace, str) or not self._remote:
            return self.local
        found = self._remote.get(namespace)
        if found is None:
            found = next((st for pattern, st in self._remote.items() if matches(pattern, namespace)),
                         self.local)
        return found

    def remote(self, namespace: Any) -> bool:
        """Is the namespace kept elsewhere (its writes wait on the network)?"""
        return self._find(namespace) is not self.local

    # -- the state API -----------------------------------------------------------
    def get(self, namespace: str, type: str, id: str) -> Resource:
        return self.backend(namespace).get(namespace, type, id)

    def list(self, namespace: str, type: str, *, labels: str | Sequence[str] | None = None,
             id_regex: str | None = None) -> list[Resource]:
        return self.backend(namespace).list(namespace, type, labels=labels, id_regex=id_regex)

    def create(self, resource: Resource, *, owner: str = "") -> Resource:
        return self._of(resource).create(resource, owner=owner)

    def update(self, resource: Resource, *, owner: str = "",
               expected_phase: str | None = "running") -> Resource:
        return self._of(resource).update(resource, owner=owner, expected_phase=expected_phase)

    def modify(self, namespace: str, type: str, id: str, fn: Callable[[Any], Any], *,
               owner: str = "", expected_phase: str | None = "running") -> Resource:
        return self.backend(namespace).modify(namespace, type, id, fn, owner=owner, expected_phase=expected_phase)

    def destroy(self, namespace: str, type: str, id: str, *, owner: str = "") -> None:
        self.backend(namespace).destroy(namespace, type, id, owner=owner)

    def teardown(self, namespace: str, type: str, id: str, *, owner: str = "") -> bool:
        return self.backend(namespace).teardown(namespace, type, id, owner=owner)

    def add_finalizer(self, namespace: str, type: str, id: str, *finalizers: str) -> Resource:
        return self.backend(namespace).add_finalizer(namespace, type, id, *finalizers)

    def remove_finalizer(self, namespace: str, type: str, id: str, *finalizers: str) -> Resource:
        return self.backend(namespace).remove_finalizer(namespace, type, id, *finalizers)

    def watch(self, namespace: str, type: str, id: str) -> Any:
        return self.backend(namespace).watch(namespace, type, id)

    def watch_kind(self, namespace: str, type: str, *, bootstrap: bool = False,
                   labels: str | Sequence[str] | None = None, since: str | None = None) -> Any:
        return self.backend(namespace).watch_kind(namespace, type, bootstrap=bootstrap, labels=labels,
                                                  since=since)

    # -- what the supervisor serves controllers' caches from ---------------------
    def snapshot(self, namespace: str, type: str) -> tuple[int, builtins.list[bytes]]:
        return self.backend(namespace).snapshot(namespace, type)

    def snapshot_marked(self, namespace: str, type: str) -> tuple[int, builtins.list[tuple[str, bytes]], str]:
        return self.backend(namespace).snapshot_marked(namespace, type)

    def position(self, namespace: str, type: str) -> tuple[int, str]:
        return self.backend(namespace).position(namespace, type)

    def resume(self, namespace: str, type: str, bookmark: Any) -> tuple[int, builtins.list[Record], str | None]:
        return self.backend(namespace).resume(namespace, type, bookmark)

    def head(self, namespace: str, type: str) -> int:
        found = self._find(namespace)  # heartbeats ask for it: no error, just nothing yet
        return 0 if getattr(found, "not_ready", None) is not None else found.head(namespace, type)

    def records_since(self, namespace: str, type: str, seq: int) -> builtins.list[Record] | None:
        return self.backend(namespace).records_since(namespace, type, seq)

    def apply(self, ops: Sequence[Op], *, written: dict[Key, bytes | None] | None = None) -> builtins.list[Any]:
        """A transaction, applied by the one backend that keeps all its namespaces.

        One spanning an etcd namespace and a local one (or two etcd clusters)
        is refused: no single commit could make it atomic, and a two-phase
        protocol across etcd and this host could leave half of it applied
        when the host dies between the phases."""
        backends = {id(b): (b, op.namespace) for op in ops for b in [self.backend(op.namespace)]}
        if len(backends) > 1:
            where = ", ".join(sorted({ns for _b, ns in backends.values()}))
            raise InvalidRequestError(f"a transaction cannot span namespaces kept in different places "
                                      f"(etcd and this host, or two etcd clusters): {where}")
        return next(iter(backends.values()))[0].apply(ops, written=written) if backends else []

    def namespaces_of(self, type: str) -> builtins.list[str]:
        """Every backend's namespaces that hold resources of ``type``."""
        return sorted({ns for st in self._ready() for ns in st.namespaces_of(type)})

    def owned_kinds(self, owner: str, types: Iterable[str]) -> builtins.list[tuple[str, str]]:
        """Every backend's kinds where ``owner`` owns something (those not reached yet have none to tell)."""
        wanted = list(types)
        return sorted({kind for st in self._ready() for kind in st.owned_kinds(owner, wanted)})

    def _ready(self) -> builtins.list[InMemoryState]:
        """The backends that can answer now (an etcd one not reached yet has nothing to tell)."""
        return [st for st in [self.local, *self._remote.values()] if getattr(st, "not_ready", None) is None]

    def last_written(self, namespace: str) -> Record | None:
        """The calling thread's last write to a remote namespace, as a record."""
        found: Record | None = self.backend(namespace).last_written()  # type: ignore[attr-defined]
        return found

    def _of(self, resource: Any) -> InMemoryState:
        return self.backend(getattr(getattr(resource, "metadata", None), "namespace", None))


def matches(pattern: str, namespace: str) -> bool:
    """Config namespace names may be shell patterns: ``site-*``."""
    return pattern == namespace or fnmatch.fnmatchcase(namespace, pattern)


def group_by_config(configs: Mapping[str, Any]) -> Iterable[tuple[Any, list[str]]]:
    """Namespaces that share one backend configuration, together."""
    groups: dict[Any, list[str]] = {}
    for namespace, config in configs.items():
        groups.setdefault(config, []).append(namespace)
    return groups.items()
