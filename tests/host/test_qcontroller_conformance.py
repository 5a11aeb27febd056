"""COSI's QController conformance cases, and the queue's promises, with
every controller in its own process under a real supervisor."""

from __future__ import annotations

import os
import signal

from cosihost import Resource
from cosihost.testing import wait_for
from cosihost.testing.conformance import INT, Q_FAILING, SENTENCE, Q_INT_TO_STR, STR, int_resource, values, wait_values

Q = "QIntToStrController"


def test_q_int_to_str_with_finalizers_mapped_destroy_ready_and_shutdown(supervisor_factory):
    sup = supervisor_factory(controllers={"q": Q_INT_TO_STR.format(src="q-int", dst="q-str")})
    with sup.client() as c, sup.client(admin=True) as admin:
        c.create(int_resource("q-int", "id1", 1))
        c.create(int_resource("q-int", "id2", 2))
        wait_values(c, "q-str", STR, {"id1": "1", "id2": "2"})
        c.create(int_resource("q-int", "id3", 3))
        c.modify("q-int", INT, "id2", lambda s: s.update(value=22))
        wait_values(c, "q-str", STR, {"id1": "1", "id2": "22", "id3": "3"})
        # teardown without downstream finalizers
        assert c.teardown("q-int", INT, "id1") is False
        wait_for(lambda: not c.get("q-int", INT, "id1").metadata.finalizers, message="id1 released")
        c.destroy("q-int", INT, "id1")
        wait_values(c, "q-str", STR, {"id2": "22", "id3": "3"})
        # teardown with a downstream finalizer: the input stays held until it goes
        admin.add_finalizer("q-str", STR, "id2", "my-finalizer")
        assert c.teardown("q-int", INT, "id2") is False
        wait_for(lambda: c.get("q-str", STR, "id2").metadata.phase == "tearing-down", message="id2 torn down")
        assert c.get("q-int", INT, "id2").metadata.finalizers == [Q]
        admin.remove_finalizer("q-str", STR, "id2", "my-finalizer")
        wait_for(lambda: not c.get("q-int", INT, "id2").metadata.finalizers, message="id2 released")
        c.destroy("q-int", INT, "id2")
        wait_values(c, "q-str", STR, {"id3": "3"})
        # the shutdown hook runs when the process is stopped
        admin.call("restart", name=Q)
        wait_for(lambda: values(c, "q-str", STR).get("shutdowns") == "1", message="the shutdown hook's write")
        status = sup.statuses()[Q]
        assert status["queue"] == {"primary": [["q-int", INT]], "mapped": [["q-str", STR]], "concurrency": 4}


def test_q_failing_items_do_not_block_the_others(supervisor_factory):
    sup = supervisor_factory(config="[timing]\nheartbeat = 0.1\nbackoff_cap = 0.5\nusage_every = 0.2\n",
                             controllers={"q": Q_FAILING.format(src="q-fail-in", dst="q-fail-out")})
    with sup.client() as c:
        for rid, value in [("id1", "fail"), ("id3", "requeue_no_error"), ("id4", "requeue_with_error"),
                           ("id5", "ok")]:
            c.create(Resource("q-fail-in", SENTENCE, rid, {"value": value}))
        wait_values(c, "q-fail-out", STR, {"id5": "ok"})

        def counters():
            return sup.statuses()["QFailingController"]["counters"]
        wait_for(lambda: counters().get("requeues", 0) >= 4 and counters().get("crashes", 0) >= 4,
                 message="requeues and crashes counted")
        assert counters()["processed"] >= 8 and counters()["queue_length"] == 3
        for rid in ("id3", "id4", "id1"):
            c.modify("q-fail-in", SENTENCE, rid, lambda s: s.update(value="no fail"))
        wait_values(c, "q-fail-out", STR, {"id1": "no fail", "id3": "no fail", "id4": "no fail", "id5": "ok"})
        wait_for(lambda: counters()["queue_length"] == 0, message="an empty queue")
        assert sup.statuses()["QFailingController"]["restarts"] == 0


MAPPED = '''
from cosihost import QController, Input, Output, NotFoundError, Pointer

class Grouped(QController):
    name = "test.Grouped"
    primary = [Input("in", "Ints.test.cosihost.dev")]
    mapped = [Input("groups", "Sentences.test.cosihost.dev")]
    outputs = [Output("Strs.test.cosihost.dev")]
    seen = {}

    def reconcile(self, rt, ptr):
        res = rt.get(*ptr)
        factor = rt.get("groups", "Sentences.test.cosihost.dev", res.spec["group"]).spec["factor"]
        self.seen[ptr.id] = self.seen.get(ptr.id, 0) + 1
        n = self.seen[ptr.id]
        rt.modify("out", "Strs.test.cosihost.dev", ptr.id, lambda s: s.update(value=res.spec["value"] * factor, n=n))

    def map_input(self, rt, md):
        return [Pointer(*r.metadata.key()) for r in rt.list("in", "Ints.test.cosihost.dev")
                if r.spec["group"] == md.id]
'''


def test_a_mapped_change_requeues_exactly_its_items_in_a_real_process(supervisor_factory):
    sup = supervisor_factory(config="[timing]\nheartbeat = 0.1\nusage_every = 0.2\n", controllers={"grouped": MAPPED})
    sentence = "Sentences.test.cosihost.dev"
    with sup.client() as c:
        for group in ("a", "b"):
            c.create(Resource("groups", sentence, group, {"factor": 1}))
            for i in range(4):
                c.create(Resource("in", INT, f"{group}{i}", {"value": i, "group": group}))
        wait_values(c, "out", STR, {f"{g}{i}": i for g in "ab" for i in range(4)})

        def counters():
            return sup.statuses()["test.Grouped"]["counters"]
        wait_for(lambda: counters().get("queue_length") == 0 and counters().get("processed", 0) >= 8,
                 message="an idle queue")
        before = {r.metadata.id: r.spec["n"] for r in c.list("out", STR)}
        processed = counters()["processed"]
        c.modify("groups", sentence, "a", lambda s: s.update(factor=10))
        wait_values(c, "out", STR, {**{f"a{i}": i * 10 for i in range(4)}, **{f"b{i}": i for i in range(4)}})
        wait_for(lambda: counters()["processed"] >= processed + 4 and counters()["queue_length"] == 0,
                 message="the mapped items processed")
        assert counters()["processed"] == processed + 4 and counters()["mapped_out"] >= 4
        after = {r.metadata.id: r.spec["n"] for r in c.list("out", STR)}
        assert {k: after[k] - before[k] for k in after} == {**{f"a{i}": 1 for i in range(4)},
                                                           **{f"b{i}": 0 for i in range(4)}}


SLOW_QTRANSFORM = '''
import time
from cosihost import generic

def slow(rt, inp, out):
    time.sleep(0.005)
    out.spec["value"] = str(inp.spec["value"])

SlowCopy = generic.qtransform(name="test.SlowCopy", input=("in", "Ints.test.cosihost.dev"),
                              output=("out", "Strs.test.cosihost.dev"), transform=slow, concurrency=3)
'''


def test_a_killed_controller_restarts_mid_queue_and_leaves_nothing_orphaned(supervisor_factory):
    sup = supervisor_factory(start=False, controllers={"slow": SLOW_QTRANSFORM})
    sup.start()
    with sup.client() as c:
        for i in range(300):
            c.create(int_resource("in", f"i{i}", i))
        wait_for(lambda: len(c.list("out", STR)) >= 30, message="some outputs")
        os.kill(sup.controller_pid("test.SlowCopy"), signal.SIGKILL)
        assert len(c.list("out", STR)) < 300   # killed in the middle of the queue
        held = [r.metadata.id for r in c.list("in", INT) if r.metadata.finalizers][:10]
        for rid in held:
            c.teardown("in", INT, rid)
        for i in range(300, 310):
            c.create(int_resource("in", f"i{i}", i))
        sup.wait_status("test.SlowCopy", lambda s: s["restarts"] >= 1 and s["state"] == "running")
        for rid in held:
            wait_for(lambda rid=rid: not c.get("in", INT, rid).metadata.finalizers, timeout=20, message=rid)
            c.destroy("in", INT, rid)
        expected = {r.metadata.id: str(r.spec["value"]) for r in c.list("in", INT)}
        wait_values(c, "out", STR, expected, timeout=30)
        assert all(r.metadata.owner == "test.SlowCopy" for r in c.list("out", STR))


REAPER = '''
from cosihost import generic

Reaper = generic.destroy(name="test.Reaper", output=("reaped", "Strs.test.cosihost.dev"), concurrency=2)
'''


def test_destroy_in_a_real_process_destroys_its_torn_down_resources_once_free(supervisor_factory):
    """The operator (admin token, acting as the controller) tears down two of
    its resources, one held by a finalizer; the controller destroys each as
    soon as nothing holds it, and never a user's."""
    sup = supervisor_factory(controllers={"reaper": REAPER})
    with sup.client() as c, sup.client(admin=True) as admin:
        for rid in ("held", "free", "kept"):
            admin.create(Resource("reaped", STR, rid, {}), owner="test.Reaper")
        admin.create(Resource("reaped", STR, "users", {}))   # no owner: a user's
        admin.add_finalizer("reaped", STR, "held", "someone-else")
        assert admin.teardown("reaped", STR, "held", owner="test.Reaper") is False   # held
        assert admin.teardown("reaped", STR, "free", owner="test.Reaper") is True    # free to go
        admin.teardown("reaped", STR, "users")
        def ids() -> list[str]:
            return sorted(r.metadata.id for r in c.list("reaped", STR))
        wait_for(lambda: "free" not in ids(), message="the free one destroyed")
        assert c.get("reaped", STR, "held").metadata.phase == "tearing-down"
        admin.remove_finalizer("reaped", STR, "held", "someone-else")
        wait_for(lambda: "held" not in ids(), message="the held one destroyed once free")
        assert ids() == ["kept", "users"]
        assert c.get("reaped", STR, "users").metadata.phase == "tearing-down"
        assert sup.statuses()["test.Reaper"]["restarts"] == 0
