"""The resource model: metadata plus an opaque spec.

A resource travels and rests as one msgpack blob (:func:`pack` /
:func:`unpack`). The store keeps only blobs, which makes every read a fresh
copy for free, keeps memory per resource close to its packed size, and lets
the supervisor forward a stored resource without encoding it again.
"""

from __future__ import annotations

import dataclasses
from copy import deepcopy
from typing import Any, Iterable, TypeVar

import msgpack

from .errors import InvalidRequestError

PHASE_RUNNING = "running"
PHASE_TEARING_DOWN = "tearing-down"
PHASES = (PHASE_RUNNING, PHASE_TEARING_DOWN)

#: Longest namespace, type or id, in characters.
MAX_NAME_LENGTH = 256
#: Largest packed resource (metadata and spec), in bytes.
MAX_RESOURCE_BYTES = 1 << 20
#: Most labels, annotations or finalizers on one resource.
MAX_META_ITEMS = 256
#: Longest label/annotation key or value, finalizer, or owner, in characters.
MAX_META_LENGTH = 4096


@dataclasses.dataclass
class Metadata:
    """Everything about a resource but its spec. The store sets version,
    owner, phase and timestamps; callers set labels and annotations."""

    namespace: str
    type: str
    id: str
    version: int = 0
    owner: str = ""
    phase: str = PHASE_RUNNING
    finalizers: list[str] = dataclasses.field(default_factory=list)
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)
    created: float = 0.0
    updated: float = 0.0

    def key(self) -> tuple[str, str, str]:
        return (self.namespace, self.type, self.id)

    def add_finalizers(self, *finalizers: str) -> bool:
        """Add in order, skipping those present; True when anything changed."""
        added = [f for f in dict.fromkeys(finalizers) if f not in self.finalizers]
        self.finalizers.extend(added)
        return bool(added)

    def remove_finalizers(self, *finalizers: str) -> bool:
        before = len(self.finalizers)
        self.finalizers = [f for f in self.finalizers if f not in finalizers]
        return len(self.finalizers) != before


class Resource:
    """Metadata plus an opaque, msgpack-able spec."""

    __slots__ = ("metadata", "spec")

    def __init__(
        self,
        namespace: str,
        type: str,
        id: str,
        spec: Any = None,
        *,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> None:
        self.metadata = Metadata(
            namespace,
            type,
            id,
            labels=dict(labels or {}),
            annotations=dict(annotations or {}),
        )
        self.spec = spec

    def __repr__(self) -> str:
        md = self.metadata
        return (
            f"Resource({md.namespace!r}, {md.type!r}, {md.id!r}, v{md.version}, "
            f"owner={md.owner!r}, phase={md.phase}, spec={self.spec!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Resource):
            return NotImplemented
        return self.metadata == other.metadata and self.spec == other.spec

    def copy(self) -> "Resource":
        return unpack(pack(self))

    def to_dict(self) -> dict[str, Any]:
        """The shape the CLI prints: ``{"metadata": {...}, "spec": ...}``,
        sharing nothing with this resource."""
        return {"metadata": dataclasses.asdict(self.metadata), "spec": deepcopy(self.spec)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Resource":
        """Build from ``to_dict`` output (or a user's YAML document).

        The result shares nothing with ``data``. Types are checked when the
        resource is written (:func:`validate`), not here.
        """
        if not isinstance(data, dict) or not isinstance(data.get("metadata"), dict):
            raise InvalidRequestError("a resource needs a 'metadata' mapping")
        md = data["metadata"]
        known = {f.name for f in dataclasses.fields(Metadata)}
        unknown = set(md) - known
        if unknown:
            raise InvalidRequestError(f"unknown metadata field(s): {', '.join(sorted(unknown))}")
        for name in ("namespace", "type", "id"):
            if name not in md:
                raise InvalidRequestError(f"metadata.{name} is required")
        res = cls(md["namespace"], md["type"], md["id"], deepcopy(data.get("spec")))
        for name, value in md.items():
            setattr(res.metadata, name, deepcopy(value))
        return res


def _fields(res: Resource) -> list[Any]:
    md = res.metadata
    return [
        md.namespace, md.type, md.id, md.version, md.owner, md.phase,
        md.finalizers, md.labels, md.annotations, md.created, md.updated,
        res.spec,
    ]


def pack(res: Resource) -> bytes:
    """Encode a resource as one msgpack blob."""
    try:
        blob: bytes = msgpack.packb(_fields(res), use_bin_type=True)
        return blob
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRequestError(f"spec cannot be encoded with msgpack: {exc}") from None


def unpack(blob: bytes) -> Resource:
    """Decode a blob from :func:`pack` into a fresh Resource."""
    return _decode(blob, Resource.__new__(Resource))


R = TypeVar("R", bound=Resource)


def _decode(blob: bytes, res: R) -> R:
    (ns, typ, rid, version, owner, phase, fins, labels, annotations,
     created, updated, spec) = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    res.metadata = Metadata(ns, typ, rid, version, owner, phase, fins, labels,
                            annotations, created, updated)
    res.spec = spec
    return res


class Received(Resource):
    """A resource just decoded from a peer's packed blob, which nothing else
    holds. A state checks a caller's own resource by packing and decoding a
    copy of it (the caller may change it later, and msgpack may not decode
    what it encoded); one decoded from msgpack needs neither, so the state
    :meth:`take` s it as it is: the supervisor decodes a write once."""

    __slots__ = ("_size", "_taken")
    _size: int
    _taken: bool

    def take(self) -> Resource:
        """The resource, checked as :func:`validated_copy` checks one; once only."""
        if self._taken:
            raise InvalidRequestError("a received resource is handed over once")
        self._taken = True
        check_resource(self)
        if self._size > MAX_RESOURCE_BYTES:
            raise InvalidRequestError(
                f"spec: the resource is {self._size} bytes packed, over the {MAX_RESOURCE_BYTES} limit")
        res = Resource.__new__(Resource)
        res.metadata, res.spec = self.metadata, self.spec
        return res


def received(blob: bytes) -> Received:
    """Decode a peer's blob for a write (see :class:`Received`)."""
    res = _decode(blob, Received.__new__(Received))
    res._size, res._taken = len(blob), False
    return res


def check_name(field: str, value: Any) -> None:
    """Namespaces, types and ids: non-empty strings without NUL."""
    if not isinstance(value, str):
        raise InvalidRequestError(f"{field} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidRequestError(f"{field} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidRequestError(f"{field} is longer than {MAX_NAME_LENGTH} characters")
    if "\x00" in value:
        raise InvalidRequestError(f"{field} must not contain NUL")


def check_strings(field: str, values: Iterable[Any]) -> None:
    items = list(values)
    if len(items) > MAX_META_ITEMS:
        raise InvalidRequestError(f"{field} has more than {MAX_META_ITEMS} entries")
    for value in items:
        if not isinstance(value, str):
            raise InvalidRequestError(f"{field} entries must be strings, got {value!r}")
        if len(value) > MAX_META_LENGTH:
            raise InvalidRequestError(f"{field} entry is longer than {MAX_META_LENGTH} characters")


def check_mapping(field: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{field} must be a mapping of strings")
    check_strings(field, value.keys())
    check_strings(field, value.values())


def check_phase(value: Any, *, field: str = "phase") -> None:
    if value not in PHASES:
        raise InvalidRequestError(f"{field} must be one of {', '.join(PHASES)}, not {value!r}")


def _validated(res: Any) -> tuple[bytes, Resource]:
    """Check a caller's resource; return its packed form and a decoded copy.

    Decoding is part of the check: msgpack encodes some values it cannot
    decode into Python (a dict keyed by tuples comes back keyed by lists),
    and such a spec must be refused here, not fail in every later reader.
    """
    check_resource(res)
    blob = pack(res)
    if len(blob) > MAX_RESOURCE_BYTES:
        raise InvalidRequestError(
            f"spec: the resource is {len(blob)} bytes packed, over the {MAX_RESOURCE_BYTES} limit")
    try:
        copy = unpack(blob)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"spec cannot be decoded from msgpack: {exc}") from None
    return blob, copy


def check_resource(res: Any) -> None:
    """The checks of a caller's resource that need no encoding."""
    if not isinstance(res, Resource):
        raise InvalidRequestError(f"expected a Resource, got {type(res).__name__}")
    md = res.metadata
    check_name("namespace", md.namespace)
    check_name("type", md.type)
    check_name("id", md.id)
    check_mapping("labels", md.labels)
    check_mapping("annotations", md.annotations)
    if not isinstance(md.finalizers, list):
        raise InvalidRequestError("finalizers must be a list of strings")
    check_strings("finalizers", md.finalizers)
    check_phase(md.phase)
    if not isinstance(md.version, int) or isinstance(md.version, bool):
        raise InvalidRequestError("version must be an integer")


def validated(res: Any) -> tuple[bytes, Resource]:
    """Check a caller's resource; its packed form and a decoded copy."""
    return _validated(res)


def validate(res: Any) -> bytes:
    """Check a caller's resource and return its packed form.

    Raises InvalidRequestError naming the offending field.
    """
    return _validated(res)[0]


def validated_copy(res: Any) -> Resource:
    """Check a caller's resource and return a copy of it (one encoding, one
    decoding: what the store keeps is what the caller will read back)."""
    return _validated(res)[1]
