"""The COSI runtime's state conformance cases (``pkg/state/conformance``),
ported by behaviour to the cosihost state API.

Each test runs against every implementation in ``conftest.IMPLEMENTATIONS``
and uses only the public verbs of DESIGN 2a. Watches are read with
``next(timeout=...)`` through the ``expect`` fixture; absence of an event is
shown with a later "barrier" write whose event must come next, never by
sleeping. COSI cases with no counterpart in this API (tail events,
``ContextWithTeardown``, an ID query on a kind watch) are covered by the
behaviour they build on, or left out.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from cosihost import (ConflictError, InMemoryState, InvalidRequestError, NotFoundError, OwnerConflictError,
                      PhaseConflictError, Resource)

T = "Paths.os.cosihost.dev"


def ids(resources) -> list[str]:
    return [r.metadata.id for r in resources]


def relabel(state, ns: str, id: str, **changes: str | None) -> Resource:
    """Update a resource's labels: a value sets the label, None removes it."""
    cur = state.get(ns, T, id)
    for key, value in changes.items():
        if value is None:
            cur.metadata.labels.pop(key, None)
        else:
            cur.metadata.labels[key] = value
    return state.update(cur)


def test_crd(state, ns, other_ns) -> None:
    for id in ("var/run", "var/lib"):
        with pytest.raises(NotFoundError):
            state.get(ns, T, id)
    assert state.list(ns, T) == []

    state.create(Resource(ns, T, "var/run"))
    state.create(Resource(ns, T, "var/lib"))
    state.create(Resource(other_ns, T, "var/run"))

    got = state.get(ns, T, "var/run")
    md = got.metadata
    assert (md.namespace, md.type, md.id, md.version) == (ns, T, "var/run", 1)
    assert (md.owner, md.phase, md.finalizers) == ("", "running", [])
    assert ids(state.list(ns, T)) == ["var/lib", "var/run"]
    assert ids(state.list(other_ns, T)) == ["var/run"]

    with pytest.raises(ConflictError) as exc:
        state.create(Resource(ns, T, "var/run"))
    assert type(exc.value) is ConflictError

    assert state.teardown(ns, T, "var/run") is True
    state.destroy(ns, T, "var/run")
    with pytest.raises(NotFoundError):
        state.teardown(ns, T, "var/run")
    with pytest.raises(NotFoundError):
        state.destroy(ns, T, "var/run")
    with pytest.raises(NotFoundError):
        state.get(ns, T, "var/run")
    assert ids(state.list(ns, T)) == ["var/lib"]
    assert ids(state.list(other_ns, T)) == ["var/run"]

    assert state.teardown(ns, T, "var/lib") is True
    again = state.create(Resource(ns, T, "var/run", {"again": True}))
    assert (again.metadata.version, again.metadata.phase) == (1, "running")
    assert state.get(ns, T, "var/run").spec == {"again": True}


def test_update_returns_the_new_resource_and_leaves_the_callers_alone(state, ns) -> None:
    created = state.create(Resource(ns, T, "var/run/update"))
    cur = state.get(ns, T, "var/run/update")
    cur.metadata.labels["foo"] = "bar"

    updated = state.update(cur)

    assert updated.metadata.labels == {"foo": "bar"}
    assert updated.metadata.version == 2
    assert cur.metadata.version == 1
    assert created.metadata.labels == {}
    assert state.get(ns, T, "var/run/update").metadata.labels == {"foo": "bar"}


@pytest.mark.any_owner
def test_crd_with_owners(state, ns) -> None:
    state.create(Resource(ns, T, "owner1/var/run"), owner="owner1")
    state.create(Resource(ns, T, "owner2/var/lib"), owner="owner2")
    assert state.get(ns, T, "owner1/var/run").metadata.owner == "owner1"
    r2 = state.get(ns, T, "owner2/var/lib")
    assert r2.metadata.owner == "owner2"

    with pytest.raises(OwnerConflictError):
        state.update(r2)
    with pytest.raises(OwnerConflictError):
        state.update(r2, owner="owner1")
    assert state.update(r2, owner="owner2").metadata.owner == "owner2"

    with pytest.raises(OwnerConflictError):
        state.teardown(ns, T, "owner1/var/run")
    assert state.teardown(ns, T, "owner1/var/run", owner="owner1") is True
    with pytest.raises(OwnerConflictError):
        state.destroy(ns, T, "owner1/var/run", owner="owner2")
    state.destroy(ns, T, "owner1/var/run", owner="owner1")

    # Finalizers are anyone's to change, and do not change the owner.
    assert state.add_finalizer(ns, T, "owner2/var/lib", "fin1").metadata.finalizers == ["fin1"]
    after = state.remove_finalizer(ns, T, "owner2/var/lib", "fin1")
    assert (after.metadata.finalizers, after.metadata.owner) == ([], "owner2")


def test_watch_kind(state, ns, expect) -> None:
    state.create(Resource(ns, T, "var/db"))
    w = state.watch_kind(ns, T)

    state.create(Resource(ns, T, "var/tmp"))
    expect(w, "created", "var/tmp")

    state.teardown(ns, T, "var/db")
    state.destroy(ns, T, "var/db")
    ev = expect(w, "updated", "var/db")
    assert (ev.old.metadata.id, ev.old.metadata.phase, ev.resource.metadata.phase) == (
        "var/db", "running", "tearing-down")
    expect(w, "destroyed", "var/db")

    state.update(state.get(ns, T, "var/tmp"))
    ev = expect(w, "updated", "var/tmp")
    assert (ev.old.metadata.version, ev.resource.metadata.version) == (1, 2)

    wb = state.watch_kind(ns, T, bootstrap=True)
    for res in state.list(ns, T):
        ev = expect(wb, "created", res.metadata.id)
        assert ev.resource.metadata.version == res.metadata.version
    expect(wb, "bootstrapped")

    state.update(state.get(ns, T, "var/tmp"))
    for watch in (w, wb):
        assert expect(watch, "updated", "var/tmp").resource.metadata.version == 3
    w.close()
    wb.close()


def test_watch_kind_with_labels(state, ns, expect) -> None:
    state.create(Resource(ns, T, "var/label1", labels={"label": "label1", "common": "app"}))
    w1 = state.watch_kind(ns, T, bootstrap=True, labels="label=label1")
    wc = state.watch_kind(ns, T, bootstrap=True, labels="common")
    wor = state.watch_kind(ns, T, bootstrap=True, labels=["label=label2", "label=label3"])
    state.create(Resource(ns, T, "var/label2", labels={"label": "label2", "common": "app"}))
    state.create(Resource(ns, T, "var/label3", labels={"label": "label3"}))

    expect(w1, "created", "var/label1")
    expect(wc, "created", "var/label1")
    for watch in (w1, wc, wor):
        expect(watch, "bootstrapped")
    expect(wc, "created", "var/label2")
    expect(wor, "created", "var/label2")
    expect(wor, "created", "var/label3")

    # var/label3 starts matching "common": a synthetic created.
    relabel(state, ns, "var/label3", common="foo")
    ev = expect(wc, "created", "var/label3")
    assert ev.old is None and ev.resource.metadata.labels["common"] == "foo"

    # A change to var/label1 that keeps it matching both: updated, with old.
    relabel(state, ns, "var/label1", app="app-awesome")
    for watch in (w1, wc):
        ev = expect(watch, "updated", "var/label1")
        assert "app" in ev.resource.metadata.labels and "app" not in ev.old.metadata.labels

    # var/label1 stops matching "common": a synthetic destroyed for wc only.
    relabel(state, ns, "var/label1", common=None)
    ev = expect(wc, "destroyed", "var/label1")
    assert ev.old is None
    ev = expect(w1, "updated", "var/label1")
    assert "common" not in ev.resource.metadata.labels and "common" in ev.old.metadata.labels

    # The OR watch saw only var/label3's change; the barrier's event comes next.
    state.create(Resource(ns, T, "var/barrier", labels={"label": "label2"}))
    expect(wor, "updated", "var/label3")
    expect(wor, "created", "var/barrier")


def test_concurrent_finalizers(state, ns) -> None:
    state.create(Resource(ns, T, "var/final"))
    with ThreadPoolExecutor(max_workers=11) as pool:
        adds = [pool.submit(state.add_finalizer, ns, T, "var/final", f) for f in "ABCDEFGH"]
        removes = [pool.submit(state.remove_finalizer, ns, T, "var/final", f) for f in "ABC"]
        for future in adds + removes:
            future.result()
    with ThreadPoolExecutor(max_workers=3) as pool:
        for future in [pool.submit(state.remove_finalizer, ns, T, "var/final", f) for f in "ABC"]:
            future.result()
    assert sorted(state.get(ns, T, "var/final").metadata.finalizers) == list("DEFGH")


def test_watch(state, ns, expect) -> None:
    w = state.watch(ns, T, "tmp/two")
    ev = expect(w, "destroyed", "tmp/two")
    assert (ev.resource.metadata.namespace, ev.resource.metadata.type) == (ns, T)

    state.create(Resource(ns, T, "tmp/two"))
    expect(w, "created", "tmp/two")

    assert state.teardown(ns, T, "tmp/two") is True
    ev = expect(w, "updated", "tmp/two")
    assert (ev.resource.metadata.phase, ev.old.metadata.phase) == ("tearing-down", "running")

    state.add_finalizer(ns, T, "tmp/two", "A")
    assert expect(w, "updated", "tmp/two").resource.metadata.finalizers == ["A"]
    state.remove_finalizer(ns, T, "tmp/two", "A")
    assert expect(w, "updated", "tmp/two").resource.metadata.finalizers == []

    state.destroy(ns, T, "tmp/two")
    ev = expect(w, "destroyed", "tmp/two")
    assert ev.resource.metadata.phase == "tearing-down"
    w.close()


def _summary(event) -> tuple:
    res = event.resource
    return (event.kind, res and res.metadata.id, res and res.metadata.version)


@pytest.mark.parametrize("bootstrap", [False, True], ids=["plain", "bootstrap"])
def test_watch_kind_with_bookmarks(state, ns, expect, bootstrap: bool) -> None:
    state.create(Resource(ns, T, "res/bookmarks"))
    state.create(Resource(ns, T, "res/unrelated"))
    w = state.watch_kind(ns, T, bootstrap=bootstrap)
    state.update(state.get(ns, T, "res/bookmarks"))
    state.update(state.get(ns, T, "res/bookmarks"))
    state.teardown(ns, T, "res/bookmarks")
    state.destroy(ns, T, "res/bookmarks")

    events = []
    if bootstrap:
        expect(w, "created", "res/bookmarks")
        expect(w, "created", "res/unrelated")
        events.append(expect(w, "bootstrapped"))
    events += [expect(w, kind, "res/bookmarks") for kind in ("updated",) * 3 + ("destroyed",)]
    for ev in events:
        assert ev.bookmark is not None, ev
    state.create(Resource(ns, T, "res/bookmarks"))

    for i, mark in enumerate(ev.bookmark for ev in events):
        resumed = state.watch_kind(ns, T, since=mark)
        for later in events[i + 1:]:
            assert _summary(resumed.next(timeout=5)) == _summary(later)
        assert _summary(resumed.next(timeout=5)) == ("created", "res/bookmarks", 1)
        resumed.close()


def _kind_id(event) -> tuple:
    return (event.kind, event.resource.metadata.id if event.resource is not None else None)


def test_watch_kind_aggregated(state, ns) -> None:
    """COSI's aggregated kind watch: each next() hands over, as a list, every
    event that has arrived, at least one, in order; a bootstrap (its items,
    then ``bootstrapped``) is one batch; label filters apply as on watch_kind."""
    for rid in ("agg/a", "agg/b"):
        state.create(Resource(ns, T, rid, labels={"app": "x"}))
    state.create(Resource(ns, T, "agg/other"))
    w = state.watch_kind_aggregated(ns, T, bootstrap=True, labels="app=x")
    assert [_kind_id(e) for e in w.next(timeout=5)] == [
        ("created", "agg/a"), ("created", "agg/b"), ("bootstrapped", None)]

    expected = []
    for i in range(20):
        state.create(Resource(ns, T, f"agg/n{i}", labels={"app": "x"}))
        expected.append(("created", f"agg/n{i}"))
        state.create(Resource(ns, T, f"agg/unlabelled{i}"))        # filtered out
    state.teardown(ns, T, "agg/a")
    state.destroy(ns, T, "agg/a")
    expected += [("updated", "agg/a"), ("destroyed", "agg/a")]
    seen, batches = [], 0
    while len(seen) < len(expected):
        batch = w.next(timeout=5)
        assert batch, f"timed out after {seen}"
        seen += [_kind_id(e) for e in batch]
        batches += 1
    assert seen == expected
    if type(state) is InMemoryState:   # writes applied before they return: everything written is one batch
        assert batches == 1
    state.create(Resource(ns, T, "agg/barrier", labels={"app": "x"}))   # nothing else was pending
    assert [_kind_id(e) for e in w.next(timeout=5)] == [("created", "agg/barrier")]
    w.close()

    with state.watch_kind_aggregated(ns, T, bootstrap=True, labels="app=x", max_batch=2) as small:
        got: list = []
        while not got or got[-1][-1].kind != "bootstrapped":
            got.append(small.next(timeout=5))
            assert got[-1], "timed out"
        sizes = [len(batch) for batch in got]
        assert max(sizes) == 2 and sum(sizes) == 23     # b, n0..n19, barrier, bootstrapped
    with pytest.raises(InvalidRequestError, match="max_batch"):
        state.watch_kind_aggregated(ns, T, max_batch=0)


def test_parallel_destroy(state, ns, expect) -> None:
    state.create(Resource(ns, T, "/"))
    w = state.watch_kind(ns, T)

    def destroy() -> None:
        try:
            state.destroy(ns, T, "/")
        except NotFoundError:
            pass

    with ThreadPoolExecutor(max_workers=10) as pool:
        for future in [pool.submit(destroy) for _ in range(10)]:
            future.result()
    with pytest.raises(NotFoundError):
        state.get(ns, T, "/")
    state.create(Resource(ns, T, "barrier"))
    expect(w, "destroyed", "/")
    expect(w, "created", "barrier")


def test_teardown_destroy(state, ns) -> None:
    state.create(Resource(ns, T, "tmp/1"))
    state.add_finalizer(ns, T, "tmp/1", "A")
    with pytest.raises(ConflictError):
        state.destroy(ns, T, "tmp/1")
    assert state.teardown(ns, T, "tmp/1") is False
    assert state.teardown(ns, T, "tmp/1") is False
    with pytest.raises(ConflictError):
        state.destroy(ns, T, "tmp/1")
    state.remove_finalizer(ns, T, "tmp/1", "A")
    assert state.teardown(ns, T, "tmp/1") is True
    state.destroy(ns, T, "tmp/1")
    with pytest.raises(NotFoundError):
        state.get(ns, T, "tmp/1")


def test_update(state, ns) -> None:
    res = Resource(ns, T, "tmp/path1", {"n": 0})
    with pytest.raises(NotFoundError):
        state.update(res)
    assert state.create(res).metadata.version == 1

    for stale_or_future in (0, 2):
        res.metadata.version = stale_or_future
        with pytest.raises(ConflictError) as exc:
            state.update(res)
        assert type(exc.value) is ConflictError
    res.metadata.version = 1
    res.spec = {"n": 1}
    assert state.update(res).metadata.version == 2

    with pytest.raises(PhaseConflictError):
        state.update(state.get(ns, T, "tmp/path1"), expected_phase="tearing-down")
    state.teardown(ns, T, "tmp/path1")
    cur = state.get(ns, T, "tmp/path1")
    with pytest.raises(PhaseConflictError):
        state.update(cur)
    cur.spec = {"n": 2}
    cur = state.update(cur, expected_phase="tearing-down")
    assert (cur.metadata.phase, cur.spec) == ("tearing-down", {"n": 2})
    cur.spec = {"n": 3}
    assert state.update(cur, expected_phase=None).metadata.version == cur.metadata.version + 1
    assert state.get(ns, T, "tmp/path1").spec == {"n": 3}


def test_labels(state, ns) -> None:
    state.create(Resource(ns, T, "labeled/app1", labels={"app": "app1", "frozen": "", "weight": "9"}))
    state.create(Resource(ns, T, "labeled/app2", labels={"app": "app2", "frozen": "", "weight": "20"}))
    state.create(Resource(ns, T, "labeled/app3", labels={"app": "app3"}))
    assert state.get(ns, T, "labeled/app1").metadata.labels["app"] == "app1"

    def query(labels) -> list[str]:
        return [id.removeprefix("labeled/") for id in ids(state.list(ns, T, labels=labels))]

    assert query("frozen") == ["app1", "app2"]
    assert query("frozen,app=app2") == ["app2"]
    assert query("frozen,app=app3") == []
    assert query("app=app3") == ["app3"]
    assert query("app in (app2, app3)") == ["app2", "app3"]
    assert query("weight<12") == ["app1"]  # numeric: 9 < 12 (as strings "9" > "12")
    assert query("weight<=20") == ["app1", "app2"]
    assert query("app<=app2") == ["app1", "app2"]
    assert query("app<app2") == ["app1"]
    assert query(["app=app2", "app=app3"]) == ["app2", "app3"]
    # Each term negated.
    assert query("app!=app2") == ["app1", "app3"]
    assert query("!frozen") == ["app3"]
    assert query("app notin (app2, app3)") == ["app1"]
    assert query("weight>=12") == ["app2"]


def test_id_query(state, ns) -> None:
    for i in range(10):
        state.create(Resource(ns, T, f"idquery/path{i}"))
    state.create(Resource(ns, T, "other/path3"))
    found = state.list(ns, T, id_regex=r"^idquery/.+[2-4]$")
    assert ids(found) == ["idquery/path2", "idquery/path3", "idquery/path4"]
    assert ids(state.list(ns, T, id_regex="path3")) == ["idquery/path3", "other/path3"]


def wait_until(watch, predicate):
    """The first event from ``watch`` that satisfies ``predicate`` (5 s per event)."""
    while True:
        event = watch.next(timeout=5)
        assert event is not None, "timed out waiting for an event"
        if predicate(event):
            return event


def test_teardown_and_destroy_with_a_finalizer_holder(state, ns) -> None:
    """A holder removes its finalizer once the resource is tearing down; the
    destroyer waits for that on a watch and then destroys."""
    holder = state.watch_kind(ns, T, bootstrap=True)
    state.create(Resource(ns, T, "tmp/4"))
    state.add_finalizer(ns, T, "tmp/4", "A")
    waiter = state.watch(ns, T, "tmp/4")

    def releases(event) -> bool:
        md = event.resource and event.resource.metadata
        return bool(md) and md.phase == "tearing-down" and "A" in md.finalizers

    def hold() -> None:
        event = wait_until(holder, releases)
        state.remove_finalizer(ns, T, event.resource.metadata.id, "A")

    with ThreadPoolExecutor(max_workers=1) as pool:
        held = pool.submit(hold)
        assert state.teardown(ns, T, "tmp/4") is False
        wait_until(waiter, lambda ev: not ev.resource.metadata.finalizers)
        held.result()
    state.destroy(ns, T, "tmp/4")
    with pytest.raises(NotFoundError):
        state.get(ns, T, "tmp/4")


def test_modify(state, ns) -> None:
    p1 = state.modify(ns, T, "var/run/modify", lambda spec: spec.update(foo="bar"))
    assert (p1.spec, p1.metadata.owner, p1.metadata.version) == ({"foo": "bar"}, "", 1)
    assert state.get(ns, T, "var/run/modify").spec == {"foo": "bar"}

    p1 = state.modify(ns, T, "var/run/modify", lambda spec: spec.clear())
    assert (p1.spec, p1.metadata.version) == ({}, 2)
    assert state.get(ns, T, "var/run/modify").spec == {}

    def fail(spec: dict) -> None:
        spec["foo"] = "never written"
        raise ValueError("modify error")

    with pytest.raises(ValueError, match="modify error"):
        state.modify(ns, T, "var/run/modify", fail)
    assert state.get(ns, T, "var/run/modify").metadata.version == 2

    state.teardown(ns, T, "var/run/modify")
    with pytest.raises(PhaseConflictError):
        state.modify(ns, T, "var/run/modify", lambda spec: spec.update(foo="bar"))
    assert state.get(ns, T, "var/run/modify").spec == {}


@pytest.mark.any_owner
def test_modify_with_owner(state, ns) -> None:
    p1 = state.modify(ns, T, "var/run/modify/owned", lambda spec: None, owner="owner")
    assert (p1.spec, p1.metadata.owner) == ({}, "owner")
    p1 = state.modify(ns, T, "var/run/modify/owned", lambda spec: spec.update(foo="bar"), owner="owner")
    assert (p1.spec, p1.metadata.owner) == ({"foo": "bar"}, "owner")
    with pytest.raises(OwnerConflictError):
        state.modify(ns, T, "var/run/modify/owned", lambda spec: spec.update(foo="baz"))
    assert state.get(ns, T, "var/run/modify/owned").spec == {"foo": "bar"}
