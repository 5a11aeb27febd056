"""Transactions over the wire: every rule checked for every operation, all
or nothing, and a watcher in another process never sees half of one."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from cosihost import AccessDeniedError, Controller, Input, Output, Resource
from cosihost.testing import ControllerHarness, wait_for

LEFT = "Lefts.test.cosihost.dev"
RIGHT = "Rights.test.cosihost.dev"
ORDERS = "Orders.test.cosihost.dev"
PAIRER = f'''
from cosihost import Controller, Input, Output

class Pairer(Controller):
    name = "test.Pairer"
    inputs = [Input("orders", "{ORDERS}", kind="weak")]
    outputs = [Output("{LEFT}", kind="exclusive"), Output("{RIGHT}", kind="exclusive")]

    def reconcile(self, rt):
        for order in rt.list("orders", "{ORDERS}"):
            oid = order.metadata.id
            with rt.transaction():
                rt.modify("pairs", "{LEFT}", oid, lambda s: s.update(n=order.spec["n"]))
                rt.modify("pairs", "{RIGHT}", oid, lambda s: s.update(n=order.spec["n"]))
'''


def test_a_forbidden_operation_refuses_the_whole_transaction(supervisor_factory) -> None:
    sup = supervisor_factory(controllers={"pairer": PAIRER})
    with sup.client() as c:
        with pytest.raises(AccessDeniedError, match="exclusive output of test.Pairer"):
            with c.transaction():
                c.create(Resource("orders", ORDERS, "allowed", {"n": 1}))
                c.create(Resource("pairs", LEFT, "forged", {}))
        assert c.list("orders", ORDERS) == []


def test_a_controller_writes_both_halves_in_one_transaction(supervisor_factory) -> None:
    sup = supervisor_factory(controllers={"pairer": PAIRER})
    with sup.client() as c:
        c.create(Resource("orders", ORDERS, "o1", {"n": 7}))
        wait_for(lambda: [r.spec for r in c.list("pairs", RIGHT)] == [{"n": 7}], message="the pair")
        assert [r.metadata.owner for r in c.list("pairs", LEFT)] == ["test.Pairer"]


WATCHER = textwrap.dedent(f'''
    import json, sys
    from cosihost import Client, NotFoundError
    with Client(sys.argv[1]) as c:
        seen = 0
        events = c.watch_kind("pairs", "{LEFT}")   # live once it returns
        print("watching", flush=True)
        for event in events:
            if event.kind != "created":
                continue
            try:
                c.get("pairs", "{RIGHT}", event.resource.metadata.id)
                ok = True
            except NotFoundError:
                ok = False
            print(json.dumps({{"id": event.resource.metadata.id, "pair": ok}}), flush=True)
            seen += 1
            if seen == int(sys.argv[2]):
                break
''')


@pytest.mark.timeout(60)
def test_a_watcher_in_another_process_never_sees_half_a_transaction(supervisor_factory) -> None:
    sup = supervisor_factory(controllers={})
    rounds = 40
    watcher = subprocess.Popen([sys.executable, "-c", WATCHER, str(sup.runtime_dir), str(rounds)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None and watcher.stdout.readline().strip() == "watching"
        with sup.client() as c:
            for i in range(rounds):
                with c.transaction():
                    c.create(Resource("pairs", LEFT, f"p{i}", {}))
                    c.create(Resource("pairs", RIGHT, f"p{i}", {}))
        out, _ = watcher.communicate(timeout=30)
    finally:
        watcher.kill()
        watcher.wait()
    seen = [json.loads(line) for line in out.splitlines()]
    assert [s["id"] for s in seen] == [f"p{i}" for i in range(rounds)]
    assert all(s["pair"] for s in seen), seen


class Pairer(Controller):
    name = "test.Pairer"
    inputs = [Input("orders", ORDERS, kind="weak")]
    outputs = [Output(LEFT, kind="exclusive"), Output(RIGHT, kind="exclusive")]

    def reconcile(self, rt):  # type: ignore[no-untyped-def]
        for order in rt.list("orders", ORDERS):
            with rt.transaction():
                rt.modify("pairs", LEFT, order.metadata.id, lambda s: s.update(n=order.spec["n"]))
                if order.spec.get("fail"):
                    raise RuntimeError("second half failed")
                rt.modify("pairs", RIGHT, order.metadata.id, lambda s: s.update(n=order.spec["n"]))


def test_a_transaction_in_the_harness_is_all_or_nothing() -> None:
    with ControllerHarness(Pairer) as h:
        h.state.create(Resource("orders", ORDERS, "bad", {"n": 1, "fail": True}))
        wait_for(lambda: h.errors, message="the failing round")
        assert h.state.list("pairs", LEFT) == []
        h.state.modify("orders", ORDERS, "bad", lambda s: s.update(fail=False))
        assert h.wait_for_spec("pairs", RIGHT, "bad", {"n": 1})
        assert h.state.get("pairs", LEFT, "bad").spec == {"n": 1}


class Reaper(Controller):
    """Destroys its outputs whose order is gone, with teardown_and_destroy."""
    name = "test.Reaper"
    inputs = [Input("orders", ORDERS, kind="weak")]
    outputs = [Output(LEFT, kind="exclusive")]

    def reconcile(self, rt):  # type: ignore[no-untyped-def]
        wanted = {o.metadata.id for o in rt.list("orders", ORDERS)}
        for oid in wanted:
            rt.modify("pairs", LEFT, oid, lambda s: s.update(ok=True))
        for out in rt.list("pairs", LEFT):
            if out.metadata.id not in wanted and not rt.teardown_and_destroy("pairs", LEFT, out.metadata.id):
                rt.requeue(after=0.05)  # held by someone's finalizer: look again soon


def test_rt_teardown_and_destroy_waits_for_finalizers() -> None:
    with ControllerHarness(Reaper) as h:
        h.state.create(Resource("orders", ORDERS, "o1", {}))
        h.wait_for_resource("pairs", LEFT, "o1")
        h.state.add_finalizer("pairs", LEFT, "o1", "someone.Else")
        h.state.destroy("orders", ORDERS, "o1")
        h.wait_for_resource("pairs", LEFT, "o1", lambda r: r.metadata.phase == "tearing-down")
        h.state.remove_finalizer("pairs", LEFT, "o1", "someone.Else")
        h.wait_destroyed("pairs", LEFT, "o1")


UNCACHED = f'''
from cosihost import Controller, Input, Output

class Peeker(Controller):
    name = "test.Peeker"
    inputs = [Input("orders", "{ORDERS}", kind="weak")]
    outputs = [Output("{RIGHT}", kind="exclusive")]

    def reconcile(self, rt):
        seen = [o.metadata.id for o in rt.list_uncached("orders", "{ORDERS}")]
        one = rt.get_uncached("orders", "{ORDERS}", seen[0]).spec if seen else None
        rt.modify("peek", "{RIGHT}", "seen", lambda s: s.update(ids=seen, first=one))
        try:
            rt.get_uncached("elsewhere", "{ORDERS}", "x")
        except Exception as exc:
            rt.modify("peek", "{RIGHT}", "denied", lambda s: s.update(error=type(exc).__name__))
'''


def test_uncached_reads_ask_the_supervisor_and_keep_the_rules(supervisor_factory) -> None:
    sup = supervisor_factory(controllers={"peeker": UNCACHED})
    with sup.client() as c:
        c.create(Resource("orders", ORDERS, "u1", {"n": 1}))
        wait_for(lambda: [r.spec.get("ids") for r in c.list("peek", RIGHT, id_regex="^seen$")] == [["u1"]],
                 message="the uncached list")
        seen = c.get("peek", RIGHT, "seen").spec
        assert seen["first"] == {"n": 1}
        assert c.get("peek", RIGHT, "denied").spec == {"error": "AccessDeniedError"}
