"""The key layout: ``<prefix>/<namespace>/<type>/<id>``.

Names may contain any character but NUL, so ``%`` and ``/`` are escaped
(``%25``, ``%2F``) inside each segment: a kind is then exactly one key
prefix (one range to list it, one watch to follow it), and a key decodes
back to its names without reading the value. Names are at most a few
hundred bytes, far below etcd's request limit, so nothing is hashed.
"""

from __future__ import annotations


def _escape(segment: str) -> str:
    return segment.replace("%", "%25").replace("/", "%2F")


def _unescape(segment: str) -> str:
    return segment.replace("%2F", "/").replace("%25", "%")


def root(prefix: str) -> bytes:
    """Every key of the fleet starts with this."""
    return (prefix.rstrip("/") + "/").encode()


def key(prefix: bytes, namespace: str, type: str, id: str) -> bytes:
    return prefix + f"{_escape(namespace)}/{_escape(type)}/{_escape(id)}".encode()


def kind_prefix(prefix: bytes, namespace: str, type: str) -> bytes:
    return prefix + f"{_escape(namespace)}/{_escape(type)}/".encode()


def range_end(start: bytes) -> bytes:
    """The end of the range of every key starting with ``start`` (etcd's
    convention: the prefix with its last byte incremented)."""
    end = bytearray(start)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def parse(prefix: bytes, full: bytes) -> tuple[str, str, str] | None:
    """(namespace, type, id) of a key under ``prefix``; None for a stranger."""
    if not full.startswith(prefix):
        return None
    parts = full[len(prefix):].decode(errors="replace").split("/")
    if len(parts) != 3:
        return None
    return _unescape(parts[0]), _unescape(parts[1]), _unescape(parts[2])
