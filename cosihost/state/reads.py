"""Plain reads of a state: a resource, a kind's items, and where they stand.

Reads take a kind's lock only to copy its packed items out and decode
outside it, and never make a collection for a kind nothing has touched. They
are the side of :class:`~.inmemory.InMemoryState` that neither changes
anything nor needs bookmarks (those are in :mod:`.watches`), so they live
apart from the writes.
"""

from __future__ import annotations

import builtins
from typing import Iterable, Sequence

from ..errors import NotFoundError
from ..resource import Resource, unpack
from ..selectors import compile_id_regex, parse_query
from .arguments import _check_kind
from .collection import Kinds
from .events import Record


class Reads(Kinds):
    """get, list, owned_kinds, namespaces_of, snapshot, head, records_since."""

    def get(self, namespace: str, type: str, id: str) -> Resource:
        _check_kind(namespace, type, id)
        coll = self._existing(namespace, type)
        blob = None
        if coll is not None:
            with coll.cond:
                blob = coll.items.get(id)
        if blob is None:
            raise NotFoundError(f"resource {namespace}/{type}/{id} doesn't exist")
        return unpack(blob)

    def list(self, namespace: str, type: str, *, labels: str | Sequence[str] | None = None,
             id_regex: str | None = None) -> list[Resource]:
        _check_kind(namespace, type)
        query = parse_query(labels)
        regex = compile_id_regex(id_regex)
        coll = self._existing(namespace, type)
        if coll is None:
            return []
        with coll.cond:
            items = sorted(coll.items.items())
        out = []
        for rid, blob in items:
            if regex is not None and not regex.search(rid):
                continue
            res = unpack(blob)
            if query.matches(res.metadata.labels):
                out.append(res)
        return out

    def owned_kinds(self, owner: str, types: Iterable[str] | None = None) -> builtins.list[tuple[str, str]]:
        """The kinds (of these types, or any), in any namespace, where ``owner``
        owns a resource: where a restarted controller finds what its last
        life wrote."""
        wanted = None if types is None else set(types)
        found = []
        for (namespace, type), coll in list(self._collections.items()):
            if (wanted is None or type in wanted) and any(unpack(blob).metadata.owner == owner
                                      for blob in list(coll.items.values())):
                found.append((namespace, type))
        return sorted(found)

    def namespaces_of(self, type: str) -> builtins.list[str]:
        """The namespaces that hold resources of ``type``."""
        return sorted(ns for (ns, typ), coll in list(self._collections.items()) if typ == type and coll.items)

    def snapshot(self, namespace: str, type: str) -> tuple[int, builtins.list[bytes]]:
        """The kind's sequence number and packed items, taken atomically."""
        _check_kind(namespace, type)
        coll = self._existing(namespace, type)
        if coll is None:
            return 0, []
        with coll.cond:
            return coll.history.seq, [coll.items[k] for k in sorted(coll.items)]

    def head(self, namespace: str, type: str) -> int:
        """The kind's latest sequence number (0 before any change)."""
        coll = self._existing(namespace, type)
        return 0 if coll is None else coll.history.seq

    def records_since(self, namespace: str, type: str, seq: int) -> builtins.list[Record] | None:
        """Records after ``seq``, or None when history no longer has them all."""
        coll = self._existing(namespace, type)
        if coll is None:
            return []
        with coll.cond:
            return coll.history.since(seq)
