"""The ready-made controllers (cosihost.generic) in the harness: outputs
follow inputs, orphans go, input finalizers go only after the output, a
tearing-down input tears its output down first, a restart mid-queue leaves
nothing orphaned, cleanup holds a kind until its dependants are gone, and
destroy finishes its own torn-down resources once nothing holds them."""

from __future__ import annotations

import time
from typing import Any

import pytest

from cosihost import InMemoryState, Input, Resource, generic
from cosihost.testing import ControllerHarness

INTS = "Ints.test.cosihost.dev"
STRS = "Strs.test.cosihost.dev"
GROUPS = "Groups.test.cosihost.dev"
NAME = "test.IntToStr"


def to_str(rt: Any, inp: Resource, out: Resource) -> None:
    out.spec["value"] = str(inp.spec["value"])
    out.metadata.labels["from"] = inp.metadata.id


def build(kind: str, **options: Any) -> type:
    make = generic.transform if kind == "transform" else generic.qtransform
    return make(name=NAME, input=("in", INTS), output=("out", STRS), transform=to_str, **options)


def values(state: InMemoryState) -> dict[str, str]:
    return {r.metadata.id: r.spec["value"] for r in state.list("out", STRS)}


def put(state: InMemoryState, rid: str, value: int) -> None:
    try:
        res = state.get("in", INTS, rid)
    except Exception:
        state.create(Resource("in", INTS, rid, {"value": value}))
        return
    res.spec["value"] = value
    state.update(res)


@pytest.mark.parametrize("kind", ["transform", "qtransform"])
def test_outputs_follow_inputs_and_orphans_are_destroyed(kind: str) -> None:
    options = {} if kind == "qtransform" else {"input_finalizers": True}
    with ControllerHarness(build(kind, **options)) as h:
        put(h.state, "one", 1)
        put(h.state, "two", 2)
        h.wait_for(lambda: values(h.state) == {"one": "1", "two": "2"}, message="outputs")
        assert h.get("out", STRS, "one").metadata.labels == {"from": "one"}
        put(h.state, "two", 22)
        h.wait_for(lambda: values(h.state) == {"one": "1", "two": "22"}, message="the update")
        assert h.state.teardown("in", INTS, "one") is False      # held by the controller
        h.wait_for(lambda: not h.get("in", INTS, "one").metadata.finalizers, message="the finalizer to go")
        assert "one" not in values(h.state)                      # the output went first
        h.state.destroy("in", INTS, "one")
        h.wait_idle()
        assert values(h.state) == {"two": "22"}


def test_a_plain_transform_destroys_the_output_of_a_destroyed_input() -> None:
    with ControllerHarness(build("transform")) as h:
        put(h.state, "one", 1)
        h.wait_for(lambda: values(h.state) == {"one": "1"}, message="the output")
        h.state.destroy("in", INTS, "one")   # no finalizer: the input just goes
        h.wait_for(lambda: values(h.state) == {}, message="the orphan to be destroyed")


@pytest.mark.parametrize("kind", ["transform", "qtransform"])
def test_the_input_finalizer_goes_only_after_the_output_is_destroyed(kind: str) -> None:
    options = {} if kind == "qtransform" else {"input_finalizers": True}
    with ControllerHarness(build(kind, **options)) as h:
        put(h.state, "one", 1)
        h.wait_for_spec("out", STRS, "one", {"value": "1"})
        h.wait_for(lambda: h.get("in", INTS, "one").metadata.finalizers == [NAME], message="the finalizer")
        h.state.add_finalizer("out", STRS, "one", "someone-else")   # a downstream controller's
        h.state.teardown("in", INTS, "one")
        h.wait_for_resource("out", STRS, "one", lambda r: r.metadata.phase == "tearing-down")
        h.wait_idle()
        # The output is torn down first and held; the input keeps its finalizer meanwhile.
        assert h.get("in", INTS, "one").metadata.finalizers == [NAME]
        h.state.remove_finalizer("out", STRS, "one", "someone-else")
        h.wait_destroyed("out", STRS, "one")
        h.wait_for(lambda: not h.get("in", INTS, "one").metadata.finalizers, message="the input's finalizer")
        h.state.destroy("in", INTS, "one")


def test_ignore_tearing_down_keeps_the_output_until_the_input_is_destroyed() -> None:
    with ControllerHarness(build("transform", ignore_tearing_down=True)) as h:
        put(h.state, "one", 1)
        h.wait_for_spec("out", STRS, "one", {"value": "1"})
        h.state.teardown("in", INTS, "one")
        h.wait_idle()
        assert h.get("out", STRS, "one") is not None
        h.state.destroy("in", INTS, "one")
        h.wait_destroyed("out", STRS, "one")


def test_map_skip_and_input_filters() -> None:
    def odd_only(res: Resource) -> str | None:
        return res.metadata.id if res.spec["value"] % 2 else None

    def no_threes(rt: Any, inp: Resource, out: Resource) -> None:
        if inp.spec["value"] == 3:
            raise generic.Skip("not threes")
        to_str(rt, inp, out)

    cls = generic.transform(name=NAME, input=("in", INTS), output=("out", STRS), transform=no_threes,
                            map=odd_only, input_labels="pick")
    with ControllerHarness(cls) as h:
        for rid, value, labels in [("a", 1, {"pick": ""}), ("b", 2, {"pick": ""}), ("c", 3, {"pick": ""}),
                                   ("d", 5, {})]:
            h.state.create(Resource("in", INTS, rid, {"value": value}, labels=labels))
        h.wait_for(lambda: values(h.state) == {"a": "1"}, message="only a")
        h.wait_idle()
        assert values(h.state) == {"a": "1"} and h.errors == []


def slow_to_str(rt: Any, inp: Resource, out: Resource) -> None:
    """The first controller's transform: slow, so the queue is still full
    when it stops; for the plain transform, it never gets past i99."""
    if inp.spec["value"] >= 100:
        raise generic.Skip("not reached before the restart")
    time.sleep(0.002)
    to_str(rt, inp, out)


@pytest.mark.parametrize("kind", ["transform", "qtransform"])
def test_a_restart_in_the_middle_leaves_nothing_orphaned(kind: str) -> None:
    """Stop the controller halfway through, change the inputs while it is
    away (delete some, add others), start a new one on the same state."""
    options = {} if kind == "qtransform" else {"input_finalizers": True}
    make = generic.transform if kind == "transform" else generic.qtransform
    state = InMemoryState()
    for i in range(200):
        put(state, f"i{i}", i)
    first = ControllerHarness(make(name=NAME, input=("in", INTS), output=("out", STRS), transform=slow_to_str,
                                   **options), state=state).start()
    try:
        first.wait_for(lambda: len(values(state)) >= 20, message="some outputs")
    finally:
        first.stop()
    assert len(values(state)) < 200
    held = [r.metadata.id for r in state.list("in", INTS) if r.metadata.finalizers]
    assert held, "the first controller held some inputs"
    for rid in held[:10]:
        state.teardown("in", INTS, rid)
    for i in range(200, 210):
        put(state, f"i{i}", i)
    with ControllerHarness(build(kind, **options), state=state) as h:
        for rid in held[:10]:
            h.wait_for(lambda rid=rid: not state.get("in", INTS, rid).metadata.finalizers, message=rid)
            state.destroy("in", INTS, rid)
        expected = {r.metadata.id: str(r.spec["value"]) for r in state.list("in", INTS)}
        h.wait_for(lambda: values(state) == expected, message="outputs == inputs", timeout=15)
        h.wait_idle()
        assert values(state) == expected
        assert all(r.metadata.finalizers == [NAME] for r in state.list("in", INTS))


def test_qtransform_mapped_inputs_requeue_their_inputs() -> None:
    def scaled(rt: Any, inp: Resource, out: Resource) -> None:
        factor = rt.get("groups", GROUPS, "g").spec["factor"]
        out.spec["value"] = str(inp.spec["value"] * factor)

    def everyone(rt: Any, md: Any) -> list[str]:
        return [r.metadata.id for r in rt.list("in", INTS)]

    cls = generic.qtransform(name=NAME, input=("in", INTS), output=("out", STRS), transform=scaled,
                             mapped={Input("groups", GROUPS): everyone}, concurrency=2)
    with ControllerHarness(cls) as h:
        h.state.create(Resource("groups", GROUPS, "g", {"factor": 2}))
        put(h.state, "one", 1)
        put(h.state, "two", 2)
        h.wait_for(lambda: values(h.state) == {"one": "2", "two": "4"}, message="scaled by 2")
        group = h.state.get("groups", GROUPS, "g")
        group.spec["factor"] = 3
        h.state.update(group)
        h.wait_for(lambda: values(h.state) == {"one": "3", "two": "6"}, message="scaled by 3")


def test_cleanup_holds_a_kind_until_nothing_refers_to_it() -> None:
    cls = generic.cleanup(name="test.GroupCleanup", input=("groups", GROUPS),
                          finalizer_removal=generic.has_no_outputs("in", INTS, lambda g: f"group={g.metadata.id}"),
                          extra_inputs=[Input("in", INTS)])
    with ControllerHarness(cls) as h:
        h.state.create(Resource("groups", GROUPS, "g", {}))
        h.state.create(Resource("in", INTS, "member", {"value": 1}, labels={"group": "g"}))
        h.wait_for(lambda: h.get("groups", GROUPS, "g").metadata.finalizers == ["test.GroupCleanup"],
                   message="the finalizer")
        h.state.teardown("groups", GROUPS, "g")
        h.wait_idle()
        assert h.get("groups", GROUPS, "g").metadata.finalizers == ["test.GroupCleanup"]   # a member is left
        h.state.destroy("in", INTS, "member")
        h.wait_for(lambda: not h.get("groups", GROUPS, "g").metadata.finalizers, message="the finalizer to go")
        h.state.destroy("groups", GROUPS, "g")


REAPER = "test.Reaper"


def test_destroy_finishes_its_own_teardowns_once_nothing_holds_them() -> None:
    state = InMemoryState()
    state.create(Resource("out", STRS, "early", {}), owner=REAPER)
    state.teardown("out", STRS, "early", owner=REAPER)            # torn down before it starts
    with ControllerHarness(generic.destroy(name=REAPER, output=("out", STRS)), state=state) as h:
        h.wait_destroyed("out", STRS, "early")                    # the queue is filled at start
        for rid in ("held", "free", "running"):
            h.state.create(Resource("out", STRS, rid, {}), owner=REAPER)
        h.state.create(Resource("out", STRS, "users", {}))        # a user's (no owner): never ours
        h.state.add_finalizer("out", STRS, "held", "someone-else")
        for rid in ("held", "free"):
            h.state.teardown("out", STRS, rid, owner=REAPER)
        h.state.teardown("out", STRS, "users")
        h.wait_destroyed("out", STRS, "free")
        h.wait_idle()
        assert {r.metadata.id: r.metadata.phase for r in h.state.list("out", STRS)} == {
            "held": "tearing-down", "running": "running", "users": "tearing-down"}
        h.state.remove_finalizer("out", STRS, "held", "someone-else")
        h.wait_destroyed("out", STRS, "held")
        h.wait_idle()
        assert sorted(r.metadata.id for r in h.state.list("out", STRS)) == ["running", "users"]
        assert h.errors == []
