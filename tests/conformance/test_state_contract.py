"""The state contract beyond COSI's cases: the details DESIGN 2a spells out.

Copies on every read and write, version and phase rules, finalizers,
teardown, watch starting points and bookmarks, ``modify`` (creation from
``{}``, no write when unchanged, retry on a version conflict) and
thread-safety. Same rules as the COSI port: public verbs only, watches read
with a timeout, absence shown with a barrier write.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from cosihost import ConflictError, NotFoundError, PhaseConflictError, Resource

T = "Gadgets.test.cosihost.dev"
T2 = "Gizmos.test.cosihost.dev"


def test_reads_and_writes_return_copies(state, ns, expect) -> None:
    w = state.watch_kind(ns, T)
    created = state.create(Resource(ns, T, "a", {"items": [1]}, labels={"k": "v"}))
    for res in (created, state.get(ns, T, "a"), state.list(ns, T)[0], expect(w, "created", "a").resource):
        res.spec["items"].append(2)
        res.metadata.labels["k"] = "changed"
        res.metadata.finalizers.append("sneaky")
    stored = state.get(ns, T, "a")
    assert (stored.spec, stored.metadata.labels, stored.metadata.finalizers) == ({"items": [1]}, {"k": "v"}, [])

    mine = Resource(ns, T, "b", {"x": 1})
    state.create(mine)
    mine.spec["x"] = 2
    assert mine.metadata.version == 0, "create does not change the caller's resource"
    assert state.get(ns, T, "b").spec == {"x": 1}


def test_specs_of_any_msgpack_shape_round_trip(state, ns) -> None:
    specs = {
        "dict": {"s": "ü", "i": -3, "f": 1.5, "b": b"\x00\xff", "n": None, "t": True, "l": [1, [2]]},
        "list": [1, "two", {"three": 3}],
        "string": "just a string",
        "none": None,
        "int": 2**63,
    }
    for id, spec in specs.items():
        state.create(Resource(ns, T, id, spec))
    assert {r.metadata.id: r.spec for r in state.list(ns, T)} == specs


def test_versions_timestamps_owner_and_phase_are_the_stores(state, ns) -> None:
    first = state.create(Resource(ns, T, "a"))
    assert first.metadata.version == 1 and first.metadata.created > 0
    assert first.metadata.updated == first.metadata.created

    cur = state.get(ns, T, "a")
    cur.metadata.owner, cur.metadata.phase, cur.metadata.created = "someone", "tearing-down", 1.0
    cur.metadata.annotations["note"] = "kept"
    after = state.update(cur)
    md = after.metadata
    assert (md.version, md.owner, md.phase, md.created) == (2, "", "running", first.metadata.created)
    assert md.updated >= md.created and md.annotations == {"note": "kept"}
    assert state.get(ns, T, "a") == after


def test_list_is_sorted_by_id_and_kinds_are_separate(state, ns) -> None:
    for id in ("b", "c", "a", "B"):
        state.create(Resource(ns, T, id))
    state.create(Resource(ns, T2, "z"))
    assert [r.metadata.id for r in state.list(ns, T)] == ["B", "a", "b", "c"]
    assert [r.metadata.id for r in state.list(ns, T2)] == ["z"]


def test_concurrent_creates_have_one_winner(state, ns) -> None:
    def create() -> bool:
        try:
            state.create(Resource(ns, T, "contested"))
            return True
        except ConflictError:
            return False

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = [f.result() for f in [pool.submit(create) for _ in range(10)]]
    assert results.count(True) == 1
    assert state.get(ns, T, "contested").metadata.version == 1


def test_update_phase_rules(state, ns) -> None:
    state.create(Resource(ns, T, "a"))
    with pytest.raises(PhaseConflictError):
        state.update(state.get(ns, T, "a"), expected_phase="tearing-down")
    assert state.update(state.get(ns, T, "a"), expected_phase=None).metadata.version == 2
    state.teardown(ns, T, "a")
    with pytest.raises(PhaseConflictError):
        state.update(state.get(ns, T, "a"))
    assert state.update(state.get(ns, T, "a"), expected_phase="tearing-down").metadata.version == 4
    assert state.update(state.get(ns, T, "a"), expected_phase=None).metadata.version == 5


@pytest.mark.any_owner
def test_finalizers_are_anyones_in_any_phase(state, ns) -> None:
    state.create(Resource(ns, T, "owned"), owner="ctl")
    assert state.add_finalizer(ns, T, "owned", "b", "a").metadata.finalizers == ["b", "a"]
    again = state.add_finalizer(ns, T, "owned", "a")
    assert (again.metadata.finalizers, again.metadata.version) == (["b", "a"], 2)

    assert state.teardown(ns, T, "owned", owner="ctl") is False
    assert state.add_finalizer(ns, T, "owned", "c").metadata.finalizers == ["b", "a", "c"]
    assert state.remove_finalizer(ns, T, "owned", "a", "missing").metadata.finalizers == ["b", "c"]
    unchanged = state.remove_finalizer(ns, T, "owned", "missing")
    assert unchanged.metadata.version == 5 and unchanged.metadata.owner == "ctl"
    with pytest.raises(ConflictError):
        state.destroy(ns, T, "owned", owner="ctl")
    state.remove_finalizer(ns, T, "owned", "b", "c")
    state.destroy(ns, T, "owned", owner="ctl")
    with pytest.raises(NotFoundError):
        state.add_finalizer(ns, T, "owned", "a")
    with pytest.raises(NotFoundError):
        state.remove_finalizer(ns, T, "owned", "a")


def test_teardown_is_idempotent_and_says_whether_finalizers_remain(state, ns, expect) -> None:
    state.create(Resource(ns, T, "a"))
    state.add_finalizer(ns, T, "a", "f")
    w = state.watch(ns, T, "a")
    expect(w, "created", "a")
    assert state.teardown(ns, T, "a") is False
    assert state.teardown(ns, T, "a") is False
    assert state.get(ns, T, "a").metadata.version == 3, "a second teardown writes nothing"
    state.remove_finalizer(ns, T, "a", "f")
    assert state.teardown(ns, T, "a") is True
    assert expect(w, "updated", "a").resource.metadata.phase == "tearing-down"
    assert expect(w, "updated", "a").resource.metadata.finalizers == []
    state.destroy(ns, T, "a")
    expect(w, "destroyed", "a")


def test_watch_starts_with_the_current_state_and_sees_only_its_resource(state, ns, expect) -> None:
    state.create(Resource(ns, T, "here", {"v": 1}))
    state.update(state.get(ns, T, "here"))
    present, missing = state.watch(ns, T, "here"), state.watch(ns, T, "gone")
    first = expect(present, "created", "here")
    assert (first.resource.spec, first.resource.metadata.version) == ({"v": 1}, 2)
    tomb = expect(missing, "destroyed", "gone")
    assert (tomb.resource.metadata.namespace, tomb.resource.metadata.type) == (ns, T)

    state.create(Resource(ns, T, "neighbour"))
    state.create(Resource(ns, T2, "gone"))
    state.add_finalizer(ns, T, "here", "barrier")
    assert expect(present, "updated", "here").resource.metadata.finalizers == ["barrier"]
    state.create(Resource(ns, T, "gone"))
    expect(missing, "created", "gone")


def test_watches_are_live_when_the_call_returns(state, ns, expect) -> None:
    w, wk = state.watch(ns, T, "a"), state.watch_kind(ns, T)
    state.create(Resource(ns, T, "a"))
    expect(w, "destroyed", "a")
    expect(w, "created", "a")
    expect(wk, "created", "a")


def test_closed_watch_ends(state, ns) -> None:
    w = state.watch_kind(ns, T)
    w.close()
    state.create(Resource(ns, T, "a"))
    assert w.next(timeout=5) is None


def test_bootstrap_of_an_empty_kind_is_just_the_marker(state, ns, expect) -> None:
    w = state.watch_kind(ns, T, bootstrap=True)
    assert expect(w, "bootstrapped").bookmark is not None
    state.create(Resource(ns, T, "a"))
    expect(w, "created", "a")


def test_resume_from_bootstrap_bookmark_with_labels(state, ns, expect) -> None:
    state.create(Resource(ns, T, "in", labels={"app": "web"}))
    state.create(Resource(ns, T, "out", labels={"app": "db"}))
    w = state.watch_kind(ns, T, bootstrap=True, labels="app=web")
    expect(w, "created", "in")
    mark = expect(w, "bootstrapped").bookmark
    w.close()

    state.create(Resource(ns, T, "in2", labels={"app": "web"}))
    state.create(Resource(ns, T, "out2", labels={"app": "db"}))
    moved = state.get(ns, T, "out")
    moved.metadata.labels["app"] = "web"
    state.update(moved)
    resumed = state.watch_kind(ns, T, labels="app=web", since=mark)
    expect(resumed, "created", "in2")
    assert expect(resumed, "created", "out").old is None
    state.create(Resource(ns, T, "barrier", labels={"app": "web"}))
    expect(resumed, "created", "barrier")


def test_modify_creates_from_an_empty_dict(state, ns) -> None:
    seen = []

    def fn(spec: dict) -> None:
        seen.append(dict(spec))
        spec["n"] = 1

    res = state.modify(ns, T, "new", fn)
    assert seen == [{}]
    assert (res.spec, res.metadata.version) == ({"n": 1}, 1)
    assert state.get(ns, T, "new") == res


def test_modify_writes_nothing_when_unchanged(state, ns, expect) -> None:
    state.create(Resource(ns, T, "a", {"n": 1}))
    w = state.watch(ns, T, "a")
    expect(w, "created", "a")
    same = state.modify(ns, T, "a", lambda spec: spec.update(n=1))
    assert same.metadata.version == 1
    state.add_finalizer(ns, T, "a", "barrier")
    assert expect(w, "updated", "a").resource.metadata.finalizers == ["barrier"]


def test_modify_fn_failure_writes_nothing(state, ns) -> None:
    def fail(spec: dict) -> None:
        spec["half"] = "done"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        state.modify(ns, T, "never", fail)
    with pytest.raises(NotFoundError):
        state.get(ns, T, "never")


def test_modify_of_a_resource_tearing_down_is_a_phase_conflict(state, ns) -> None:
    state.create(Resource(ns, T, "a", {"n": 1}))
    state.teardown(ns, T, "a")
    for fn in (lambda spec: spec.update(n=2), lambda spec: None):
        with pytest.raises(PhaseConflictError):
            state.modify(ns, T, "a", fn)
    assert state.get(ns, T, "a").metadata.version == 2


def test_modify_retries_on_a_version_conflict(state, ns) -> None:
    state.create(Resource(ns, T, "a", {"mine": 0, "theirs": 0}))
    calls = []

    def fn(spec: dict) -> None:
        calls.append(dict(spec))
        if len(calls) == 1:  # another writer gets in between our read and our write
            state.modify(ns, T, "a", lambda s: s.update(theirs=1))
        spec["mine"] = 1

    res = state.modify(ns, T, "a", fn)
    assert calls == [{"mine": 0, "theirs": 0}, {"mine": 0, "theirs": 1}]
    assert (res.spec, res.metadata.version) == ({"mine": 1, "theirs": 1}, 3)


def test_concurrent_modify_from_threads_counts_right(state, ns) -> None:
    threads, rounds = 8, 25
    start = threading.Barrier(threads)

    def bump(spec: dict) -> None:
        spec["n"] = spec.get("n", 0) + 1

    def worker() -> None:
        start.wait(timeout=5)
        for _ in range(rounds):
            state.modify(ns, T, "counter", bump)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(worker) for _ in range(threads)]:
            future.result()
    res = state.get(ns, T, "counter")
    assert res.spec == {"n": threads * rounds}
    assert res.metadata.version == threads * rounds
