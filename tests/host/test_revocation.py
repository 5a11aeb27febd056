"""Subscriptions are taken back when a controller's inputs shrink.

Two controllers of the same code run side by side; each, on its order,
opens two SUB sockets of its own (with its token) besides its runtime's,
subscribes both to the kind it will drop and to one it keeps, and proves
them live; then it shrinks its inputs (``update_inputs``). The good one
unsubscribes the dropped kind on both sockets, as the runtime does on its
own; the rogue does on its first socket and keeps it on the second (one
connection giving a kind up must not count for all). Both then open a
late socket and subscribe it to the dropped kind (which the supervisor
must refuse) and then to the kept one, proven live: the supervisor handles
one connection's subscriptions in order, so the refusal has been decided
by then.

The test publishes events of the dropped kind and then a barrier event of
the kept kind; events reach a connection in the order they were published,
so once both sockets have the barrier, whatever of the dropped kind was
going to arrive has arrived. The counts are made at the sockets.
"""

from __future__ import annotations

from cosihost import Resource
from cosihost.testing import wait_for
from test_access import get_or_none  # type: ignore[import-not-found]

INTS = "Ints.test.cosihost.dev"
ORDERS = "Orders.test.cosihost.dev"
REPORTS = "Reports.test.cosihost.dev"
DROPPED, KEPT = "dropped", "kept"  # namespaces of INTS

SHRINKER = '''
import os, time, zmq
from cosihost import Controller, Input, NotFoundError, Output, Resource, wire

ORDERS, INTS, REPORTS = "Orders.test.cosihost.dev", "Ints.test.cosihost.dev", "Reports.test.cosihost.dev"

class Shrinker(Controller):
    name = "test.{name}"
    inputs = [Input("orders", ORDERS), Input("kept", INTS), Input("dropped", INTS)]
    outputs = [Output(REPORTS, kind="shared")]

    def reconcile(self, rt):
        for order in rt.list("orders", ORDERS):
            if order.metadata.id != self.name:
                continue
            try:
                rt.get("reports", REPORTS, self.name + "-shrunk")
                continue  # once per order, even across a restart
            except NotFoundError:
                pass
            rt.create(Resource("reports", REPORTS, self.name, shrink(rt, self.name, order.spec)))

def shrink(rt, name, spec):
    ctx = zmq.Context()
    address = "ipc://" + os.path.join(spec["runtime_dir"], "events.sock")
    dropped, kept, orders = wire.topic("dropped", INTS), wire.topic("kept", INTS), wire.topic("orders", ORDERS)
    counts = {{"first": {{}}, "second": {{}}, "late": {{}}}}
    deadline = time.monotonic() + 30
    socks = {{}}

    def open_sub(label, *topics):
        sock = socks[label] = ctx.socket(zmq.SUB)
        token = rt._req.token.encode()
        sock.setsockopt(zmq.PLAIN_USERNAME, token)
        sock.setsockopt(zmq.PLAIN_PASSWORD, token)
        sock.connect(address)
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        return sock

    def take(label):
        topic, body = socks[label].recv_multipart()
        msg = wire.decode_published(body)
        if isinstance(msg, wire.EventBatch):
            counts[label][topic.hex()] = counts[label].get(topic.hex(), 0) + len(msg.changes)
        return topic, msg

    def prove(label, topic, nonce):
        while time.monotonic() < deadline:
            rt._req.call("probe", topic=topic, nonce=nonce)
            while socks[label].poll(100):
                if take(label)[1] == wire.ProbeMessage(nonce):
                    return
        raise RuntimeError(f"{{topic!r}} never became live on the {{label}} socket")

    try:
        for label in ("first", "second"):
            open_sub(label, dropped, kept)
            prove(label, dropped, "d-" + label)
            prove(label, kept, "k-" + label)
        rt.update_inputs([Input("orders", ORDERS), Input("kept", INTS)])
        rt.create(Resource("reports", REPORTS, name + "-shrunk", {{}}))
        for label in ("first", "second"):
            if label != spec["keep"]:
                socks[label].setsockopt(zmq.UNSUBSCRIBE, dropped)
            socks[label].setsockopt(zmq.SUBSCRIBE, orders)
            prove(label, orders, "o-" + label)  # the unsubscription before it has been handled
        open_sub("late", dropped, kept)
        prove("late", kept, "k-late")  # the subscription to the dropped kind before it has been decided
        rt.create(Resource("reports", REPORTS, name + "-live", {{}}))
        pending = set(socks)
        while pending and time.monotonic() < deadline:
            for label in list(pending):
                while socks[label].poll(50):
                    topic, msg = take(label)
                    if topic == kept and isinstance(msg, wire.EventBatch) and \\
                            any(ch.id == spec["barrier_id"] for ch in msg.changes):
                        pending.discard(label)
        return {{"counts": counts, "unfinished": sorted(pending), "pid": os.getpid()}}
    finally:
        ctx.destroy(0)
'''

CONFIG = """
[timing]
revoke_within = 1.5
"""


def order(sup, user, admin, name: str, *, keep: str | None) -> None:
    """``keep``: the socket on which the controller keeps the dropped kind (None: neither)."""
    admin.create(Resource("orders", ORDERS, f"test.{name}", {
        "keep": keep, "runtime_dir": str(sup.runtime_dir), "barrier_id": f"barrier-{name}"}))


def publish_dropped_then_barrier(user, name: str) -> None:
    for n in range(3):
        user.create(Resource(DROPPED, INTS, f"{name}-{n}", {"value": n}))
    user.create(Resource(KEPT, INTS, f"barrier-{name}", {"value": 0}))


def test_a_controller_whose_inputs_shrink_stops_receiving_the_dropped_kind(supervisor_factory):
    """The good controller: nothing of the dropped kind reaches any of its
    sockets once its inputs shrank; it is not restarted. The rogue, which
    kept the subscription on one of its connections, is restarted at the
    deadline with the reason in its status."""
    from cosihost import wire

    sup = supervisor_factory(controllers={"good": SHRINKER.format(name="Good"),
                                          "rogue": SHRINKER.format(name="Rogue")}, config=CONFIG)
    dropped, kept = wire.topic(DROPPED, INTS).hex(), wire.topic(KEPT, INTS).hex()
    with sup.client() as user, sup.client(admin=True) as admin:
        good_pid = sup.controller_pid("test.Good")
        order(sup, user, admin, "Good", keep=None)
        wait_for(lambda: get_or_none(user, "reports", REPORTS, "test.Good-live"), timeout=30,
                 message="the good controller's sockets to be live")
        publish_dropped_then_barrier(user, "Good")
        report = wait_for(lambda: get_or_none(user, "reports", REPORTS, "test.Good"), timeout=30,
                          message="the good controller's counts").spec
        assert report["unfinished"] == [], report
        for label in ("first", "second", "late"):
            assert report["counts"][label].get(dropped, 0) == 0 and report["counts"][label][kept] >= 1, report

        rogue_pid = sup.controller_pid("test.Rogue")
        order(sup, user, admin, "Rogue", keep="second")  # its first connection gives the kind up
        wait_for(lambda: get_or_none(user, "reports", REPORTS, "test.Rogue-shrunk"), timeout=30,
                 message="the rogue to shrink its inputs")
        status = sup.wait_status("test.Rogue", lambda s: s["last_exit"] is not None, timeout=30)
        reason = f"kept its subscription to {DROPPED}/{INTS} after its inputs shrank"
        assert status["last_exit"]["reason"] == reason, status
        assert sup.controller_pid("test.Rogue") != rogue_pid
        # The good one shrank first, so its deadline passed before the rogue's.
        good = sup.statuses()["test.Good"]
        assert good["restarts"] == 0 and good["pid"] == good_pid and good["last_exit"] is None, good
