"""Every message that crosses a socket, in one place.

Requests and replies travel REQ -> ROUTER as single msgpack frames; events
travel XPUB -> SUB as [topic, body], one body carrying every change one
turn of the supervisor's loop made to that kind (:class:`EventBatch`). Resources inside messages are the packed
blobs of :mod:`cosihost.resource`, so the supervisor forwards what it stores
without encoding it again. No pickle: a peer can send only data.

Decoding is strict: anything that is not exactly a known message raises
:class:`WireError`, which the supervisor turns into an error reply.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from typing import Any, Sequence

import msgpack

from .errors import CosiError, InvalidRequestError
from .resource import Resource, pack, unpack
from .state.txn import MAX_OPS, Op

PROTOCOL = 1
#: Largest frame a socket accepts (ZMQ_MAXMSGSIZE); bigger peers are dropped.
MAX_MESSAGE_BYTES = 4 << 20
#: A snapshot reply carries about this many bytes of items; the rest comes in
#: pages (``snapshot_page``), so a kind of any size fits under the frame limit.
SNAPSHOT_PAGE_BYTES = 1 << 20
#: Separates namespace and type in a topic; names cannot contain it.
TOPIC_DELIMITER = b"\x00"
API_SOCKET = "api.sock"
EVENTS_SOCKET = "events.sock"
#: The events socket authenticates its subscribers (ZAP, PLAIN mechanism) in
#: this domain: the PLAIN username is the subscriber's token, or
#: ``ANONYMOUS`` for a user client, which has none. PLAIN sends it in clear
#: text, which is fine on a local socket in a 0750 folder.
EVENTS_ZAP_DOMAIN = b"cosihost.events"
ANONYMOUS = "anonymous"
#: Largest frame the events socket accepts from a subscriber: a
#: subscription is a flag byte and a topic.
MAX_SUBSCRIPTION_BYTES = 4096

#: Every verb the supervisor answers, with its required argument names.
VERBS: dict[str, tuple[str, ...]] = {
    # state API
    "get": ("namespace", "type", "id"),
    "list": ("namespace", "type"),
    "create": ("resource",),
    "update": ("resource",),
    "destroy": ("namespace", "type", "id"),
    "teardown": ("namespace", "type", "id"),
    "add_finalizer": ("namespace", "type", "id", "finalizers"),
    "remove_finalizer": ("namespace", "type", "id", "finalizers"),
    "transaction": ("ops",),
    # cache sync (Clone pattern)
    "snapshot": ("namespace", "type"),
    "snapshot_page": ("cursor",),
    "since": ("namespace", "type", "seq"),
    "resume": ("namespace", "type", "bookmark"),
    "probe": ("topic", "nonce"),
    # controller life
    "register": ("name", "secret", "inputs", "outputs"),
    "update_inputs": ("inputs",),
    "owned_kinds": (),
    # optional: counters (map of name -> int), durations (map of name ->
    # Histogram.to_wire()), kinds ([namespace, type, seq] of each cached kind)
    "heartbeat": (),
    # supervisor control
    "ping": (),
    "controllers": (),
    "restart": ("name",),
    "reload": (),
}


class WireError(InvalidRequestError):
    """A frame that is not a well-formed message; ``rid`` is the request id
    when one could be read, so the error reply can name its request."""

    def __init__(self, message: str, rid: str = "") -> None:
        super().__init__(message)
        self.rid = rid


@dataclasses.dataclass
class Request:
    op: str
    args: dict[str, Any]
    rid: str = ""
    token: str = ""
    #: The sender takes several replies in one message (``[b"", reply, reply, ...]``):
    #: a pipelined DEALER (:mod:`cosihost.pipeline`) that matches them by request id.
    batch: bool = False


@dataclasses.dataclass
class Reply:
    ok: bool
    rid: str = ""
    result: Any = None
    code: str = ""
    message: str = ""
    #: With code "throttled": seconds until the caller may write again.
    retry_after: float = 0.0

    @classmethod
    def error(cls, rid: str, exc: CosiError) -> "Reply":
        return cls(False, rid, code=exc.code, message=str(exc), retry_after=float(getattr(exc, "retry_after", 0.0)))


@dataclasses.dataclass
class Change:
    """One change of one kind, as published: beside the packed resource it
    carries what a cache and a scheduler need (id, version, phase, whether
    finalizers are empty), so applying it unpacks nothing. For ``destroyed``
    the resource is as it was when destroyed."""

    seq: int
    kind: str
    id: str
    version: int
    phase: str
    finalizers_empty: bool
    blob: bytes
    old: bytes | None = None
    #: The backend's bookmark position of the change (an etcd revision), or 0.
    rev: int = 0

    def resource(self) -> Resource:
        """The resource itself, unpacked on demand."""
        return unpack(self.blob)

    @classmethod
    def of(cls, kind: str, res: Resource, blob: bytes, *, seq: int = 0, old: bytes | None = None,
           rev: int = 0) -> "Change":
        md = res.metadata
        return cls(seq, kind, md.id, md.version, md.phase, not md.finalizers, blob, old, rev)

    @classmethod
    def of_blob(cls, kind: str, blob: bytes, *, seq: int = 0, old: bytes | None = None, rev: int = 0) -> "Change":
        """For the rare paths (history fills, resyncs, etcd): meta from unpacking the blob."""
        return cls.of(kind, unpack(blob), blob, seq=seq, old=old, rev=rev)


@dataclasses.dataclass
class EventBatch:
    """What one turn of the supervisor's loop changed in one kind: one frame.

    ``frontier`` lists every kind that turn changed, with the sequence number
    each reached, when it changed more than one: a subscriber holding several
    of them reconciles only once each has reached its number, so it never
    acts on part of a transaction (or of a turn). Empty for a one-kind turn."""

    epoch: str
    changes: list[Change]
    frontier: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)


#: Upper bounds (seconds) of the buckets of a controller's reconcile durations.
RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclasses.dataclass
class Histogram:
    """Observations counted into fixed buckets, Prometheus style: ``counts[i]``
    holds the values ``<= bounds[i]`` (and above the bound before it), the
    last count those above every bound. A controller keeps one of its
    reconcile durations and sends it with each heartbeat; the supervisor
    keeps its own request latencies and loop lag the same way."""

    bounds: tuple[float, ...]
    counts: list[int] = dataclasses.field(default_factory=list)
    sum: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def copy(self) -> "Histogram":
        return Histogram(self.bounds, list(self.counts), self.sum)

    def to_wire(self) -> dict[str, Any]:
        return {"le": list(self.bounds), "counts": list(self.counts), "sum": self.sum}

    @classmethod
    def from_wire(cls, data: Any) -> "Histogram":
        """Strictly: a peer's histogram is taken whole or refused (WireError)."""
        if not isinstance(data, dict):
            raise WireError("a histogram must be a map")
        bounds, counts, total = data.get("le"), data.get("counts"), data.get("sum")  # type: Any, Any, Any
        if (not isinstance(bounds, list) or not isinstance(counts, list)
                or len(counts) != len(bounds) + 1 or len(bounds) > 64):
            raise WireError("a histogram needs 'le' (at most 64 bounds) and one more 'counts' than bounds")
        if not all(_finite(b) for b in bounds) or any(b >= c for b, c in zip(bounds, bounds[1:])):
            raise WireError("histogram bounds must be increasing finite numbers")
        if not all(type(c) is int and c >= 0 for c in counts):
            raise WireError("histogram counts must be non-negative integers")
        if not _finite(total):
            raise WireError("histogram sum must be a finite number")
        return cls(tuple(float(b) for b in bounds), counts, float(total))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass
class ProbeMessage:
    """Published on a topic to prove a subscription has reached the publisher."""

    nonce: str


def _pack(obj: Any) -> bytes:
    frame: bytes = msgpack.packb(obj, use_bin_type=True)
    return frame


def _unpack(frame: bytes) -> Any:
    if len(frame) > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {len(frame)} bytes is over the {MAX_MESSAGE_BYTES} limit")
    try:
        return msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"not a msgpack message: {exc.__class__.__name__}") from None


#: After the empty delimiter, the frame that makes a message a batch of
#: requests (``[envelope..., b"", BATCH, request, request, ...]``), each
#: answered as if it had come alone. No request body can equal it.
BATCH = b"batch"


def split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]] | None:
    """A message as a ROUTER reads it: (the envelope to answer to, ending in
    its empty delimiter; the request bodies), or None when there is no
    envelope to answer (no delimiter, or several bodies that are no batch)."""
    if len(frames) < 3:
        return None
    if frames[-2] == b"":
        return frames[:-1], frames[-1:]
    try:
        end = frames.index(b"")
    except ValueError:
        return None
    if end + 2 >= len(frames) or frames[end + 1] != BATCH:
        return None
    return frames[:end + 1], frames[end + 2:]


def encode_request(req: Request) -> bytes:
    msg = {"v": PROTOCOL, "op": req.op, "rid": req.rid, "tok": req.token, "args": req.args}
    if req.batch:
        msg["batch"] = True
    return _pack(msg)


def _short(value: Any, limit: int = 60) -> str:
    """A peer's value in an error message, never longer than ``limit``."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def decode_request(frame: bytes) -> Request:
    msg = _unpack(frame)
    if not isinstance(msg, dict):
        raise WireError("a request must be a msgpack map")
    rid = msg.get("rid", "")
    echo = rid if isinstance(rid, str) else ""
    version = msg.get("v")
    if type(version) is not int or version != PROTOCOL:  # not True, not 1.0
        raise WireError(f"protocol version {_short(version)} is not supported (want {PROTOCOL})", echo)
    op, token, args = msg.get("op"), msg.get("tok", ""), msg.get("args", {})
    if not isinstance(op, str) or op not in VERBS:
        raise WireError(f"unknown verb {_short(op)}", echo)
    if not isinstance(rid, str) or not isinstance(token, str):
        raise WireError("'rid' and 'tok' must be strings", echo)
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise WireError("'args' must be a map with string keys", echo)
    missing = [name for name in VERBS[op] if name not in args]
    if missing:
        raise WireError(f"{op}: missing argument(s) {', '.join(missing)}", echo)
    return Request(op, args, rid, token, msg.get("batch") is True)


def encode_reply(reply: Reply) -> bytes:
    if reply.ok:
        return _pack({"v": PROTOCOL, "rid": reply.rid, "ok": True, "result": reply.result})
    error = {"v": PROTOCOL, "rid": reply.rid, "ok": False, "code": reply.code, "msg": reply.message}
    if reply.retry_after:
        error["after"] = reply.retry_after
    return _pack(error)


def decode_reply(frame: bytes) -> Reply:
    msg = _unpack(frame)
    if not isinstance(msg, dict) or "ok" not in msg:
        raise WireError("a reply must be a msgpack map with 'ok'")
    if msg["ok"]:
        return Reply(True, msg.get("rid", ""), result=msg.get("result"))
    after = msg.get("after", 0.0)
    return Reply(False, msg.get("rid", ""), code=str(msg.get("code", "")), message=str(msg.get("msg", "")),
                 retry_after=float(after) if isinstance(after, (int, float)) and 0 < after < 3600 else 0.0)


def topic(namespace: str, type: str) -> bytes:
    """The PUB/SUB topic of a kind; the trailing delimiter stops prefix
    matching from confusing ``Links`` with ``LinksX``."""
    return namespace.encode() + TOPIC_DELIMITER + type.encode() + TOPIC_DELIMITER


def events_credentials(token: str) -> bytes:
    """The PLAIN username (and password) a subscriber with ``token`` presents."""
    return (token or ANONYMOUS).encode()


def parse_topic(frame: bytes) -> tuple[str, str]:
    parts = frame.split(TOPIC_DELIMITER)
    if len(parts) != 3 or parts[2]:
        raise WireError("malformed topic")
    return parts[0].decode(), parts[1].decode()


#: A published frame's changes are cut into frames of about this many bytes.
BATCH_BYTES = 1 << 20
#: Most kinds one frame's frontier may name (a subscriber keeps them until reached).
MAX_FRONTIER = 4096


def change_row(seq: int, kind: str, rid: str, meta: tuple[int, str, bool], blob: bytes, old: bytes | None,
               rev: int) -> list[Any]:
    """A change as one row of an ``evs`` frame; ``meta`` is (version, phase,
    finalizers empty) of the resource in ``blob``. :class:`Change` decodes it."""
    return [seq, kind, rid, meta[0], meta[1], meta[2], blob, old, rev]


def encode_events(epoch: str, rows: Sequence[list[Any]], frontier: Sequence[Sequence[Any]] = ()) -> bytes:
    """One frame of a kind's changes (rows from :func:`change_row`), in order."""
    return _pack(["evs", epoch, rows, frontier])


def encode_probe(nonce: str) -> bytes:
    return _pack(["probe", nonce])


def decode_published(body: bytes) -> EventBatch | ProbeMessage:
    """A published frame, strictly: anything but a well-formed ``evs`` or
    ``probe`` frame raises :class:`WireError` (a subscriber drops it)."""
    msg = _unpack(body)
    if isinstance(msg, list) and len(msg) == 4 and msg[0] == "evs":
        _tag, epoch, rows, frontier = msg
        if not isinstance(epoch, str) or not isinstance(rows, list) or not rows:
            raise WireError("an event frame needs an epoch and at least one change")
        return EventBatch(epoch, [_change(row) for row in rows], _frontier(frontier))
    if isinstance(msg, list) and len(msg) == 2 and msg[0] == "probe" and isinstance(msg[1], str):
        return ProbeMessage(msg[1])
    raise WireError("unknown published message")


def _is_int(value: Any) -> bool:
    return type(value) is int


def _change(row: Any) -> Change:
    if not isinstance(row, list) or len(row) != 9:
        raise WireError("a change must be a list of 9 fields")
    seq, kind, rid, version, phase, empty, blob, old, rev = row
    if not (_is_int(seq) and seq > 0 and isinstance(kind, str) and isinstance(rid, str) and rid
            and _is_int(version) and isinstance(phase, str) and isinstance(empty, bool)
            and isinstance(blob, bytes) and (old is None or isinstance(old, bytes)) and _is_int(rev)):
        raise WireError("malformed change in an event frame")
    return Change(seq, kind, rid, version, phase, empty, blob, old, rev)


def _frontier(raw: Any) -> list[tuple[str, str, int]]:
    if not isinstance(raw, list) or len(raw) > MAX_FRONTIER:
        raise WireError(f"an event frame's frontier must be a list of at most {MAX_FRONTIER} kinds")
    out = []
    for entry in raw:
        if (not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], str)
                or not isinstance(entry[1], str) or not _is_int(entry[2]) or entry[2] < 0):
            raise WireError("a frontier entry must be [namespace, type, seq]")
        out.append((entry[0], entry[1], entry[2]))
    return out


# -- transactions -------------------------------------------------------------------

def encode_ops(ops: Sequence[Op]) -> list[dict[str, Any]]:
    """A transaction's operations as the ``ops`` argument of ``transaction``."""
    return [{"verb": op.verb, "namespace": op.namespace, "type": op.type, "id": op.id,
             "resource": op.blob if op.blob is not None else None if op.resource is None else pack(op.resource),
             "owner": op.owner,
             "expected_phase": op.expected_phase, "finalizers": list(op.finalizers)} for op in ops]


def decode_ops(raw: Any) -> list[Op]:
    """The operations of a ``transaction`` request, each checked as its verb would be."""
    if not isinstance(raw, list):
        raise InvalidRequestError("transaction: ops must be a list")
    if len(raw) > MAX_OPS:
        raise InvalidRequestError(f"transaction: {len(raw)} operations, more than {MAX_OPS}")
    return [_decode_op(index, item) for index, item in enumerate(raw, start=1)]


def _decode_op(index: int, item: Any) -> Op:
    if not isinstance(item, dict):
        raise InvalidRequestError(f"transaction operation {index}: not a map")
    verb, owner = item.get("verb"), item.get("owner")
    phase = item.get("expected_phase", "running")
    try:
        if verb in ("create", "update"):
            blob = item.get("resource")
            if not isinstance(blob, bytes):
                raise InvalidRequestError("resource must be a packed resource")
            return Op.from_blob(verb, blob, owner=owner if owner is not None else "", expected_phase=phase)
        fins = item.get("finalizers") or []
        if not isinstance(fins, list) or not all(isinstance(f, str) and f for f in fins):
            raise InvalidRequestError("finalizers must be a list of non-empty strings")
        return Op(str(verb), item.get("namespace"), item.get("type"), item.get("id"),  # type: ignore[arg-type]
                  owner=owner if owner is not None else "", expected_phase=phase, finalizers=tuple(fins)).checked()
    except (InvalidRequestError, TypeError, ValueError, msgpack.UnpackException) as exc:
        raise InvalidRequestError(f"transaction operation {index}: {exc}") from None
