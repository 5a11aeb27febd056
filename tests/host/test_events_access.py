"""The read rule on the events socket, enforced by the supervisor.

Every subscriber here is a real process other than the test: a controller
whose reconcile opens SUB sockets of its own (with its token, as anonymous,
with the admin token, which the test hands it), or a rogue ``python`` that
knows nothing of cosihost and speaks the wire with pyzmq and msgpack (with
no credentials, a stolen token, an expired one, or as an anonymous user).

"Receives nothing" is proven with a barrier, never a sleep: the subscriber
subscribes to the forbidden topics first and then, on the same socket, to a
topic it may read, and proves that last subscription live (a probe on it
comes back). The supervisor handles one connection's subscriptions in
order, so the forbidden ones have been decided by then. The test then
publishes events of the forbidden kinds and only then one on the barrier
topic; events reach one connection in the order they were published, so
once the subscriber has the barrier event, anything forbidden that it was
going to get has arrived. A connection the supervisor refuses outright
shows it in its socket monitor (a failed handshake) and never gets a
message.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from typing import Any

import pytest
import zmq

from cosihost import AccessDeniedError, Resource, wire
from cosihost.testing import wait_for
from cosihost.transport import Requester, Subscriber, endpoint
from test_access import get_or_none  # type: ignore[import-not-found]

INTS = "Ints.test.cosihost.dev"        # the snoop's weak input (namespace "default"): the barrier
SECRETS = "Secrets.test.cosihost.dev"  # declared by nobody
ECHOES = "Echoes.test.cosihost.dev"    # the snoop's shared output: it may read it anywhere
ORDERS = "Orders.test.cosihost.dev"    # what the test asks the snoop to do
REPORTS = "Reports.test.cosihost.dev"  # what the snoop saw (its exclusive output)
STATUS = "ControllerStatuses.runtime.cosihost.dev"

BARRIER = wire.topic("default", INTS)
ALLOWED = [BARRIER, wire.topic("echo", ECHOES)]
#: Prefixes a controller of the declaration below may not subscribe to:
#: everything, bare namespaces, part of a type, undeclared kinds, its input
#: type in another namespace, the supervisor's statuses.
FORBIDDEN = [b"", b"default\x00", b"default\x00Sec", b"elsewhere\x00", wire.topic("default", SECRETS),
             wire.topic("elsewhere", INTS), wire.topic("runtime", STATUS), b"echo"]

#: For each order: opens one SUB socket per credential, subscribes it to the
#: order's topics (the barrier last), proves the barrier live with probes
#: sent through its own requester, says so (Reports/<id>-live), then counts
#: what each socket receives until the barrier resource's event arrives.
SNOOP = '''
import os, time, zmq
from cosihost import Controller, Input, NotFoundError, Output, Resource, wire

class Snoop(Controller):
    name = "test.Snoop"
    inputs = [Input("orders", "Orders.test.cosihost.dev"), Input("default", "Ints.test.cosihost.dev", kind="weak")]
    outputs = [Output("Reports.test.cosihost.dev"), Output("Echoes.test.cosihost.dev", kind="shared")]

    def reconcile(self, rt):
        for order in rt.list("orders", "Orders.test.cosihost.dev"):
            rid = order.metadata.id
            try:
                rt.get("reports", "Reports.test.cosihost.dev", rid)
                continue
            except NotFoundError:
                pass
            rt.create(Resource("reports", "Reports.test.cosihost.dev", rid, snoop(rt, rid, order.spec)))

def credentials(rt, name, spec):
    if name == "own token":
        return rt._req.token
    if name == "admin token":  # handed over by the test: as its own user it cannot read admin.token
        return spec["admin_token"]
    return "anonymous"

def snoop(rt, rid, spec):
    ctx = zmq.Context()
    address = "ipc://" + os.path.join(spec["runtime_dir"], "events.sock")
    socks = {}
    try:
        for name in spec["as"]:
            sock = socks[name] = ctx.socket(zmq.SUB)
            user = credentials(rt, name, spec).encode()
            sock.setsockopt(zmq.PLAIN_USERNAME, user)
            sock.setsockopt(zmq.PLAIN_PASSWORD, user)
            sock.connect(address)
            for topic in spec["topics"] + [spec["barrier"]]:
                sock.setsockopt(zmq.SUBSCRIBE, topic)
        deadline = time.monotonic() + 20
        for n, (name, sock) in enumerate(socks.items()):
            nonce = f"{rid}-{n}"
            while True:
                if time.monotonic() > deadline:
                    return {"error": f"the barrier never became live for {name}"}
                rt._req.call("probe", topic=spec["barrier"], nonce=nonce)
                if sock.poll(200) and wire.decode_published(sock.recv_multipart()[1]) == wire.ProbeMessage(nonce):
                    break
        rt.create(Resource("reports", "Reports.test.cosihost.dev", rid + "-live", {}))
        received = {name: {} for name in socks}
        pending = set(socks)
        poller = zmq.Poller()
        for sock in socks.values():
            poller.register(sock, zmq.POLLIN)
        while pending and time.monotonic() < deadline + 20:
            ready = dict(poller.poll(200))
            for name, sock in socks.items():
                while sock in ready and sock.poll(0):
                    topic, body = sock.recv_multipart()
                    msg = wire.decode_published(body)
                    if isinstance(msg, wire.ProbeMessage):
                        continue
                    key = topic.hex()
                    received[name][key] = received[name].get(key, 0) + len(msg.changes)
                    if topic == spec["barrier"] and any(c.id == spec["barrier_id"] for c in msg.changes):
                        pending.discard(name)
        return {"received": received, "unfinished": sorted(pending), "token": rt._req.token, "pid": os.getpid()}
    finally:
        ctx.destroy(0)
'''

#: A subscriber that is nothing but pyzmq and msgpack. Arguments: a JSON
#: object with the events and api addresses, its PLAIN username (null: no
#: credentials), the topics to subscribe to, and the barrier. It subscribes
#: a "suspect" socket with those credentials, watches its handshake through
#: a socket monitor, and keeps an anonymous (user) socket on the barrier.
#: Prints a JSON line when the suspect is decided ({"accepted"/"refused"})
#: and the barrier live, then one with what each socket received once the
#: barrier event (a resource with the barrier id) has come.
ROGUE_SUBSCRIBER = r'''
import json, sys, time, uuid, msgpack, zmq
from zmq.utils.monitor import recv_monitor_message
cfg = json.loads(sys.argv[1])
topics = [bytes.fromhex(t) for t in cfg["topics"]]
barrier = bytes.fromhex(cfg["barrier"])
ctx = zmq.Context()

def sub(user, subscriptions):
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if user is not None:
        sock.setsockopt(zmq.PLAIN_USERNAME, user.encode())
        sock.setsockopt(zmq.PLAIN_PASSWORD, user.encode())
    monitor = sock.get_monitor_socket()
    sock.connect(cfg["events"])
    for topic in subscriptions:
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    return sock, monitor

def probe(nonce):
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(cfg["api"])
    req.send(msgpack.packb({"v": 1, "op": "probe", "rid": nonce, "tok": "",
                            "args": {"topic": barrier, "nonce": nonce}}))
    assert req.poll(5000), "no answer to a probe"
    assert msgpack.unpackb(req.recv())["ok"]
    req.close(0)

def live(sock):
    nonce = uuid.uuid4().hex
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        probe(nonce)
        if sock.poll(200) and msgpack.unpackb(sock.recv_multipart()[1]) == ["probe", nonce]:
            return True
    return False

def decided(monitor):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if monitor.poll(200):
            event = zmq.Event(recv_monitor_message(monitor)["event"]).name
            if event == "HANDSHAKE_SUCCEEDED":
                return "accepted", event
            if event.startswith("HANDSHAKE_FAILED"):
                return "refused", event
    return "undecided", ""

suspect, monitor = sub(cfg["user"], topics + [barrier])
verdict, event = decided(monitor)
witness, _ = sub("anonymous", [barrier])
ok = live(witness) and (verdict != "accepted" or live(suspect))
print(json.dumps({"verdict": verdict, "event": event, "live": ok}), flush=True)

received = {"suspect": {}, "witness": {}}
socks = {"suspect": suspect, "witness": witness}
deadline = time.monotonic() + 30
pending = {"witness", "suspect"} if verdict == "accepted" else {"witness"}
while pending and time.monotonic() < deadline:
    for name, sock in socks.items():
        while sock.poll(0 if name == "suspect" else 50):
            topic, body = sock.recv_multipart()
            msg = msgpack.unpackb(body)
            if msg[0] != "evs":
                continue
            received[name][topic.hex()] = received[name].get(topic.hex(), 0) + len(msg[2])
            if topic == barrier and any(row[2] == cfg["barrier_id"] for row in msg[2]):
                pending.discard(name)
while suspect.poll(0):  # whatever reached the suspect before the witness's barrier
    topic, body = suspect.recv_multipart()
    msg = msgpack.unpackb(body)
    if msg[0] == "evs":
        received["suspect"][topic.hex()] = received["suspect"].get(topic.hex(), 0) + len(msg[2])
print(json.dumps({"received": received, "unfinished": sorted(pending)}), flush=True)
ctx.destroy(0)
'''


@pytest.fixture
def snoop_world(supervisor_factory):
    sup = supervisor_factory(controllers={"snoop": SNOOP})
    with sup.client() as user, sup.client(admin=True) as admin:
        yield sup, user, admin


def publish_forbidden_then_barrier(user, barrier_id: str) -> None:
    """Events of every kind the snoop may not read, one of each kind it may,
    and last the barrier."""
    user.create(Resource("default", SECRETS, barrier_id, {"password": "hunter2"}))
    user.create(Resource("elsewhere", INTS, barrier_id, {"value": 1}))
    user.modify("elsewhere", INTS, barrier_id, lambda s: s.update(value=2))
    user.create(Resource("echo", ECHOES, barrier_id, {"by": "user"}))
    user.create(Resource("default", INTS, barrier_id, {"value": 0}))


def snoop(sup, user, admin, rid: str, credentials: list[str]) -> dict[str, Any]:
    admin.create(Resource("orders", ORDERS, rid, {
        "as": credentials, "topics": FORBIDDEN + [ALLOWED[1]], "barrier": BARRIER,
        "barrier_id": rid, "runtime_dir": str(sup.runtime_dir),
        "admin_token": (sup.runtime_dir / "admin.token").read_text().strip()}))

    def live() -> bool:
        failed = get_or_none(user, "reports", REPORTS, rid)
        assert failed is None, failed.spec  # a report before "live": the snoop gave up
        return get_or_none(user, "reports", REPORTS, rid + "-live") is not None

    wait_for(live, timeout=30, message="the snoop's subscriptions to be live")
    publish_forbidden_then_barrier(user, rid)
    report = wait_for(lambda: get_or_none(user, "reports", REPORTS, rid), timeout=30,
                      message="the snoop's report").spec
    assert "error" not in report, report
    assert report["unfinished"] == [], report
    return report


def test_a_controller_receives_only_the_kinds_it_reads_whatever_it_presents(snoop_world):
    """Its own token, no token (anonymous) or the admin's token, read from
    the runtime folder: from a controller's process, the events socket
    applies only subscriptions to its inputs and outputs."""
    sup, user, admin = snoop_world
    report = snoop(sup, user, admin, "r1", ["own token", "anonymous", "admin token"])
    for name, received in report["received"].items():
        # The kinds it may read did arrive; nothing else did.
        assert hex_topics(received) == set(ALLOWED), (name, {bytes.fromhex(t): n for t, n in received.items()})
    assert report["pid"] == sup.controller_pid("test.Snoop")

    # A user client, by contrast, watches a kind the snoop may not read.
    with user.watch_kind("default", SECRETS) as watch:
        user.create(Resource("default", SECRETS, "later", {}))
        event = watch.next(timeout=10)
        assert event is not None and event.resource.metadata.id == "later"


def run_rogue(sup, *, user: str | None, topics: list[bytes], barrier_id: str,
              publish) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ROGUE_SUBSCRIBER; publish (the test's events) once it is live."""
    cfg = {"events": f"ipc://{sup.runtime_dir / wire.EVENTS_SOCKET}",
           "api": f"ipc://{sup.runtime_dir / wire.API_SOCKET}", "user": user,
           "topics": [t.hex() for t in topics], "barrier": BARRIER.hex(), "barrier_id": barrier_id}
    proc = subprocess.Popen([sys.executable, "-c", ROGUE_SUBSCRIBER, json.dumps(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = json.loads(_line(proc, 45))
        assert first["live"], first
        publish()
        last = json.loads(_line(proc, 45))
        assert proc.wait(15) == 0
        return first, last
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _line(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            line = proc.stdout.readline()
            if line:
                return line.decode()
            break
    proc.kill()
    raise AssertionError(f"the rogue subscriber said nothing: {proc.stderr.read().decode()}")


def hex_topics(received: dict[str, int]) -> set[bytes]:
    return {bytes.fromhex(t) for t in received}


def test_a_rogue_without_credentials_or_with_a_controllers_token_receives_nothing(snoop_world):
    """No PLAIN credentials, a controller's valid token used from another
    process, a made-up token: the handshake fails and nothing arrives, while
    an anonymous socket in the same process sees the events go by."""
    sup, user, admin = snoop_world
    token = snoop(sup, user, admin, "token", ["own token"])["token"]
    for n, (who, credentials) in enumerate([("no credentials", None), ("stolen token", token),
                                            ("made-up token", "0" * 32)]):
        rid = f"rogue{n}"
        first, last = run_rogue(sup, user=credentials, topics=[b"", wire.topic("default", SECRETS)],
                                barrier_id=rid, publish=lambda rid=rid: publish_forbidden_then_barrier(user, rid))
        assert first["verdict"] == "refused", (who, first)
        if credentials is not None:  # the supervisor's ZAP handler said no (no credentials: a mechanism mismatch)
            assert first["event"] == "HANDSHAKE_FAILED_AUTH", (who, first)
        assert last["received"]["suspect"] == {}, (who, last)
        assert hex_topics(last["received"]["witness"]) == {BARRIER}, (who, last)


def test_an_anonymous_rogue_is_a_user_and_reads_everything(snoop_world):
    """The positive control of the test above: the same process with the
    user's credentials gets every kind, through a subscription to b""."""
    sup, user, admin = snoop_world
    first, last = run_rogue(sup, user="anonymous", topics=[b""], barrier_id="anon",
                            publish=lambda: publish_forbidden_then_barrier(user, "anon"))
    assert first["verdict"] == "accepted", first
    got = hex_topics(last["received"]["suspect"])
    assert {wire.topic("default", SECRETS), wire.topic("elsewhere", INTS), wire.topic("echo", ECHOES),
            BARRIER} <= got, got


def test_a_token_stops_working_when_its_controller_restarts(snoop_world):
    """The old token opens no connection once its process is gone (and the
    new one opens none from another process); the restarted controller
    subscribes with its new token."""
    sup, user, admin = snoop_world
    old = snoop(sup, user, admin, "before", ["own token"])
    admin.call("restart", name="test.Snoop")
    new = snoop(sup, user, admin, "after", ["own token"])
    assert new["token"] != old["token"] and new["pid"] != old["pid"]
    for n, token in enumerate([old["token"], new["token"]]):
        rid = f"expired{n}"
        first, last = run_rogue(sup, user=token, topics=[BARRIER], barrier_id=rid,
                                publish=lambda rid=rid: publish_forbidden_then_barrier(user, rid))
        assert (first["verdict"], first["event"]) == ("refused", "HANDSHAKE_FAILED_AUTH"), first
        assert last["received"]["suspect"] == {}, last


def test_refused_subscriber_gets_an_access_error(snoop_world):
    """Subscriber.subscribe says why its probe never came back; a probe for
    a kind the caller may not read is refused at once, as before."""
    sup, user, admin = snoop_world
    ctx = zmq.Context()
    try:
        req = Requester(ctx, endpoint(sup.runtime_dir, wire.API_SOCKET), timeout=5)
        sub = Subscriber(ctx, endpoint(sup.runtime_dir, wire.EVENTS_SOCKET), token="0" * 32)
        with pytest.raises(AccessDeniedError, match="refused it"):
            sub.subscribe(req, "default", INTS, timeout=1.5)
        sub.close()
        good = Subscriber(ctx, endpoint(sup.runtime_dir, wire.EVENTS_SOCKET))
        good.subscribe(req, "default", INTS)  # the same requester, as a user: fine
        good.close()
        req.close()
    finally:
        ctx.destroy(0)


def test_users_and_the_admin_watch_any_kind(snoop_world):
    sup, user, admin = snoop_world
    report = snoop(sup, user, admin, "watch", ["own token"])
    assert report["received"]
    for client in (user, admin):
        with client.watch_kind("reports", REPORTS, bootstrap=True) as reports, \
                client.watch_kind("runtime", STATUS) as statuses:
            ids = []
            while (event := reports.next(timeout=10)) is not None and event.kind != "bootstrapped":
                ids.append(event.resource.metadata.id)
            assert "watch" in ids
            admin.call("restart", name="test.Snoop")  # its status changes
            event = statuses.next(timeout=20)
            assert event is not None and event.resource.metadata.id == "test.Snoop"


#: An XSUB may send the events socket any message, not only subscriptions.
#: In manual mode libzmq applies a SUBSCRIBE to the connection of the last
#: *subscription* it queued, so a non-subscription queued among them would
#: send the next subscriptions to the wrong connections. This rogue tries
#: that, round after round, while keeping the supervisor busy (pipelined
#: probe requests) so that its messages queue together: X1 sends junk, a
#: fresh SUB subscribes to s<r>, X2 subscribes to t<r>. Then (barriers, no
#: sleeps) it checks whether X2 ever got one of the s<r> topics, and that
#: every SUB's subscription ends up live by sending it again, as
#: cosihost's Subscriber does when its probe does not come back.
ROGUE_JUNK = r'''
import json, sys, time, uuid, msgpack, zmq
from zmq.utils.monitor import recv_monitor_message
cfg = json.loads(sys.argv[1])
rounds, busy = cfg["rounds"], cfg["busy"]
ctx = zmq.Context()
deadline = time.monotonic() + 40

def sock(kind):
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.PLAIN_USERNAME, b"anonymous")
    s.setsockopt(zmq.PLAIN_PASSWORD, b"anonymous")
    monitor = s.get_monitor_socket()
    s.connect(cfg["events"])
    return s, monitor

dealer = ctx.socket(zmq.DEALER)
dealer.setsockopt(zmq.LINGER, 0)
dealer.setsockopt(zmq.RCVHWM, 0)  # replies are read late; none may be dropped
dealer.connect(cfg["api"])
sent = 0

def probe(topic, nonce):
    global sent
    sent += 1
    dealer.send_multipart([b"", msgpack.packb({"v": 1, "op": "probe", "rid": uuid.uuid4().hex, "tok": "",
                                               "args": {"topic": topic, "nonce": nonce}})])

def answered():
    global sent
    while sent:
        assert dealer.poll(max(0, int((deadline - time.monotonic()) * 1000))), "probe requests unanswered"
        assert msgpack.unpackb(dealer.recv_multipart()[-1])["ok"]
        sent -= 1

def subscribe(s, topic):
    if s.socket_type == zmq.XSUB:
        s.send(b"\x01" + topic)
    else:
        s.setsockopt(zmq.UNSUBSCRIBE, topic)  # sends it again if it was there
        s.setsockopt(zmq.SUBSCRIBE, topic)

def live(s, topic, others=None):
    """Subscribe until a probe on the topic comes back; what came before it goes to ``others``."""
    nonce = uuid.uuid4().hex
    while time.monotonic() < deadline:
        subscribe(s, topic)
        probe(topic, nonce)
        answered()
        while s.poll(100):
            got, body = s.recv_multipart()
            if got == topic and msgpack.unpackb(body) == ["probe", nonce]:
                return True
            if others is not None:
                others.append(got)
    return False

socks = [sock(zmq.XSUB), sock(zmq.XSUB)] + [sock(zmq.SUB) for _ in range(rounds)]
for _s, monitor in socks:
    while zmq.Event(recv_monitor_message(monitor)["event"]).name != "HANDSHAKE_SUCCEEDED":
        pass
(x1, _), (x2, _), subs = socks[0], socks[1], [s for s, _ in socks[2:]]
topic = lambda prefix, r: f"{prefix}{r}\0T\0".encode()
for r in range(rounds):
    for _ in range(busy):
        probe(b"busy\0T\0", "busy")
    x1.send(b"junk")
    subs[r].setsockopt(zmq.SUBSCRIBE, topic("s", r))
    x2.send(b"\x01" + topic("t", r))
answered()
barrier = b"barrier\0T\0"
assert live(x2, barrier), "x2 never got its barrier"
for r in range(rounds):
    probe(topic("s", r), "s")
answered()
got = []
assert live(x2, barrier, got), "x2 never got its barrier again"
misdirected = sum(1 for t in got if t.startswith(b"s"))
recovered = sum(live(s, topic("s", r)) for r, s in enumerate(subs))
print(json.dumps({"misdirected": misdirected, "recovered": recovered}), flush=True)
ctx.destroy(0)
'''


def test_a_subscriber_sending_junk_cannot_misdirect_subscriptions(supervisor_factory):
    sup = supervisor_factory()
    rounds = 30
    cfg = {"events": f"ipc://{sup.runtime_dir / wire.EVENTS_SOCKET}",
           "api": f"ipc://{sup.runtime_dir / wire.API_SOCKET}", "rounds": rounds, "busy": 50}
    done = subprocess.run([sys.executable, "-c", ROGUE_JUNK, json.dumps(cfg)], capture_output=True, timeout=50)
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout)
    assert result == {"misdirected": 0, "recovered": rounds}, result
    with sup.client() as user:  # and the supervisor serves on
        user.create(Resource("default", INTS, "after", {"value": 1}))
        assert user.get("default", INTS, "after").spec == {"value": 1}
