"""The published frames (``evs``): what the supervisor's outbox makes of a
loop turn, and the strict decoding every subscriber does.

Decoding takes a frame whole or raises WireError: a fuzzer mutates valid
frames (values replaced by any msgpack value, bytes cut or flipped) and
nothing else may escape, so a subscriber can drop what it cannot read and
go on.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cosihost import Resource, wire
from cosihost.resource import pack
from cosihost.state.events import Record
from cosihost.supervisor.outbox import EventOutbox

TYPE = "Items.test.cosihost.dev"


def _record(seq: int, rid: str = "a", *, spec: Any = None, meta: tuple[int, str, bool] | None = (1, "running", True),
            kind: str = "updated") -> Record:
    res = Resource("ns", TYPE, rid, spec or {})
    res.metadata.version = seq
    res.metadata.phase = "tearing-down"
    return Record(seq, kind, rid, pack(res), None, 0, False, meta)


def _frames(outbox: EventOutbox) -> list[list[bytes]]:
    sent: list[list[bytes]] = []
    outbox.flush("epoch1", sent.append)
    return sent


def test_one_frame_per_kind_per_turn_in_order() -> None:
    outbox = EventOutbox()
    for seq in (1, 2, 3):
        outbox.add("ns", TYPE, _record(seq, f"r{seq}"))
    sent = _frames(outbox)
    assert len(sent) == 1 and sent[0][0] == wire.topic("ns", TYPE)
    batch = wire.decode_published(sent[0][1])
    assert isinstance(batch, wire.EventBatch)
    assert batch.epoch == "epoch1" and batch.frontier == []  # one kind: nothing to wait for
    assert [(c.seq, c.id) for c in batch.changes] == [(1, "r1"), (2, "r2"), (3, "r3")]
    assert not outbox and _frames(outbox) == []


def test_a_turn_over_several_kinds_names_them_all_in_every_frame() -> None:
    outbox = EventOutbox()
    outbox.add("ns", TYPE, _record(4))
    outbox.add("ns", "Others.test.cosihost.dev", _record(9))
    outbox.add("ns", TYPE, _record(5))
    sent = _frames(outbox)
    assert [frames[0] for frames in sent] == [wire.topic("ns", TYPE), wire.topic("ns", "Others.test.cosihost.dev")]
    for frames in sent:
        batch = wire.decode_published(frames[1])
        assert isinstance(batch, wire.EventBatch)
        assert batch.frontier == [("ns", TYPE, 5), ("ns", "Others.test.cosihost.dev", 9)]


def test_changes_carry_what_a_cache_needs_and_unknown_meta_is_read_once() -> None:
    outbox = EventOutbox()
    outbox.add("ns", TYPE, _record(3, meta=(3, "running", False)))
    outbox.add("ns", TYPE, _record(4, meta=None, kind="destroyed"))  # from the blob: version 4, tearing down
    batch = wire.decode_published(_frames(outbox)[0][1])
    assert isinstance(batch, wire.EventBatch)
    first, second = batch.changes
    assert (first.version, first.phase, first.finalizers_empty) == (3, "running", False)
    assert (second.kind, second.version, second.phase, second.finalizers_empty) == ("destroyed", 4, "tearing-down", True)
    assert second.resource().metadata.id == "a"


def test_a_big_turn_is_cut_into_frames_under_the_limit() -> None:
    outbox = EventOutbox()
    big = "x" * 200_000
    for seq in range(1, 13):
        outbox.add("ns", TYPE, _record(seq, spec={"big": big}))
    sent = _frames(outbox)
    assert len(sent) > 1
    assert all(len(frames[1]) <= wire.BATCH_BYTES + 300_000 for frames in sent)
    seqs = [c.seq for frames in sent for c in wire.decode_published(frames[1]).changes]  # type: ignore[union-attr]
    assert seqs == list(range(1, 13))


def _valid() -> list[Any]:
    row = wire.change_row(7, "updated", "a", (2, "running", True), pack(Resource("ns", TYPE, "a")), None, 0)
    return ["evs", "epoch1", [row], [["ns", TYPE, 7]]]


@pytest.mark.parametrize("frame", [
    ["evs", "e", [], []],
    ["evs", "e", "rows", []],
    ["evs", "e", [[0, "updated", "a", 1, "running", True, b"x", None, 0]], []],  # seq 0
    ["evs", "e", [[1, "updated", "", 1, "running", True, b"x", None, 0]], []],  # no id
    ["evs", "e", [[1, "updated", "a", 1, "running", 1, b"x", None, 0]], []],  # finalizers flag not a bool
    ["evs", "e", [[1, "updated", "a", True, "running", True, b"x", None, 0]], []],  # version a bool
    ["evs", "e", [[1, "updated", "a", 1, "running", True, "text", None, 0]], []],  # blob not bin
    ["evs", "e", [[1, "updated", "a", 1, "running", True, b"x", None, 0]], [["ns", TYPE, -1]]],
    ["evs", "e", [[1, "updated", "a", 1, "running", True, b"x", None, 0]], "frontier"],
    ["evs", "e", [[1, "updated", "a", 1, "running", True, b"x", None, 0]], [["ns", TYPE, 1]] * 5000],
    ["evs", "e", [[1, "updated", "a", 1, "running", True, b"x", None, 0]]],  # no frontier
    ["ev", "e", 1, "updated", b"x", None, 0],  # the one-change frame before batches
    ["probe", 7],
    {"evs": 1},
])
def test_malformed_frames_are_refused(frame: Any) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_published(msgpack.packb(frame, use_bin_type=True))


def test_an_oversized_frame_is_refused_before_decoding() -> None:
    with pytest.raises(wire.WireError, match="limit"):
        wire.decode_published(b"\x00" * (wire.MAX_MESSAGE_BYTES + 1))


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=8)


def _replace(frame: Any, path: list[int], value: Any) -> Any:
    """``frame`` with the element at ``path`` (indices, each taken modulo the list's length) replaced."""
    if not path or not isinstance(frame, list) or not frame:
        return value
    i = path[0] % len(frame)
    return frame[:i] + [_replace(frame[i], path[1:], value)] + frame[i + 1:]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.lists(st.integers(0, 20), min_size=1, max_size=4), value=_values)
def test_fuzzed_values_are_decoded_or_refused(path: list[int], value: Any) -> None:
    body = msgpack.packb(_replace(_valid(), path, value), use_bin_type=True)
    try:
        msg = wire.decode_published(body)
    except wire.WireError:
        return
    assert isinstance(msg, (wire.EventBatch, wire.ProbeMessage))


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(0, 400), flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4))
def test_fuzzed_bytes_are_decoded_or_refused(cut: int, flips: list[tuple[int, int]]) -> None:
    body = bytearray(msgpack.packb(_valid(), use_bin_type=True))
    for at, byte in flips:
        body[at % len(body)] = byte
    try:
        msg = wire.decode_published(bytes(body[:max(1, len(body) - cut)]))
    except wire.WireError:
        return
    assert isinstance(msg, (wire.EventBatch, wire.ProbeMessage))


def test_remote_events_go_out_by_whole_revisions() -> None:
    """An etcd revision's events reach the loop together: those after the
    last "revision done" wait for it (or for the next drain, at the latest)."""
    from cosihost.supervisor.remote import RemoteWrites

    wakes: list[int] = []
    remote = RemoteWrites(lambda: wakes.append(1), workers=1)
    try:
        out: list[int] = []
        publish = lambda ns, typ, record: out.append(record.seq)  # noqa: E731
        remote.on_event("ns", TYPE, _record(1))
        remote.on_event("ns", "Others.test.cosihost.dev", _record(1))
        remote.on_changes_done()
        remote.on_event("ns", TYPE, _record(2))  # a revision still being applied
        remote.drain(publish)
        assert out == [1, 1] and wakes == [1]
        remote.on_event("ns", "Others.test.cosihost.dev", _record(2))
        remote.on_changes_done()
        remote.drain(publish)
        assert out == [1, 1, 2, 2]
        remote.on_event("ns", TYPE, _record(3))  # never said done: out at the drain after the next
        remote.drain(publish)
        assert out == [1, 1, 2, 2]
        remote.drain(publish)
        assert out == [1, 1, 2, 2, 3]
    finally:
        remote.close()
