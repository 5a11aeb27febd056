"""cosihost.testing.ControllerHarness: one controller in process, for users' tests.

The first test is the example of docs/user-guide.md (a bundled controller);
the others pin the harness's behaviour: wake-ups, requeue, backoff, the
declaration rules, cleanup, and that nothing is left running.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cosihost import (AccessDeniedError, Controller, InMemoryState, Input, InvalidRequestError, Output,
                      OwnerConflictError, Resource)
from cosihost.testing import ControllerHarness, load_controller

BUNDLED = Path(__file__).resolve().parent.parent / "controllers"
CONFIGS = "HostnameConfigs.net.cosihost.dev"
SPECS = "HostnameSpecs.net.cosihost.dev"
INTS = "Ints.test.cosihost.dev"
DOUBLES = "Doubles.test.cosihost.dev"


# -- the user-guide example: a bundled controller ---------------------------------

def test_hostname_spec_follows_its_config_and_releases_it():
    HostnameSpecController = load_controller(BUNDLED / "hostname.py", "HostnameSpecController")
    with ControllerHarness(HostnameSpecController, state=InMemoryState()) as h:
        h.state.create(Resource("config", CONFIGS, "hostname", {"hostname": "edge-7.example.org"}))

        spec = h.wait_for_spec("network", SPECS, "hostname", lambda s: s.get("valid"))
        assert (spec.spec["hostname"], spec.spec["domainname"]) == ("edge-7", "example.org")
        assert spec.metadata.owner == "net.HostnameSpecController"
        h.wait_for_resource("config", CONFIGS, "hostname",
                            lambda r: "net.HostnameSpecController" in r.metadata.finalizers)

        # The user deletes the config: it is held until the controller cleaned up.
        assert h.state.teardown("config", CONFIGS, "hostname") is False
        h.wait_destroyed("network", SPECS, "hostname")
        h.wait_for_resource("config", CONFIGS, "hostname", lambda r: not r.metadata.finalizers)
        h.state.destroy("config", CONFIGS, "hostname")


def test_hostname_spec_reports_an_invalid_name():
    with ControllerHarness(load_controller(BUNDLED / "hostname.py", "net.HostnameSpecController")) as h:
        h.state.create(Resource("config", CONFIGS, "bad", {"hostname": "no_underscores!"}))
        res = h.wait_for_spec("network", SPECS, "bad", lambda s: s.get("valid") is False)
        assert "RFC 1123" in res.spec["error"]


# -- behaviour ------------------------------------------------------------------------

class Doubler(Controller):
    name = "test.Doubler"
    inputs = [Input("default", INTS)]
    outputs = [Output(DOUBLES)]

    def reconcile(self, rt):
        rt.start_tracking_outputs()
        for r in rt.list("default", INTS):
            value = r.spec["value"]
            rt.modify("default", DOUBLES, r.metadata.id, lambda s: s.update(value=value * 2))
        rt.cleanup_outputs()


def test_wakes_on_input_changes_only():
    with ControllerHarness(Doubler) as h:
        h.state.create(Resource("default", INTS, "one", {"value": 21}))
        h.wait_for_spec("default", DOUBLES, "one", {"value": 42})
        h.state.modify("default", INTS, "one", lambda s: s.update(value=5))
        h.wait_for_spec("default", DOUBLES, "one", {"value": 10})
        h.wait_idle()
        before = h.reconciles
        h.state.create(Resource("elsewhere", INTS, "x", {"value": 1}))   # not an input: other namespace
        h.state.create(Resource("default", "Others.test.cosihost.dev", "x", {}))
        h.wait_idle()
        assert h.reconciles == before


def test_cleanup_outputs_destroys_what_a_round_did_not_touch():
    with ControllerHarness(Doubler) as h:
        for rid in ("a", "b"):
            h.state.create(Resource("default", INTS, rid, {"value": 1}))
        h.wait_for_resource("default", DOUBLES, "b")
        h.state.destroy("default", INTS, "a")
        h.wait_destroyed("default", DOUBLES, "a")
        assert h.get("default", DOUBLES, "b") is not None


def test_wait_idle_sees_every_change_made_before_it():
    with ControllerHarness(Doubler) as h:
        for n in range(50):
            h.state.modify("default", INTS, "n", lambda s, n=n: s.update(value=n))
            h.wait_idle()
            assert h.get("default", DOUBLES, "n").spec == {"value": 2 * n}


def test_burst_with_tiny_history_converges():
    with ControllerHarness(Doubler, state=InMemoryState(history=2)) as h:
        for n in range(300):
            h.state.modify("default", INTS, "n", lambda s, n=n: s.update(value=n))
        h.wait_for_spec("default", DOUBLES, "n", {"value": 598})
        h.wait_idle()


class Ticker(Controller):
    name = "test.Ticker"
    outputs = [Output("Ticks.test.cosihost.dev")]

    def reconcile(self, rt):
        rt.modify("default", "Ticks.test.cosihost.dev", "t", lambda s: s.update(n=s.get("n", 0) + 1))
        rt.requeue(after=0.01)


def test_requeue_after_reconciles_without_input_changes():
    with ControllerHarness(Ticker) as h:
        h.wait_for_spec("default", "Ticks.test.cosihost.dev", "t", lambda s: s["n"] >= 5)


class Flaky(Controller):
    name = "test.Flaky"
    outputs = [Output("Marks.test.cosihost.dev")]
    fail = 3

    def reconcile(self, rt):
        if self.fail:
            self.fail -= 1
            raise RuntimeError("not yet")
        rt.modify("default", "Marks.test.cosihost.dev", "done", lambda s: s.update(ok=True))


def test_exceptions_are_retried_with_backoff():
    with ControllerHarness(Flaky(), backoff_base=0.01) as h:
        h.wait_for_spec("default", "Marks.test.cosihost.dev", "done", {"ok": True})
        assert h.failures == 3 and [str(e) for e in h.errors] == ["not yet"] * 3
        assert h.reconciles == 1


def test_a_timeout_names_the_last_reconcile_error():
    class Broken(Flaky):
        name = "test.Broken"
        fail = 10 ** 6
    with ControllerHarness(Broken) as h:
        with pytest.raises(TimeoutError, match="last reconcile error: RuntimeError"):
            h.wait_for_resource("default", "Marks.test.cosihost.dev", "done", timeout=0.3)


class Holder(Controller):
    name = "test.Holder"
    inputs = [Input("default", INTS, kind="strong"), Input("default", "Weak.test.cosihost.dev", kind="weak")]
    outputs = [Output(DOUBLES, kind="shared")]

    def reconcile(self, rt):
        pass


def test_rt_enforces_the_declaration_rules():
    with ControllerHarness(Holder) as h:
        h.wait_idle()
        rt = h.rt
        h.state.create(Resource("default", INTS, "i", {}))
        h.state.create(Resource("default", "Weak.test.cosihost.dev", "w", {}))
        with pytest.raises(AccessDeniedError):
            rt.get("default", "Undeclared.test.cosihost.dev", "x")
        with pytest.raises(AccessDeniedError):
            rt.list("other-namespace", INTS)
        with pytest.raises(AccessDeniedError):
            rt.create(Resource("default", INTS, "mine", {}))            # an input, not an output
        with pytest.raises(AccessDeniedError):
            rt.add_finalizer("default", "Weak.test.cosihost.dev", "w", "x")   # weak input
        assert rt.add_finalizer("default", INTS, "i", "test.Holder").metadata.finalizers == ["test.Holder"]
        created = rt.create(Resource("elsewhere", DOUBLES, "d", {}))          # any namespace of an output
        assert created.metadata.owner == "test.Holder"
        h.state.create(Resource("default", DOUBLES, "users", {}))            # owner-less
        with pytest.raises(OwnerConflictError):
            rt.modify("default", DOUBLES, "users", lambda s: s.update(x=1))
        with pytest.raises(OwnerConflictError):
            rt.destroy("default", DOUBLES, "users")


def test_rt_modify_takes_only_its_own_name_as_owner():
    """The state API's owner= on modify, for a controller: its own name, or
    refused before anything is read or written, in a transaction too."""
    with ControllerHarness(Holder) as h:
        h.wait_idle()
        rt = h.rt
        res = rt.modify("default", DOUBLES, "mine", lambda s: s.update(x=1), owner="test.Holder")
        assert (res.spec, res.metadata.owner) == ({"x": 1}, "test.Holder")
        h.state.create(Resource("default", DOUBLES, "users", {}))
        for owner in ("", "someone-else"):
            with pytest.raises(AccessDeniedError, match="writes only as itself"):
                rt.modify("default", DOUBLES, "users", lambda s: s.update(x=1), owner=owner)
            with pytest.raises(AccessDeniedError, match="writes only as itself"), rt.transaction():
                rt.modify("default", DOUBLES, "new", lambda s: s.update(x=1), owner=owner)
        assert h.state.get("default", DOUBLES, "users").spec == {}
        assert [r.metadata.id for r in h.state.list("default", DOUBLES)] == ["mine", "users"]
        with rt.transaction():
            rt.modify("default", DOUBLES, "txn", lambda s: s.update(y=2), owner="test.Holder")
        assert h.state.get("default", DOUBLES, "txn").metadata.owner == "test.Holder"


def test_a_bad_declaration_is_refused_like_at_registration():
    class Bad(Controller):
        name = "test.Bad"
        inputs = [Input("default", INTS, kind="sometimes")]

    with pytest.raises(InvalidRequestError, match="sometimes"):
        ControllerHarness(Bad)
    with pytest.raises(InvalidRequestError):
        ControllerHarness(type("Nameless", (Controller,), {}))


class Reaper(Controller):
    """Destroys an Int once it is torn down and nobody holds it."""
    name = "test.Reaper"
    inputs = [Input("default", INTS, kind="destroy-ready")]
    outputs = [Output("Reaped.test.cosihost.dev")]

    def reconcile(self, rt):
        for r in rt.list("default", INTS):
            if r.metadata.phase == "tearing-down" and not r.metadata.finalizers:
                rt.modify("default", "Reaped.test.cosihost.dev", r.metadata.id, lambda s: s.update(seen=True))


def test_destroy_ready_input_wakes_only_when_ready():
    with ControllerHarness(Reaper) as h:
        h.wait_idle()
        woken = h.reconciles
        h.state.create(Resource("default", INTS, "x", {"value": 1}))
        h.state.add_finalizer("default", INTS, "x", "someone")
        h.state.teardown("default", INTS, "x")
        h.wait_idle()
        assert h.reconciles == woken          # tearing down but still held: no wake-up
        h.state.remove_finalizer("default", INTS, "x", "someone")
        h.wait_for_spec("default", "Reaped.test.cosihost.dev", "x", {"seen": True})


class Switcher(Controller):
    """Starts on one input kind, then moves to another with update_inputs."""
    name = "test.Switcher"
    inputs = [Input("a", INTS)]
    outputs = [Output(DOUBLES)]

    def reconcile(self, rt):
        for ns in ("a", "b"):
            if any(i.namespace == ns for i in rt.inputs):
                for r in rt.list(ns, INTS):
                    rt.modify(ns, DOUBLES, r.metadata.id, lambda s, v=r.spec["value"]: s.update(value=v * 2))
        if rt.inputs[0].namespace == "a" and rt.list("a", INTS):
            rt.update_inputs([Input("b", INTS)])


def test_update_inputs_moves_the_watches():
    with ControllerHarness(Switcher) as h:
        h.state.create(Resource("a", INTS, "x", {"value": 1}))
        h.wait_for_spec("a", DOUBLES, "x", {"value": 2})
        h.wait_idle()
        assert [i.namespace for i in h.rt.inputs] == ["b"]
        h.state.create(Resource("b", INTS, "y", {"value": 4}))
        h.wait_for_spec("b", DOUBLES, "y", {"value": 8})
        h.wait_idle()
        before = h.reconciles
        h.state.create(Resource("a", INTS, "z", {"value": 1}))   # no longer an input
        h.wait_idle()
        assert h.reconciles == before


def test_stop_leaves_no_threads_behind():
    before = set(threading.enumerate())
    h = ControllerHarness(Holder).start()
    h.wait_idle()
    assert len(set(threading.enumerate()) - before) == 3   # the loop and one watcher per input kind
    h.stop()
    assert set(threading.enumerate()) - before == set()


def test_load_controller_needs_a_name_when_a_module_has_several():
    with pytest.raises(LookupError, match="several"):
        load_controller(BUNDLED / "hostname.py")
    with pytest.raises(LookupError, match="no controller"):
        load_controller(BUNDLED / "hostname.py", "Nope")
    assert load_controller(BUNDLED / "links.py").name == "net.LinkStatusController"
