"""The access rules of DESIGN section 3, enforced by the supervisor.

Every forbidden request here comes from a real process other than the test:
either a controller that bypasses its runtime's local checks (it calls the
raw requester, ``rt._req.call``, so only the supervisor can say no) or a
rogue client, a bare ``python`` that speaks the wire with pyzmq and msgpack
and knows nothing of cosihost. Each test checks the error class the
supervisor answers with and that the state did not change.

Which error: a request that the caller's *declaration* forbids (a kind it
does not read, a type it does not write, finalizers on what is not its
strong input, acting as another owner) is AccessDeniedError. A request of
the right type on a resource that *someone else created* (another
controller's resource of a shared output type, a controller's resource
written by a user client) is OwnerConflictError, as in COSI's state: the
type may be written, that resource may not.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from typing import Any

import msgpack
import pytest

from cosihost import NotFoundError, Resource
from cosihost import wire
from cosihost.resource import pack
from cosihost.testing import wait_for

INTS = "Ints.test.cosihost.dev"          # the rogue's weak input (namespace "default")
HOLDS = "Holds.test.cosihost.dev"        # the rogue's strong input (namespace "default")
SECRETS = "Secrets.test.cosihost.dev"    # declared by nobody
SHARED = "Shared.test.cosihost.dev"      # a shared output of the rogue and of Other
PRIVATE = "Private.test.cosihost.dev"    # Other's exclusive output
ORDERS = "Orders.test.cosihost.dev"      # what the test asks the rogue to try
RESULTS = "Results.test.cosihost.dev"    # what the rogue saw (its exclusive output)
STATUS = "ControllerStatuses.runtime.cosihost.dev"

#: Runs every attempt of each order through the raw requester, past the
#: runtime's own checks, and records the supervisor's answer.
ROGUE = '''
from cosihost import Controller, CosiError, Input, NotFoundError, Output, Resource

class Rogue(Controller):
    name = "test.Rogue"
    inputs = [Input("orders", "Orders.test.cosihost.dev"),
              Input("default", "Ints.test.cosihost.dev", kind="weak"),
              Input("default", "Holds.test.cosihost.dev", kind="strong")]
    outputs = [Output("Results.test.cosihost.dev"), Output("Shared.test.cosihost.dev", kind="shared")]

    def reconcile(self, rt):
        for order in rt.list("orders", "Orders.test.cosihost.dev"):
            rid = order.metadata.id
            try:
                rt.get("results", "Results.test.cosihost.dev", rid)
                continue  # done before
            except NotFoundError:
                pass
            outcomes = {}
            for label, op, args in order.spec["attempts"]:
                try:
                    outcomes[label] = ["ok", rt._req.call(op, **args)]
                except CosiError as exc:
                    outcomes[label] = [type(exc).__name__, str(exc)]
            rt.create(Resource("results", "Results.test.cosihost.dev", rid,
                               {"outcomes": outcomes, "token": rt._req.token}))
'''

OTHER = '''
from cosihost import Controller, Output

class Other(Controller):
    name = "test.Other"
    inputs = []
    outputs = [Output("Shared.test.cosihost.dev", kind="shared"), Output("Private.test.cosihost.dev")]

    def reconcile(self, rt):
        rt.modify("shared", "Shared.test.cosihost.dev", "theirs", lambda s: s.update(by="other"))
        rt.modify("private", "Private.test.cosihost.dev", "theirs", lambda s: s.update(by="other"))
'''

#: A client that is nothing but pyzmq and msgpack: reads a msgpack list of
#: request frames on stdin, sends each on a REQ socket, prints the replies
#: (None where none came within the timeout, reopening the socket).
ROGUE_CLIENT = r'''
import sys, msgpack, zmq
address, frames = sys.argv[1], msgpack.unpackb(sys.stdin.buffer.read())
ctx = zmq.Context()
sock, replies = None, []
for frame in frames:
    if sock is None:
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
    sock.send(frame)
    if sock.poll(5000):
        replies.append(sock.recv())
    else:
        replies.append(None)
        sock.close(0)
        sock = None
sys.stdout.buffer.write(msgpack.packb(replies))
ctx.destroy(0)
'''


def rogue_client(sup, requests: list[Any]) -> list[wire.Reply]:
    """Send ``requests`` (wire.Request or raw frames) from a separate python
    process; the decoded replies, in order (never a missing one)."""
    frames = [wire.encode_request(r) if isinstance(r, wire.Request) else r for r in requests]
    done = subprocess.run([sys.executable, "-c", ROGUE_CLIENT, f"ipc://{sup.runtime_dir / wire.API_SOCKET}"],
                          input=msgpack.packb(frames), capture_output=True, timeout=45)
    assert done.returncode == 0, done.stderr.decode()
    replies = msgpack.unpackb(done.stdout)
    assert None not in replies, "the supervisor left a request unanswered"
    return [wire.decode_reply(r) for r in replies]


_rids = itertools.count()


def request(op: str, token: str = "", **args: Any) -> wire.Request:
    return wire.Request(op, args, rid=f"rogue-{next(_rids)}", token=token)


def outcome_classes(outcomes: dict[str, list[Any]]) -> dict[str, str]:
    return {label: result[0] for label, result in outcomes.items()}


def error_class(reply: wire.Reply) -> str:
    if reply.ok:
        return "ok"
    return type(wire_error(reply)).__name__


def wire_error(reply: wire.Reply) -> Exception:
    from cosihost.errors import error_from_code
    return error_from_code(reply.code, reply.message)


def dump(client, kinds: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Everything about every resource of ``kinds`` that a write could change."""
    out = {}
    for ns, typ in kinds:
        out[(ns, typ)] = {
            r.metadata.id: (r.metadata.version, r.metadata.owner, r.metadata.phase,
                            list(r.metadata.finalizers), r.spec)
            for r in client.list(ns, typ)}
    return out


def get_or_none(client, ns: str, typ: str, rid: str) -> Resource | None:
    try:
        return client.get(ns, typ, rid)
    except NotFoundError:
        return None


@pytest.fixture
def rogue_world(supervisor_factory):
    """A supervisor with the rogue and Other, their outputs in place, and
    resources of every kind the rules talk about."""
    sup = supervisor_factory(controllers={"rogue": ROGUE, "other": OTHER})
    admin = sup.client(admin=True)
    try:
        with sup.client() as user:
            user.create(Resource("default", INTS, "one", {"value": 1}))
            user.create(Resource("elsewhere", INTS, "one", {"value": 1}))
            user.create(Resource("default", HOLDS, "h", {"value": 1}))
            user.create(Resource("elsewhere", HOLDS, "h", {"value": 1}))
            user.create(Resource("default", SECRETS, "s", {"password": "hunter2"}))
            user.create(Resource("shared", SHARED, "users", {"by": "user"}))
            wait_for(lambda: get_or_none(user, "shared", SHARED, "theirs")
                     and get_or_none(user, "private", PRIVATE, "theirs"), message="Other's outputs")
        yield sup, admin
    finally:
        admin.close()


KINDS = [("default", INTS), ("elsewhere", INTS), ("default", HOLDS), ("elsewhere", HOLDS),
         ("default", SECRETS), ("shared", SHARED), ("private", PRIVATE), ("runtime", STATUS)]


def order(admin, rid: str, attempts: list[list[Any]]) -> dict[str, list[Any]]:
    """Have the rogue controller try ``attempts``; its outcomes by label."""
    admin.create(Resource("orders", ORDERS, rid, {"attempts": attempts}))
    res = wait_for(lambda: get_or_none(admin, "results", RESULTS, rid), timeout=20,
                   message=f"the rogue's results of {rid}")
    return res.spec


def kind_args(ns: str, typ: str, **more: Any) -> dict[str, Any]:
    return dict(namespace=ns, type=typ, **more)


def test_controller_reads_only_its_inputs_and_outputs(rogue_world):
    sup, admin = rogue_world
    denied = {
        "get undeclared type": ["get", kind_args("default", SECRETS, id="s")],
        "get missing of undeclared type": ["get", kind_args("default", SECRETS, id="nope")],
        "list undeclared type": ["list", kind_args("default", SECRETS)],
        "snapshot undeclared type": ["snapshot", kind_args("default", SECRETS)],
        "since undeclared type": ["since", kind_args("default", SECRETS, seq=0)],
        "probe undeclared type": ["probe", {"topic": wire.topic("default", SECRETS), "nonce": "n"}],
        "get input type in another namespace": ["get", kind_args("elsewhere", INTS, id="one")],
        "list input type in another namespace": ["list", kind_args("elsewhere", INTS)],
        "snapshot input type in another namespace": ["snapshot", kind_args("elsewhere", INTS)],
        "get another's exclusive output": ["get", kind_args("private", PRIVATE, id="theirs")],
        "list the supervisor's statuses": ["list", kind_args("runtime", STATUS)],
        "controllers verb": ["controllers", {}],
    }
    allowed = {
        "get weak input": ["get", kind_args("default", INTS, id="one")],
        "list own shared output in any namespace": ["list", kind_args("shared", SHARED)],
        "since own output": ["since", kind_args("shared", SHARED, seq=-1)],
        "probe input": ["probe", {"topic": wire.topic("default", INTS), "nonce": "n"}],
        "heartbeat asking for heads it may not read": [
            "heartbeat", {"kinds": [["default", SECRETS, 0], ["default", INTS, 0]]}],
    }
    before = dump(admin, KINDS)
    attempts = [[label, op, args] for label, (op, args) in {**denied, **allowed}.items()]
    outcomes = order(admin, "reads", attempts)["outcomes"]
    assert outcome_classes(outcomes) == {**{k: "AccessDeniedError" for k in denied},
                                         **{k: "ok" for k in allowed}}
    assert "not among its inputs or outputs" in outcomes["get undeclared type"][1]
    # The supervisor answered heads only for the kind the rogue reads.
    assert [h[:2] for h in outcomes["heartbeat asking for heads it may not read"][1]["heads"]] == \
        [["default", INTS]]
    assert dump(admin, KINDS) == before


def test_controller_writes_only_its_output_types_and_own_resources(rogue_world):
    sup, admin = rogue_world

    def current(ns: str, typ: str, rid: str) -> bytes:
        return pack(admin.get(ns, typ, rid))  # the right version: only the rules can refuse

    own = "test.Rogue"
    denied = {
        # types it does not declare as outputs (an input, an undeclared type, Other's, the supervisor's)
        "create input type": ["create", {"resource": pack(Resource("default", INTS, "new", {}))}],
        "update input": ["update", {"resource": current("default", INTS, "one")}],
        "destroy input": ["destroy", kind_args("default", INTS, id="one")],
        "teardown input": ["teardown", kind_args("default", INTS, id="one")],
        "create undeclared type": ["create", {"resource": pack(Resource("default", SECRETS, "new", {}))}],
        "destroy undeclared type": ["destroy", kind_args("default", SECRETS, id="s")],
        "create in another's exclusive output": [
            "create", {"resource": pack(Resource("private", PRIVATE, "mine", {}))}],
        "update another's exclusive output": ["update", {"resource": current("private", PRIVATE, "theirs")}],
        "destroy another's exclusive output": ["destroy", kind_args("private", PRIVATE, id="theirs")],
        "teardown another's exclusive output": ["teardown", kind_args("private", PRIVATE, id="theirs")],
        "forge a controller status": ["create", {"resource": pack(Resource("runtime", STATUS, "test.Fake", {}))}],
        # acting as someone else
        "create as another controller": [
            "create", {"resource": pack(Resource("shared", SHARED, "x", {})), "owner": "test.Other"}],
        "create as a user": ["create", {"resource": pack(Resource("shared", SHARED, "x", {})), "owner": ""}],
        "update as the owner": [
            "update", {"resource": current("shared", SHARED, "theirs"), "owner": "test.Other"}],
        "destroy as the owner": ["destroy", kind_args("shared", SHARED, id="theirs", owner="test.Other")],
        # control verbs
        "restart another controller": ["restart", {"name": "test.Other"}],
        "reload": ["reload", {}],
        "register as another controller": [
            "register", {"name": "test.Other", "secret": "guess", "inputs": [], "outputs": []}],
        "register again with the used secret": [
            "register", {"name": own, "secret": "", "inputs": [], "outputs": []}],
    }
    conflicts = {
        # a shared output type, but resources someone else created
        "update another's shared resource": [
            "update", {"resource": current("shared", SHARED, "theirs"), "owner": own}],
        "teardown another's shared resource": ["teardown", kind_args("shared", SHARED, id="theirs", owner=own)],
        "destroy another's shared resource": ["destroy", kind_args("shared", SHARED, id="theirs", owner=own)],
        "destroy a user's shared resource": ["destroy", kind_args("shared", SHARED, id="users", owner=own)],
        "update a user's shared resource": [
            "update", {"resource": current("shared", SHARED, "users"), "owner": own}],
    }
    allowed = {
        "create own shared output": [
            "create", {"resource": pack(Resource("shared", SHARED, "mine", {"by": "rogue"})), "owner": own}],
    }
    before = dump(admin, KINDS)
    attempts = [[label, op, args] for label, (op, args) in {**denied, **conflicts, **allowed}.items()]
    outcomes = order(admin, "writes", attempts)["outcomes"]
    assert outcome_classes(outcomes) == {**{k: "AccessDeniedError" for k in denied},
                                         **{k: "OwnerConflictError" for k in conflicts},
                                         **{k: "ok" for k in allowed}}
    assert "not among its outputs" in outcomes["create input type"][1]
    assert "cannot act as owner 'test.Other'" in outcomes["create as another controller"][1]
    after = dump(admin, KINDS)
    mine = after[("shared", SHARED)].pop("mine")
    assert mine[:2] == (1, "test.Rogue")
    assert after == before
    assert sup.statuses()["test.Other"]["restarts"] == 0


def test_controller_changes_finalizers_only_on_strong_inputs(rogue_world):
    sup, admin = rogue_world
    fin = ["test.Rogue"]
    denied = {
        "add on weak input": ["add_finalizer", kind_args("default", INTS, id="one", finalizers=fin)],
        "remove on weak input": ["remove_finalizer", kind_args("default", INTS, id="one", finalizers=fin)],
        "add on strong input type in another namespace": [
            "add_finalizer", kind_args("elsewhere", HOLDS, id="h", finalizers=fin)],
        "add on own output": ["add_finalizer", kind_args("shared", SHARED, id="theirs", finalizers=fin)],
        "add on another's exclusive output": [
            "add_finalizer", kind_args("private", PRIVATE, id="theirs", finalizers=fin)],
        "add on undeclared type": ["add_finalizer", kind_args("default", SECRETS, id="s", finalizers=fin)],
        # refused before the lookup: the answer does not tell whether it exists
        "add on a missing resource of an undeclared type": [
            "add_finalizer", kind_args("default", SECRETS, id="nope", finalizers=fin)],
    }
    allowed = {
        "add on strong input": ["add_finalizer", kind_args("default", HOLDS, id="h", finalizers=fin)],
    }
    before = dump(admin, KINDS)
    attempts = [[label, op, args] for label, (op, args) in {**denied, **allowed}.items()]
    outcomes = order(admin, "finalizers", attempts)["outcomes"]
    assert outcome_classes(outcomes) == {**{k: "AccessDeniedError" for k in denied},
                                         **{k: "ok" for k in allowed}}
    assert "only on its strong inputs" in outcomes["add on weak input"][1]
    after = dump(admin, KINDS)
    held = after[("default", HOLDS)].pop("h")
    assert held[3] == ["test.Rogue"]
    del before[("default", HOLDS)]["h"]
    assert after == before


def test_user_clients_write_only_ownerless_resources_of_non_exclusive_types(rogue_world):
    sup, admin = rogue_world

    def current(ns: str, typ: str, rid: str) -> bytes:
        return pack(admin.get(ns, typ, rid))

    denied = {
        "create in an exclusive output": request("create", resource=pack(Resource("private", PRIVATE, "x", {}))),
        "update an exclusive output": request("update", resource=current("private", PRIVATE, "theirs")),
        "destroy an exclusive output": request("destroy", **kind_args("private", PRIVATE, id="theirs")),
        "teardown an exclusive output": request("teardown", **kind_args("private", PRIVATE, id="theirs")),
        "add finalizer on an exclusive output": request(
            "add_finalizer", **kind_args("private", PRIVATE, id="theirs", finalizers=["f"])),
        "forge a controller status": request("create", resource=pack(Resource("runtime", STATUS, "x", {}))),
        "destroy a controller status": request("destroy", **kind_args("runtime", STATUS, id="test.Other")),
        "add finalizer on a controller's shared resource": request(
            "add_finalizer", **kind_args("shared", SHARED, id="theirs", finalizers=["f"])),
        "create as a controller": request(
            "create", resource=pack(Resource("shared", SHARED, "x", {})), owner="test.Other"),
        "update as the owner": request("update", resource=current("shared", SHARED, "theirs"), owner="test.Other"),
        "destroy as the owner": request("destroy", **kind_args("shared", SHARED, id="theirs", owner="test.Other")),
        "heartbeat without a token": request("heartbeat", counters={"reconciles": 1}, kinds=[]),
        "update_inputs without a token": request("update_inputs", inputs=[["default", SECRETS, "strong", None]]),
        "ask where a controller owns outputs": request("owned_kinds", owner="test.Other"),
    }
    conflicts = {
        "update a controller's shared resource": request("update", resource=current("shared", SHARED, "theirs")),
        "teardown a controller's shared resource": request("teardown", **kind_args("shared", SHARED, id="theirs")),
        "destroy a controller's shared resource": request("destroy", **kind_args("shared", SHARED, id="theirs")),
    }
    allowed = {
        "create an owner-less shared resource": request(
            "create", resource=pack(Resource("shared", SHARED, "new", {"by": "user"}))),
        "update its own shared resource": request("update", resource=current("shared", SHARED, "users")),
        "add finalizer on an owner-less resource": request(
            "add_finalizer", **kind_args("default", SECRETS, id="s", finalizers=["f"])),
    }
    before = dump(admin, KINDS)
    everything = {**denied, **conflicts, **allowed}
    replies = dict(zip(everything, rogue_client(sup, list(everything.values()))))
    assert {k: error_class(r) for k, r in replies.items()} == {
        **{k: "AccessDeniedError" for k in denied},
        **{k: "OwnerConflictError" for k in conflicts},
        **{k: "ok" for k in allowed}}
    assert "exclusive output of test.Other" in replies["create in an exclusive output"].message
    assert "cannot act as owner" in replies["create as a controller"].message
    after = dump(admin, KINDS)
    assert after[("shared", SHARED)].pop("new")[:2] == (1, "")
    assert after[("shared", SHARED)]["users"][0] == before[("shared", SHARED)]["users"][0] + 1
    assert after[("default", SECRETS)]["s"][3] == ["f"]
    for kind in KINDS:
        if kind not in (("shared", SHARED), ("default", SECRETS), ("runtime", STATUS)):
            assert after[kind] == before[kind], kind
    assert after[("shared", SHARED)]["theirs"] == before[("shared", SHARED)]["theirs"]
    assert sup.statuses()["test.Other"]["state"] == "running"


def test_tokens_and_secrets(rogue_world):
    """A wrong token, a token of a process that has been replaced, a wrong
    spawn secret or a name that is no spawned controller: refused."""
    sup, admin = rogue_world
    first = order(admin, "token", [])
    old_token = first["token"]
    old_pid = sup.controller_pid("test.Rogue")
    before = dump(admin, KINDS)

    # The token works while its process lives: the rogue client may act as the rogue.
    works = rogue_client(sup, [request("get", old_token, **kind_args("default", INTS, id="one"))])
    assert error_class(works[0]) == "ok"

    admin.call("restart", name="test.Rogue")  # answers once the new process has reconciled
    assert sup.controller_pid("test.Rogue") != old_pid
    wrong = "0" * 32
    attempts = {
        "expired token get": request("get", old_token, **kind_args("default", INTS, id="one")),
        "expired token create": request(
            "create", old_token, resource=pack(Resource("shared", SHARED, "stolen", {})), owner="test.Rogue"),
        "expired token heartbeat": request("heartbeat", old_token, counters={}, kinds=[]),
        "wrong token get": request("get", wrong, **kind_args("default", INTS, id="one")),
        "wrong token create": request("create", wrong, resource=pack(Resource("default", INTS, "stolen", {}))),
        "wrong token ping": request("ping", wrong),
        "register with a wrong secret": request(
            "register", name="test.Other", secret="f" * 32, inputs=[], outputs=[[SHARED, "shared"]]),
        "register with a secret of the wrong type": request(
            "register", name="test.Other", secret=12345, inputs=[], outputs=[]),
        "register with the used secret": request("register", name="test.Rogue", secret="", inputs=[], outputs=[]),
        "register a name that is no controller": request(
            "register", name="test.Nobody", secret="f" * 32, inputs=[], outputs=[]),
        "register the supervisor": request(
            "register", name="cosihost.Supervisor", secret="", inputs=[], outputs=[]),
    }
    replies = dict(zip(attempts, rogue_client(sup, list(attempts.values()))))
    assert {k: error_class(r) for k, r in replies.items()} == {k: "AccessDeniedError" for k in attempts}
    assert "unknown or expired token" in replies["expired token get"].message
    assert "wrong secret" in replies["register with a wrong secret"].message
    after = dump(admin, KINDS)
    assert after[("shared", SHARED)] == before[("shared", SHARED)]
    assert after[("default", INTS)] == before[("default", INTS)]
    statuses = sup.statuses()
    assert statuses["test.Other"]["restarts"] == 0 and statuses["test.Other"]["state"] == "running"
    assert statuses["test.Rogue"]["state"] == "running"


WRITER = '''
from cosihost import Controller, Input, Output

class {cls}(Controller):
    name = "{name}"
    inputs = [Input("default", "Ints.test.cosihost.dev")]
    outputs = [Output("{output}", kind="{kind}")]

    def reconcile(self, rt):
        for r in rt.list("default", "Ints.test.cosihost.dev"):
            value = r.spec["value"]
            rt.modify("out", "{output}", r.metadata.id, lambda s: s.update(value=value, by="{name}"))
'''

OUT = "Outs.test.cosihost.dev"


def test_exclusive_output_has_one_controller(supervisor_factory):
    """Modules are admitted in name order: a.py wins Outs; the others are
    refused with a reason naming both parties, and a.py keeps working."""
    sup = supervisor_factory(controllers={
        "a": WRITER.format(cls="WriterA", name="test.WriterA", output=OUT, kind="exclusive"),
        "b": WRITER.format(cls="WriterB", name="test.WriterB", output=OUT, kind="exclusive"),
        "c": WRITER.format(cls="SharerC", name="test.SharerC", output=OUT, kind="shared"),
        "d": WRITER.format(cls="Forger", name="test.Forger", output=STATUS, kind="shared"),
    })
    statuses = sup.statuses()
    assert statuses["test.WriterA"]["state"] == "running"
    for name, both in [("test.WriterB", ("test.WriterB", "b.py", "test.WriterA", "a.py")),
                       ("test.SharerC", ("test.SharerC", "c.py", "test.WriterA", "a.py")),
                       ("test.Forger", ("test.Forger", "d.py", "cosihost.Supervisor"))]:
        spec = statuses[name]
        assert spec["state"] == "refused" and spec["pid"] is None, spec
        assert all(part in spec["reason"] for part in both), spec["reason"]
    assert "exclusive" in statuses["test.WriterB"]["reason"]

    with sup.client() as user:
        user.create(Resource("default", INTS, "one", {"value": 1}))
        wait_for(lambda: (r := get_or_none(user, "out", OUT, "one")) and r.spec == {"value": 1, "by": "test.WriterA"},
                 message="WriterA's output")
        replies = rogue_client(sup, [
            request("create", resource=pack(Resource("out", OUT, "x", {}))),
            request("register", name="test.WriterB", secret="f" * 32, inputs=[], outputs=[[OUT, "exclusive"]]),
        ])
        assert [error_class(r) for r in replies] == ["AccessDeniedError", "AccessDeniedError"]
        assert "exclusive output of test.WriterA" in replies[0].message
        user.modify("default", INTS, "one", lambda s: s.update(value=2))
        wait_for(lambda: user.get("out", OUT, "one").spec["value"] == 2, message="WriterA keeps converging")
        assert [r.metadata.id for r in user.list("out", OUT)] == ["one"]
        assert user.get("out", OUT, "one").metadata.owner == "test.WriterA"
    assert sup.statuses()["test.WriterA"]["restarts"] == 0


def test_refused_duplicate_name_is_visible_and_leaves_the_winner_alone(supervisor_factory):
    sup = supervisor_factory(controllers={
        "a": WRITER.format(cls="WriterA", name="test.WriterA", output=OUT, kind="exclusive"),
        "e": WRITER.format(cls="Twin", name="test.WriterA", output="Twins.test.cosihost.dev", kind="exclusive"),
    })
    statuses = sup.statuses()
    assert statuses["test.WriterA"]["state"] == "running"
    assert statuses["test.WriterA"]["module"] == "a.py"
    twin = [spec for spec in statuses.values() if spec["module"] == "e.py"]
    assert len(twin) == 1 and twin[0]["state"] == "refused", statuses
    assert "a.py" in twin[0]["reason"] and "e.py" in twin[0]["reason"]


GROWER = '''
from cosihost import Controller, Input, Output

class Grower(Controller):
    name = "test.Grower"
    inputs = [Input("default", "Ints.test.cosihost.dev")]
    outputs = [Output("Outs.test.cosihost.dev")]

    def reconcile(self, rt):
        rt.update_inputs([Input("default", "Ints.test.cosihost.dev"), Input("more", "Ints.test.cosihost.dev")])
        total = sum(r.spec["value"] for ns in ("default", "more") for r in rt.list(ns, "Ints.test.cosihost.dev"))
        rt.modify("out", "Outs.test.cosihost.dev", "total", lambda s: s.update(value=total))
'''


def test_controller_that_updated_its_inputs_registers_again_after_a_restart(supervisor_factory):
    sup = supervisor_factory(controllers={"grower": GROWER})
    with sup.client() as user, sup.client(admin=True, timeout=4, retries=0) as admin:
        user.create(Resource("more", INTS, "one", {"value": 5}))
        wait_for(lambda: (r := get_or_none(user, "out", OUT, "total")) and r.spec["value"] == 5,
                 message="the grower to read its added input")
        admin.call("restart", name="test.Grower")
        assert sup.statuses()["test.Grower"]["state"] == "running"
        user.create(Resource("default", INTS, "two", {"value": 2}))
        wait_for(lambda: user.get("out", OUT, "total").spec["value"] == 7, timeout=10,
                 message="the restarted grower to converge")
