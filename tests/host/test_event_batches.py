"""Batched events through a real supervisor: one frame per kind per loop
turn, and the Clone pattern's guarantees kept across them.

- A controller in its own process that reads two kinds never reconciles on
  half of a transaction that wrote both (the frames' frontier).
- A frame whose first change is ahead of the cache is filled from the
  supervisor's history, or, once history has lost it, resyncs the kind.
- A frame that says another kind changed in the same turn keeps the cache
  incomplete until that kind has caught up (filled from history here).
- A subscriber drops malformed frames and keeps receiving good ones.
- A user's watch gets a transaction's changes of its kind in one frame.
"""

from __future__ import annotations

import msgpack
import pytest
import zmq

from cosihost import Resource, wire
from cosihost.resource import pack
from cosihost.testing import wait_for
from cosihost.transport import Requester, Subscriber, endpoint
from cosihost.worker.cache import Cache

LEFT = "Lefts.test.cosihost.dev"
RIGHT = "Rights.test.cosihost.dev"
CHECKS = "Checks.test.cosihost.dev"
IDS = ("a", "b", "c", "d")

#: Reads both halves of every pair and counts the reconciles that saw them differ.
CHECKER = f'''
from cosihost import Controller, Input, Output

class Checker(Controller):
    name = "test.Checker"
    inputs = [Input("pairs", "{LEFT}", kind="weak"), Input("pairs", "{RIGHT}", kind="weak")]
    outputs = [Output("{CHECKS}")]
    torn = 0
    rounds = 0

    def reconcile(self, rt):
        left = {{r.metadata.id: r.spec["n"] for r in rt.list("pairs", "{LEFT}")}}
        right = {{r.metadata.id: r.spec["n"] for r in rt.list("pairs", "{RIGHT}")}}
        Checker.rounds += 1
        if left != right or len(set(left.values())) > 1:
            Checker.torn += 1
        seen = max(left.values(), default=0)
        rt.modify("checks", "{CHECKS}", "pairs",
                  lambda s: s.update(torn=Checker.torn, rounds=Checker.rounds, seen=seen))
'''


@pytest.mark.timeout(120)
def test_a_controller_never_reconciles_on_half_a_transaction_across_kinds(supervisor_factory) -> None:
    sup = supervisor_factory(controllers={"checker": CHECKER})
    rounds = 300
    with sup.client() as c:
        for n in range(1, rounds + 1):
            with c.transaction():  # every id of both kinds, to n: one transaction, two kinds
                for rid in IDS:
                    for typ in (LEFT, RIGHT):
                        c.modify("pairs", typ, rid, lambda s: s.update(n=n))

        def done() -> dict | None:
            found = [r.spec for r in c.list("checks", CHECKS)]
            return found[0] if found and found[0]["seen"] == rounds else None

        check = wait_for(done, timeout=60, message="the checker to see the last transaction")
    assert check["torn"] == 0, check
    assert check["rounds"] > 1


def test_a_user_watch_receives_a_transaction_of_its_kind_whole(supervisor_factory) -> None:
    sup = supervisor_factory(controllers={})
    with sup.client() as writer, sup.client() as reader:
        with reader.watch_kind("pairs", LEFT) as events:
            with writer.transaction():
                for n in range(10):
                    writer.create(Resource("pairs", LEFT, f"r{n}", {"n": n}))
            first = events.next(timeout=10)
            assert first is not None and first.kind == "created"
            rest = [events.next(timeout=0) for _ in range(9)]  # in the same frame: no waiting
            assert [e.resource.metadata.id for e in [first, *rest] if e is not None] == [f"r{n}" for n in range(10)]


@pytest.fixture
def cache_world(supervisor_factory):
    """A supervisor with a short history, and a Cache of one kind in this process."""
    sup = supervisor_factory(controllers={}, config="history = 8\n")
    ctx = zmq.Context()
    req = Requester(ctx, endpoint(sup.runtime_dir, wire.API_SOCKET))
    req.token = (sup.runtime_dir / "admin.token").read_text().strip()
    sub = Subscriber(ctx, endpoint(sup.runtime_dir, wire.EVENTS_SOCKET), token=req.token)
    seen: list[tuple[str, str, str, int]] = []
    cache = Cache(req, sub, lambda ns, typ, kind, change: seen.append((typ, kind, change.id, change.version)))
    try:
        with sup.client() as client:
            yield client, cache, seen
    finally:
        sub.close()
        req.close()
        ctx.destroy(0)


def _frame(client, typ: str, seq: int, rid: str, *, frontier=()) -> wire.EventBatch:
    """The frame the supervisor would have sent for change ``seq`` of ``typ``
    (what a subscriber sees when the frames before it were dropped)."""
    res = client.get("pairs", typ, rid)
    blob = pack(res)
    row = wire.change_row(seq, "updated", rid, (res.metadata.version, res.metadata.phase, True), blob, None, 0)
    return wire.decode_published(wire.encode_events(client.call("ping")["epoch"], [row], list(frontier)))


def test_a_frame_after_a_gap_is_filled_from_history(cache_world) -> None:
    client, cache, seen = cache_world
    client.create(Resource("pairs", LEFT, "a", {"n": 0}))
    kc = cache.ensure("pairs", LEFT)
    start = kc.seq
    for n in range(1, 4):
        client.modify("pairs", LEFT, "a", lambda s: s.update(n=n))
    cache.apply(wire.topic("pairs", LEFT), _frame(client, LEFT, start + 3, "a"))
    assert kc.seq == start + 3
    assert [s[3] for s in seen] == [2, 3, 4]  # the two missed changes, then the frame's own, in order
    assert cache.resyncs == 0
    assert cache.get("pairs", LEFT, "a").spec == {"n": 3}


def test_a_frame_after_history_lost_the_gap_resyncs(cache_world) -> None:
    client, cache, seen = cache_world
    client.create(Resource("pairs", LEFT, "a", {"n": 0}))
    kc = cache.ensure("pairs", LEFT)
    start = kc.seq
    for n in range(1, 21):  # more than the history of 8 keeps
        client.modify("pairs", LEFT, "a", lambda s: s.update(n=n))
    cache.apply(wire.topic("pairs", LEFT), _frame(client, LEFT, start + 20, "a"))
    assert cache.resyncs == 1
    assert kc.seq == start + 20
    assert cache.get("pairs", LEFT, "a").spec == {"n": 20}
    assert seen and seen[0][1] == "resync"


def test_a_frame_naming_another_kind_keeps_the_cache_incomplete_until_it_catches_up(cache_world) -> None:
    client, cache, _seen = cache_world
    for typ in (LEFT, RIGHT):
        client.create(Resource("pairs", typ, "a", {"n": 0}))
    left, right = cache.ensure("pairs", LEFT), cache.ensure("pairs", RIGHT)
    with client.transaction():
        for typ in (LEFT, RIGHT):
            client.modify("pairs", typ, "a", lambda s: s.update(n=1))
    frontier = [["pairs", LEFT, left.seq + 1], ["pairs", RIGHT, right.seq + 1]]
    cache.apply(wire.topic("pairs", LEFT), _frame(client, LEFT, left.seq + 1, "a", frontier=frontier))
    assert cache.incomplete() == {("pairs", RIGHT): right.seq + 1}  # the left half only: no reconcile yet
    cache.complete()  # its frame did not come: from history
    assert cache.incomplete() == {}
    assert cache.get("pairs", RIGHT, "a").spec == {"n": 1}


def test_a_subscriber_drops_malformed_frames_and_keeps_receiving() -> None:
    ctx = zmq.Context()
    zap = ctx.socket(zmq.REP)  # the PLAIN handshake asks ZAP: this test says yes
    zap.bind("inproc://zeromq.zap.01")
    pub = ctx.socket(zmq.XPUB)
    try:
        pub.setsockopt(zmq.PLAIN_SERVER, 1)
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        sub = Subscriber(ctx, f"tcp://127.0.0.1:{port}")
        assert zap.poll(5000), "no authentication request"
        request = zap.recv_multipart()
        zap.send_multipart([b"1.0", request[1], b"200", b"OK", b"user", b""])
        topic = wire.topic("pairs", LEFT)
        sub.sock.setsockopt(zmq.SUBSCRIBE, topic)
        assert pub.poll(5000), "the subscription never reached the publisher"
        pub.recv()
        good_row = wire.change_row(1, "created", "a", (1, "running", True), pack(Resource("pairs", LEFT, "a")),
                                   None, 0)
        junk = [
            [topic],  # one part
            [topic, b"\xc1"],  # not msgpack
            [topic, msgpack.packb(["evs", "e", [], []])],  # no change
            [topic, msgpack.packb(["evs", "e", [good_row[:8]], []])],  # a short row
            [topic, msgpack.packb(["evs", "e", [good_row], [["pairs", LEFT]]])],  # a short frontier entry
            [topic, msgpack.packb(["evs", 7, [good_row], []])],  # an epoch that is no string
            [topic, msgpack.packb(["ev", "e", 1, "created", good_row[6], None, 0])],  # the old one-change frame
            [topic, wire.encode_events("e", [good_row]), b"extra"],  # three parts
        ]
        for frames in junk:
            pub.send_multipart(frames)
        pub.send_multipart([topic, wire.encode_events("e", [good_row])])
        got = sub.recv(5.0)
        assert got is not None and got[0] == topic
        assert [c.id for c in got[1].changes] == ["a"]
        assert sub.rejected == len(junk)
        sub.close()
    finally:
        pub.close(0)
        zap.close(0)
        ctx.destroy(0)
