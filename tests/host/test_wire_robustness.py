"""Whatever arrives on the API socket, the supervisor answers (or, where no
answer is possible, drops it) and keeps serving (DESIGN section 4).

Frames are sent from this test process on raw pyzmq sockets, never through
cosihost's client: malformed messages of every kind, oversized messages,
broken envelopes, requests that need a registration, retried writes, and a
hypothesis fuzzer that mutates valid requests of every verb. After each,
the supervisor still answers ping, the canary resources are unchanged and a
controller keeps converging.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, Callable, Iterator

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cosihost import NotFoundError, Resource
from cosihost import wire
from cosihost.errors import ERRORS_BY_CODE
from cosihost.resource import pack
from cosihost.testing import SupervisorProcess, wait_for

SEEDS = "Seeds.test.cosihost.dev"
KEPT = "Kept.test.cosihost.dev"
TOKENS = "Tokens.test.cosihost.dev"
VAULT = "Vault.test.cosihost.dev"
FUZZ = "Fuzz.test.cosihost.dev"
#: Canary namespaces are longer than any name the fuzzer makes up (12
#: characters) and share no prefix with those it starts from.
SEEDS_NS, KEPT_NS, VAULT_NS = "canary-vault-seeds", "canary-vault-kept", "canary-vault-users"

#: Copies every seed to its exclusive output: a controller that must keep converging.
KEEPER = '''
from cosihost import Controller, Input, Output

class Keeper(Controller):
    name = "test.Keeper"
    inputs = [Input("canary-vault-seeds", "Seeds.test.cosihost.dev")]
    outputs = [Output("Kept.test.cosihost.dev")]

    def reconcile(self, rt):
        for r in rt.list("canary-vault-seeds", "Seeds.test.cosihost.dev"):
            value = r.spec["value"]
            rt.modify("canary-vault-kept", "Kept.test.cosihost.dev", r.metadata.id,
                      lambda s: s.update(value=value))
'''

#: Publishes its own token, so the test can send controller-only requests
#: with malformed arguments as a registered controller.
TOKENER = '''
from cosihost import Controller, Input, Output

class Tokener(Controller):
    name = "test.Tokener"
    inputs = [Input("default", "Ints.test.cosihost.dev")]
    outputs = [Output("Tokens.test.cosihost.dev")]

    def reconcile(self, rt):
        token = rt._req.token
        rt.modify("tokens", "Tokens.test.cosihost.dev", "me", lambda s: s.update(token=token))
'''

REPLY_TIMEOUT_MS = 5000
_rids = itertools.count()


def rid() -> str:
    return f"robust-{next(_rids)}"


def frame(verb: str, arguments: dict[str, Any] | None = None, /, *, token: str = "",
          request_id: str | None = None, **fields: Any) -> bytes:
    """An encoded request; ``fields`` replace (or, given as _DROP, remove)
    envelope fields: v, op, rid, tok, args."""
    msg: dict[str, Any] = {"v": wire.PROTOCOL, "op": verb, "rid": request_id or rid(), "tok": token,
                           "args": arguments if arguments is not None else {}}
    for key, value in fields.items():
        if value is _DROP:
            msg.pop(key, None)
        else:
            msg[key] = value
    return msgpack.packb(msg, use_bin_type=True)


_DROP = object()


@contextlib.contextmanager
def req_socket(ctx: zmq.Context, sup: SupervisorProcess) -> Iterator[zmq.Socket]:
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{sup.runtime_dir / wire.API_SOCKET}")
    try:
        yield sock
    finally:
        sock.close(linger=0)


def exchange(sock: zmq.Socket, data: bytes, *, timeout_ms: int = REPLY_TIMEOUT_MS) -> bytes | None:
    sock.send(data)
    if sock.poll(timeout_ms, zmq.POLLIN):
        return sock.recv()
    return None


def check_reply(raw: bytes) -> wire.Reply:
    """A reply is always a well-formed map of this protocol, its error typed."""
    msg = msgpack.unpackb(raw, raw=False)
    assert isinstance(msg, dict) and msg.get("v") == wire.PROTOCOL, msg
    reply = wire.decode_reply(raw)
    if not reply.ok:
        assert reply.code in ERRORS_BY_CODE and reply.code != "internal", (reply.code, reply.message)
    return reply


def seed(client, rid_: str, value: int) -> None:
    client.modify(SEEDS_NS, SEEDS, rid_, lambda s: s.update(value=value))


def kept(client, rid_: str) -> Any:
    try:
        return client.get(KEPT_NS, KEPT, rid_).spec["value"]
    except NotFoundError:
        return None


PROBE_PREFIX = "after-"  # seeds (and their outputs) of still_serving, not canaries


def canaries(client) -> dict[str, Any]:
    return {f"{ns}/{typ}": [(r.metadata.id, r.metadata.version, r.metadata.owner, r.metadata.finalizers, r.spec)
                            for r in client.list(ns, typ) if not r.metadata.id.startswith(PROBE_PREFIX)]
            for ns, typ in ((SEEDS_NS, SEEDS), (KEPT_NS, KEPT), (VAULT_NS, VAULT))}


def start_world(make: Callable[..., SupervisorProcess]) -> SupervisorProcess:
    """A supervisor with the keeper (converged on three seeds), the tokener
    and owner-less user canaries."""
    sup = make(controllers={"keeper": KEEPER, "tokener": TOKENER})
    with sup.client() as c:
        for i in range(3):
            seed(c, f"s{i}", i)
            c.create(Resource(VAULT_NS, VAULT, f"v{i}", {"value": i}, labels={"canary": "yes"}))
        wait_for(lambda: all(kept(c, f"s{i}") == i for i in range(3)), message="the keeper's outputs")
    return sup


def still_serving(sup: SupervisorProcess, before: dict[str, Any], probe: str) -> None:
    """Ping answers, the canaries are as they were, the keeper converges."""
    assert probe.startswith(PROBE_PREFIX)
    assert sup.ping()["ready"]
    with sup.client() as c:
        assert canaries(c) == before
        seed(c, probe, 99)
        wait_for(lambda: kept(c, probe) == 99, message="the keeper to converge after the abuse")
        c.destroy(SEEDS_NS, SEEDS, probe)
    assert sup.statuses()["test.Keeper"]["restarts"] == 0


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[SupervisorProcess, zmq.Context, str, dict[str, Any]]]:
    """One supervisor for the malformed-frame cases (each leaves it as it was)."""
    made: list[SupervisorProcess] = []

    def make(**kwargs: Any) -> SupervisorProcess:
        sup = SupervisorProcess(**kwargs)
        made.append(sup)
        return sup.start()

    ctx = zmq.Context()
    try:
        sup = start_world(make)
        with sup.client() as c:
            token = wait_for(lambda: c.get("tokens", TOKENS, "me").spec["token"], message="the tokener's token")
            before = canaries(c)
        yield sup, ctx, token, before
    finally:
        ctx.destroy(linger=0)
        for sup in made:
            sup.cleanup()


def _resource_fields(**change: Any) -> bytes:
    """A packed resource whose fields are then replaced, field by field."""
    fields = msgpack.unpackb(pack(Resource("fuzz", FUZZ, "r", {"a": 1})))
    names = ["namespace", "type", "id", "version", "owner", "phase", "finalizers", "labels",
             "annotations", "created", "updated", "spec"]
    for name, value in change.items():
        fields[names.index(name)] = value
    return msgpack.packb(fields, use_bin_type=True)


GOOD_RESOURCE = pack(Resource("fuzz", FUZZ, "r", {"a": 1}))
KIND = {"namespace": "fuzz", "type": FUZZ}
ONE = {**KIND, "id": "r"}
INVALID, DENIED, NOT_FOUND, OK = "invalid-request", "access-denied", "not-found", "ok"
TOKEN = object()  # stands for the tokener's token in a case

#: label -> (frame, or (op, args, token) to build one with the tokener's token; expected code)
CASES: dict[str, tuple[Any, str]] = {
    # not a msgpack map
    "empty frame": (b"", INVALID),
    "not msgpack": (b"\xc1\xc1garbage", INVALID),
    "truncated": (frame("ping")[:-3], INVALID),
    "trailing bytes": (frame("ping") + b"\x00", INVALID),
    "list": (msgpack.packb([1, "ping", {}]), INVALID),
    "int": (msgpack.packb(5), INVALID),
    "str": (msgpack.packb("ping"), INVALID),
    "nil": (msgpack.packb(None), INVALID),
    "bin": (msgpack.packb(b"ping"), INVALID),
    "float": (msgpack.packb(1.5), INVALID),
    "ext type": (msgpack.packb(msgpack.ExtType(5, b"x")), INVALID),
    "map with a list key": (b"\x81\x92\x01\x02\x03", INVALID),
    "map with non-string keys": (msgpack.packb({1: 1, 2: "ping", 3: {}}), INVALID),
    "nested too deep": (b"\x91" * 100_000 + b"\xc0", INVALID),
    "array header larger than the frame": (b"\xdd\xff\xff\xff\xff", INVALID),
    "map header larger than the frame": (b"\xdf\xff\xff\xff\xff\xa1v", INVALID),
    # the envelope fields
    "missing v": (frame("ping", v=_DROP), INVALID),
    "protocol 2": (frame("ping", v=2), INVALID),
    "protocol '1'": (frame("ping", v="1"), INVALID),
    "protocol true": (frame("ping", v=True), INVALID),
    "protocol 1.0": (frame("ping", v=1.0), INVALID),
    "protocol nil": (frame("ping", v=None), INVALID),
    "missing op": (frame("ping", op=_DROP), INVALID),
    "op not a string": (frame("ping", op=5), INVALID),
    "unknown verb": (frame("explode"), INVALID),
    "verb named like a method": (frame("__init__"), INVALID),
    "verb with handler prefix": (frame("op_ping"), INVALID),
    "verb in another case": (frame("PING"), INVALID),
    "rid not a string": (frame("ping", rid=5), INVALID),
    "token not a string": (frame("ping", tok=b"bytes"), INVALID),
    "args a list": (frame("ping", args=["a"]), INVALID),
    "args an int": (frame("ping", args=5), INVALID),
    "args nil": (frame("ping", args=None), INVALID),
    "args with non-string keys": (frame("get", {**ONE, 1: "x"}), INVALID),
    # missing arguments
    "get without id": (frame("get", KIND), INVALID),
    "get without args": (frame("get", args=_DROP), INVALID),
    "create without resource": (frame("create", {"owner": ""}), INVALID),
    "since without seq": (frame("since", KIND), INVALID),
    "probe without nonce": (frame("probe", {"topic": wire.topic("fuzz", FUZZ)}), INVALID),
    "register without secret": (frame("register", {"name": "x", "inputs": [], "outputs": []}), INVALID),
    "finalizer without finalizers": (frame("add_finalizer", ONE), INVALID),
    # arguments of the wrong type or value
    "namespace an int": (frame("get", {**ONE, "namespace": 5}), INVALID),
    "type nil": (frame("get", {**ONE, "type": None}), INVALID),
    "id a list": (frame("get", {**ONE, "id": ["r"]}), INVALID),
    "id empty": (frame("get", {**ONE, "id": ""}), INVALID),
    "id too long": (frame("get", {**ONE, "id": "r" * 100_000}), INVALID),
    "namespace with NUL": (frame("get", {**ONE, "namespace": "fu\x00zz"}), INVALID),
    "id bytes": (frame("destroy", {**ONE, "id": b"r"}), INVALID),
    "labels an int": (frame("list", {**KIND, "labels": 5}), INVALID),
    "labels a list of ints": (frame("list", {**KIND, "labels": [5]}), INVALID),
    "labels a map": (frame("list", {**KIND, "labels": {"a": "b"}}), INVALID),
    "labels unparsable": (frame("list", {**KIND, "labels": "a in"}), INVALID),
    "id_regex an int": (frame("list", {**KIND, "id_regex": 5}), INVALID),
    "id_regex unbalanced": (frame("list", {**KIND, "id_regex": "("}), INVALID),
    "id_regex repetition too large": (frame("list", {**KIND, "id_regex": "a{1001}"}), INVALID),
    "id_regex nested too deep": (frame("list", {**KIND, "id_regex": "(" * 2000 + ")" * 2000}), INVALID),
    "resource a string": (frame("create", {"resource": "r"}), INVALID),
    "transaction ops not a list": (frame("transaction", {"ops": {"verb": "create"}}), INVALID),
    "transaction op not a map": (frame("transaction", {"ops": [5]}), INVALID),
    "transaction unknown verb": (frame("transaction", {"ops": [{"verb": "explode", **ONE}]}), INVALID),
    "transaction op without names": (frame("transaction", {"ops": [{"verb": "destroy"}]}), INVALID),
    "transaction create without resource": (frame("transaction", {"ops": [{"verb": "create"}]}), INVALID),
    "transaction too long": (frame("transaction", {"ops": [{"verb": "destroy", **ONE}] * 129}), INVALID),
    "transaction of a missing resource": (frame("transaction", {"ops": [{"verb": "destroy", **ONE}]}), NOT_FOUND),
    "resource a map": (frame("create", {"resource": {"namespace": "fuzz"}}), INVALID),
    "resource garbage bytes": (frame("create", {"resource": b"\xc1\x00\x01"}), INVALID),
    "resource short list": (frame("create", {"resource": msgpack.packb([1, 2])}), INVALID),
    "resource not a list": (frame("create", {"resource": msgpack.packb({"a": 1})}), INVALID),
    "resource namespace an int": (frame("create", {"resource": _resource_fields(namespace=5)}), INVALID),
    "resource labels with int keys": (frame("create", {"resource": _resource_fields(labels={1: 2})}), INVALID),
    "resource finalizers a string": (frame("create", {"resource": _resource_fields(finalizers="f")}), INVALID),
    "resource phase unknown": (frame("create", {"resource": _resource_fields(phase="gone")}), INVALID),
    "resource version a string": (frame("update", {"resource": _resource_fields(version="1")}), INVALID),
    "resource version a bool": (frame("update", {"resource": _resource_fields(version=True)}), INVALID),
    "owner an int": (frame("create", {"resource": GOOD_RESOURCE, "owner": 5}), INVALID),
    "expected_phase unknown": (frame("update", {"resource": GOOD_RESOURCE, "expected_phase": "bogus"}), INVALID),
    "expected_phase a map": (frame("update", {"resource": GOOD_RESOURCE, "expected_phase": {}}), INVALID),
    "finalizers a string": (frame("add_finalizer", {**ONE, "finalizers": "f"}), INVALID),
    "finalizers ints": (frame("add_finalizer", {**ONE, "finalizers": [5]}), INVALID),
    "finalizers empty string": (frame("remove_finalizer", {**ONE, "finalizers": [""]}), INVALID),
    "finalizers of a missing resource": (frame("add_finalizer", {**ONE, "finalizers": ["f"]}), NOT_FOUND),
    "seq a string": (frame("since", {**KIND, "seq": "3"}), INVALID),
    "seq a float": (frame("since", {**KIND, "seq": 1.5}), INVALID),
    "seq a bool": (frame("since", {**KIND, "seq": True}), INVALID),
    "seq nil": (frame("since", {**KIND, "seq": None}), INVALID),
    "seq huge": (frame("since", {**KIND, "seq": 2 ** 64 - 1}), OK),
    "seq very negative": (frame("since", {**KIND, "seq": -2 ** 63}), OK),
    "snapshot namespace a map": (frame("snapshot", {**KIND, "namespace": {}}), INVALID),
    "probe topic a string": (frame("probe", {"topic": "fuzz", "nonce": "n"}), INVALID),
    "probe topic without delimiters": (frame("probe", {"topic": b"fuzz", "nonce": "n"}), INVALID),
    "probe topic not utf-8": (frame("probe", {"topic": b"\xff\xfe\x00T\x00", "nonce": "n"}), INVALID),
    "probe nonce an int": (frame("probe", {"topic": wire.topic("fuzz", FUZZ), "nonce": 5}), INVALID),
    "restart name an int": (frame("restart", {"name": 5}), INVALID),
    "restart of nobody": (frame("restart", {"name": "test.Nobody"}), NOT_FOUND),
    # who may ask
    "register name an int": (frame("register", {"name": 5, "secret": None, "inputs": [], "outputs": []}), DENIED),
    "register with junk declaration": (
        frame("register", {"name": "test.Keeper", "secret": "x", "inputs": "junk", "outputs": 5}), DENIED),
    "register with a wrong secret": (
        frame("register", {"name": "test.Keeper", "secret": "0" * 32, "inputs": [], "outputs": []}), DENIED),
    "heartbeat before registering": (frame("heartbeat", {"counters": {"reconciles": 1}}), DENIED),
    "update_inputs before registering": (frame("update_inputs", {"inputs": []}), DENIED),
    "heartbeat with a wrong token": (frame("heartbeat", {}, token="0" * 32), DENIED),
    "get with a wrong token": (frame("get", ONE, token="not-a-token"), DENIED),
    # a registered controller's requests with bad arguments
    "heartbeat kinds an int": (("heartbeat", {"kinds": 5}, TOKEN), INVALID),
    "heartbeat kinds a map": (("heartbeat", {"kinds": {"a": 1}}, TOKEN), INVALID),
    "heartbeat junk entries": (("heartbeat", {"kinds": [[1, 2, 3], "x", []], "counters": "x"}, TOKEN), OK),
    "update_inputs an int": (("update_inputs", {"inputs": 5}, TOKEN), INVALID),
    "update_inputs short input": (("update_inputs", {"inputs": [["default"]]}, TOKEN), INVALID),
    "update_inputs namespace an int": (("update_inputs", {"inputs": [[5, FUZZ, "weak", None]]}, TOKEN), INVALID),
    "update_inputs unknown kind": (("update_inputs", {"inputs": [["default", FUZZ, "bogus", None]]}, TOKEN),
                                   INVALID),
    "controller asks for the admin's owner": (("create", {"resource": GOOD_RESOURCE, "owner": ""}, TOKEN), DENIED),
}

@pytest.mark.parametrize("label", list(CASES))
def test_malformed_request_gets_an_error_reply(world, label):
    sup, ctx, token, _before = world
    data, expected = CASES[label]
    if isinstance(data, tuple):
        op, args, _ = data
        data = frame(op, args, token=token)
    with req_socket(ctx, sup) as sock:
        raw = exchange(sock, data)
        assert raw is not None, "no reply"
        reply = check_reply(raw)
        assert (OK if reply.ok else reply.code) == expected, reply.message
        try:
            sent = msgpack.unpackb(data, raw=False)
        except Exception:
            sent = None
        if isinstance(sent, dict) and isinstance(sent.get("rid"), str) and sent.get("v") == 1 \
                and type(sent.get("v")) is int and sent.get("op") in wire.VERBS:
            assert reply.rid == sent["rid"]
        # The same socket goes on working.
        assert check_reply(exchange(sock, frame("ping"))).ok


def test_supervisor_unharmed_by_the_malformed_requests(world):
    """Runs after the cases above (same module supervisor)."""
    sup, _ctx, _token, before = world
    still_serving(sup, before, "after-malformed")
    assert sup.statuses()["test.Tokener"]["state"] == "running"


def test_oversized_message_drops_the_peer_only(world):
    sup, ctx, _token, before = world
    with req_socket(ctx, sup) as big, req_socket(ctx, sup) as other:
        # Exactly the limit is read (and refused as a message): an error reply.
        at_limit = exchange(big, b"\x00" * wire.MAX_MESSAGE_BYTES)
        assert at_limit is not None and check_reply(at_limit).code == INVALID
        # One byte more: ZMQ_MAXMSGSIZE disconnects the peer; no reply comes.
        big.send(b"\x00" * (wire.MAX_MESSAGE_BYTES + 1))
        # Meanwhile everyone else is served.
        assert check_reply(exchange(other, frame("ping"))).ok
        assert big.poll(1000, zmq.POLLIN) == 0
    with req_socket(ctx, sup) as again:  # and the same process may connect again
        assert check_reply(exchange(again, frame("ping"))).ok
    still_serving(sup, before, "after-oversized")


def test_broken_envelopes_are_dropped(world):
    """A DEALER can send what a REQ cannot. Without an empty delimiter
    before the body there is no envelope to answer to: dropped. The
    supervisor handles one peer's frames in order, so a good request sent
    afterwards must be the first to be answered."""
    sup, ctx, _token, before = world
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"ipc://{sup.runtime_dir / wire.API_SOCKET}")
    try:
        dealer.send_multipart([frame("ping", request_id="no-delimiter")])
        dealer.send_multipart([b"", frame("ping", request_id="two-bodies-1"), frame("ping", request_id="two-bodies-2")])
        dealer.send_multipart([b""])
        dealer.send_multipart([frame("ping", request_id="delimiter-last"), b""])
        dealer.send_multipart([b"", frame("ping", request_id="good")])
        assert dealer.poll(REPLY_TIMEOUT_MS, zmq.POLLIN)
        parts = dealer.recv_multipart()
        assert parts[0] == b"" and len(parts) == 2
        assert check_reply(parts[1]).rid == "good"
        # An empty body in a good envelope is answered (an error); so is a
        # body behind a longer envelope (a proxy's), with that envelope.
        dealer.send_multipart([b"", b""])
        dealer.send_multipart([b"hop", b"", frame("ping", request_id="via-hop")])
        assert dealer.poll(REPLY_TIMEOUT_MS, zmq.POLLIN)
        parts = dealer.recv_multipart()
        assert parts[0] == b"" and check_reply(parts[1]).code == INVALID
        assert dealer.poll(REPLY_TIMEOUT_MS, zmq.POLLIN)
        parts = dealer.recv_multipart()
        assert parts[:2] == [b"hop", b""] and check_reply(parts[2]).rid == "via-hop"
        assert dealer.poll(200, zmq.POLLIN) == 0  # nothing else was answered
    finally:
        dealer.close(linger=0)
    still_serving(sup, before, "after-envelopes")


def test_a_batch_of_requests_is_answered_in_order(world):
    """``[b"", BATCH, request, ...]``: each request answered as if alone; those
    marked ``batch`` in one message, in order, the others one by one. A batch
    marker with no request after it is a body of its own: an error reply."""
    sup, ctx, _token, before = world
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"ipc://{sup.runtime_dir / wire.API_SOCKET}")
    try:
        dealer.send_multipart([b"", wire.BATCH])
        assert dealer.poll(REPLY_TIMEOUT_MS, zmq.POLLIN)
        parts = dealer.recv_multipart()
        assert parts[0] == b"" and len(parts) == 2 and check_reply(parts[1]).code == INVALID
        dealer.send_multipart([b"", wire.BATCH, frame("ping", request_id="alone", batch=False),
                               frame("ping", request_id="b1", batch=True), b"junk",
                               frame("ping", request_id="b2", batch=True)])
        assert dealer.poll(REPLY_TIMEOUT_MS, zmq.POLLIN)
        parts = dealer.recv_multipart()
        assert parts[0] == b"" and len(parts) == 2 and check_reply(parts[1]).rid == "alone"
        assert dealer.poll(REPLY_TIMEOUT_MS, zmq.POLLIN)
        parts = dealer.recv_multipart()  # the junk's error reply names no request: alone
        assert parts[0] == b"" and len(parts) == 2 and check_reply(parts[1]).code == INVALID
        assert dealer.poll(REPLY_TIMEOUT_MS, zmq.POLLIN)
        parts = dealer.recv_multipart()
        assert parts[0] == b"" and [check_reply(p).rid for p in parts[1:]] == ["b1", "b2"]
        assert dealer.poll(200, zmq.POLLIN) == 0  # nothing else was answered
    finally:
        dealer.close(linger=0)
    still_serving(sup, before, "after-batch")


def test_retried_writes_are_applied_once(world):
    """Lazy Pirate: the same request (same rid and token) resent on a fresh
    socket gets the first reply, and the write happens once."""
    sup, ctx, _token, _before = world
    admin_token = (sup.runtime_dir / "admin.token").read_text().strip()
    with sup.client(admin=True) as c:
        replayed = c.call("ping").get("replayed", 0)
    for token in ("", admin_token):
        rid_ = f"retry-{token[:4] or 'user'}"
        res = Resource("retry", FUZZ, rid_, {"n": 1})

        def twice(data: bytes) -> bytes:
            with req_socket(ctx, sup) as first:
                one = exchange(first, data)
            with req_socket(ctx, sup) as second:
                two = exchange(second, data)
            assert one is not None and one == two
            assert check_reply(one).ok, check_reply(one).message
            return one

        twice(frame("create", {"resource": pack(res)}, token=token, request_id=rid_ + "-c"))
        with sup.client() as c:
            current = c.get("retry", FUZZ, rid_)
            assert current.metadata.version == 1
            current.spec = {"n": 2}
            twice(frame("update", {"resource": pack(current)}, token=token, request_id=rid_ + "-u"))
            assert c.get("retry", FUZZ, rid_).metadata.version == 2
            twice(frame("add_finalizer", {"namespace": "retry", "type": FUZZ, "id": rid_, "finalizers": ["f"]},
                        token=token, request_id=rid_ + "-f"))
            assert c.get("retry", FUZZ, rid_).metadata.version == 3
            # The same request id on another request is refused, not answered from the cache.
            with req_socket(ctx, sup) as sock:
                reused = check_reply(exchange(sock, frame("destroy", {"namespace": "retry", "type": FUZZ, "id": rid_},
                                                          token=token, request_id=rid_ + "-c")))
            assert reused.code == INVALID and "already used" in reused.message
            assert c.get("retry", FUZZ, rid_).metadata.version == 3
            c.remove_finalizer("retry", FUZZ, rid_, "f")
            twice(frame("destroy", {"namespace": "retry", "type": FUZZ, "id": rid_}, token=token,
                        request_id=rid_ + "-d"))
            assert not c.list("retry", FUZZ, id_regex=f"^{rid_}$")
    with sup.client(admin=True) as c:
        assert c.call("ping").get("replayed", replayed + 8) >= replayed + 8


def test_retried_restart_restarts_once(world):
    """A deferred write (restart) retried while it runs waits for the same
    answer instead of restarting again."""
    sup, ctx, _token, before = world
    restarts = sup.statuses()["test.Tokener"]["restarts"]
    data = frame("restart", {"name": "test.Tokener"}, request_id="restart-once")
    with req_socket(ctx, sup) as first, req_socket(ctx, sup) as second:
        first.send(data)
        second.send(data)
        assert first.poll(15_000, zmq.POLLIN) and second.poll(15_000, zmq.POLLIN)
        one, two = first.recv(), second.recv()
    assert one == two and check_reply(one).ok
    with req_socket(ctx, sup) as third:  # and once answered, from the cache
        assert exchange(third, data) == one
    status = sup.statuses()["test.Tokener"]
    assert status["restarts"] == restarts + 1 and status["state"] == "running"
    assert sup.statuses()["test.Keeper"]["restarts"] == 0


# -- the fuzzer ---------------------------------------------------------------

#: A valid request of every verb, on names far from the canaries'.
BASE: dict[str, dict[str, Any]] = {
    "get": ONE,
    "list": {**KIND, "labels": "a=b", "id_regex": "r"},
    "create": {"resource": GOOD_RESOURCE, "owner": ""},
    "update": {"resource": GOOD_RESOURCE, "owner": "", "expected_phase": "running"},
    "destroy": {**ONE, "owner": ""},
    "teardown": {**ONE, "owner": ""},
    "add_finalizer": {**ONE, "finalizers": ["f"]},
    "remove_finalizer": {**ONE, "finalizers": ["f"]},
    "transaction": {"ops": [{"verb": "create", "resource": GOOD_RESOURCE, "owner": ""},
                            {"verb": "add_finalizer", **ONE, "finalizers": ["f"]}]},
    "snapshot": {**KIND, "id": "r"},
    "snapshot_page": {"cursor": "0123456789abcdef"},
    "since": {**KIND, "seq": 0},
    "resume": {**KIND, "bookmark": "e:0"},
    "probe": {"topic": wire.topic("fuzz", FUZZ), "nonce": "n"},
    "register": {"name": "nobody", "secret": "s", "inputs": [], "outputs": []},
    "update_inputs": {"inputs": [["fuzz", FUZZ, "weak", None]]},
    "heartbeat": {"counters": {"reconciles": 1}, "kinds": [["fuzz", FUZZ, 0]]},
    "owned_kinds": {"owner": "nobody"},
    "ping": {},
    "controllers": {},
    "restart": {"name": "nobody"},
    "reload": {},
}
assert set(BASE) == set(wire.VERBS)

short_text = st.text(max_size=12)  # can never spell a canary's namespace or type
names = st.sampled_from(["fuzz", "default", FUZZ, "r", "", "runtime"]) | short_text
ints = st.integers(min_value=-2 ** 63, max_value=2 ** 64 - 1)  # what msgpack can carry
scalars = st.none() | st.booleans() | ints | st.floats() | short_text | st.binary(max_size=16) | names
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(short_text | ints, inner, max_size=4), max_leaves=10)


_fuzz_rids = itertools.count(100)


@st.composite
def mutated_request(draw: st.DrawFn) -> bytes:
    """A valid request of some verb, its fields and arguments then dropped,
    replaced or added, and sometimes its bytes damaged."""
    op = draw(st.sampled_from(sorted(BASE)))
    args = dict(BASE[op])
    if op in ("create", "update"):
        spec = draw(values)
        args["resource"] = msgpack.packb(
            ["fuzz", FUZZ, draw(names), draw(st.integers(0, 3)), "", "running", [], {}, {}, 0.0, 0.0, spec])
    # Mostly fresh request ids; now and then one used before (a retry, or a clash).
    request_id = next(_fuzz_rids) if draw(st.integers(0, 9)) else draw(st.integers(0, 9))
    # Fixed width: a request's length must not depend on how many came before, or
    # hypothesis sees the same draws give different bounds (FlakyStrategyDefinition).
    msg: dict[Any, Any] = {"v": 1, "op": op, "rid": f"fz-{request_id:012d}",
                           "tok": draw(st.sampled_from(["", "", "", "0" * 32, "x"])), "args": args}
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
        action = draw(st.sampled_from(["drop", "set", "other verb"] + ["drop arg"] * 2 + ["set arg"] * 6
                                      + ["add arg"] * 2))
        if action == "drop" and msg:
            msg.pop(draw(st.sampled_from(sorted(msg, key=repr))))
        elif action == "set":
            msg[draw(st.sampled_from(["v", "op", "rid", "tok", "args"]))] = draw(values)
        elif action == "other verb":
            msg["op"] = draw(st.sampled_from(sorted(BASE)))
        elif isinstance(msg.get("args"), dict):
            if action == "drop arg" and msg["args"]:
                msg["args"].pop(draw(st.sampled_from(sorted(msg["args"], key=repr))))
            elif action == "set arg" and msg["args"]:
                msg["args"][draw(st.sampled_from(sorted(msg["args"], key=repr)))] = draw(values)
            elif action == "add arg":
                msg["args"][draw(short_text | ints)] = draw(values)
    data = bytearray(msgpack.packb(msg, use_bin_type=True))
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 0, 1, 2, 4]))):
        where = draw(st.integers(0, len(data)))
        how = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if how == "flip" and where < len(data):
            data[where] ^= draw(st.integers(1, 255))
        elif how == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=4))
        elif how == "delete":
            del data[where:where + draw(st.integers(1, 4))]
        elif how == "truncate":
            del data[where:]
    return bytes(data)


#: Mostly mutated requests (they get past the decoder), some random msgpack, some noise.
messages = st.one_of(mutated_request(), mutated_request(), mutated_request(), mutated_request(),
                     values.map(lambda v: msgpack.packb(v, use_bin_type=True)), st.binary(max_size=64))


@pytest.mark.timeout(120)
def test_fuzzed_requests_never_hurt_the_supervisor(supervisor_factory):
    sup = start_world(supervisor_factory)
    with sup.client() as c:
        before = canaries(c)
    ctx = zmq.Context()
    sock: list[zmq.Socket | None] = [None]
    seen = {"ok": 0, "error": 0, "unanswered": 0}
    internal: list[tuple[bytes, str]] = []

    def send(data: bytes) -> None:
        if sock[0] is None:
            sock[0] = ctx.socket(zmq.REQ)
            sock[0].setsockopt(zmq.LINGER, 0)
            sock[0].connect(f"ipc://{sup.runtime_dir / wire.API_SOCKET}")
        raw = exchange(sock[0], data, timeout_ms=3000)
        if raw is None:  # stuck awaiting a reply: reopen (Lazy Pirate)
            seen["unanswered"] += 1
            sock[0].close(linger=0)
            sock[0] = None
            return
        reply = wire.decode_reply(raw)
        if reply.code == "internal":
            internal.append((data, reply.message))
            return
        check_reply(raw)
        seen["ok" if reply.ok else "error"] += 1

    @settings(max_examples=2500, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(messages)
    def fuzz(data: bytes) -> None:
        send(data)

    try:
        fuzz()
    finally:
        if sock[0] is not None:
            sock[0].close(linger=0)
        ctx.destroy(linger=0)
    assert not internal, internal[:5]
    assert seen["unanswered"] == 0, seen
    assert seen["ok"] > 50 and seen["error"] > 1000, seen  # the fuzzer reached past the decoder
    still_serving(sup, before, "after-fuzz")
