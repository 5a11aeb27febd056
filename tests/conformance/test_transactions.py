"""Transactions: the writes in ``with state.transaction()`` apply together,
all or nothing, on every implementation."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from cosihost import ConflictError, InvalidRequestError, NotFoundError, OwnerConflictError, Resource
from cosihost.state.txn import MAX_OPS

T = "TxnItems.test.cosihost.dev"
U = "TxnOthers.test.cosihost.dev"


def ids(resources: list[Resource]) -> list[str]:
    return [r.metadata.id for r in resources]


def test_writes_apply_together_and_return_what_they_wrote(state: Any, ns: str) -> None:
    state.create(Resource(ns, T, "old", {"n": 0}))
    state.create(Resource(ns, U, "gone", {}))
    with state.transaction() as txn:
        made = txn.create(Resource(ns, T, "a", {"n": 1}))
        assert made.metadata.version == 1 and made.spec == {"n": 1}
        state.create(Resource(ns, U, "b", {"n": 2}))            # on the state, same thread: recorded too
        changed = txn.modify(ns, T, "old", lambda s: s.update(n=5))
        assert changed.metadata.version == 2
        txn.destroy(ns, U, "gone")
        assert ids(state.list(ns, T)) == ["old"]                 # nothing applied yet
    assert [(r.metadata.id, r.metadata.version, r.spec) for r in state.list(ns, T)] == [
        ("a", 1, {"n": 1}), ("old", 2, {"n": 5})]
    assert ids(state.list(ns, U)) == ["b"]


def test_a_failing_operation_leaves_no_trace(state: Any, ns: str) -> None:
    kept = state.create(Resource(ns, T, "kept", {"n": 1}))
    stale = state.get(ns, T, "kept")
    fresh = state.get(ns, T, "kept")
    fresh.spec = {"n": 2}
    state.update(fresh)
    with pytest.raises(ConflictError, match="transaction operation 2"):
        with state.transaction() as txn:
            txn.create(Resource(ns, T, "new", {}))
            txn.update(stale)                                    # version 1, stored 2
    assert ids(state.list(ns, T)) == ["kept"]
    assert state.get(ns, T, "kept").metadata.version == kept.metadata.version + 1


def test_an_exception_in_the_block_applies_nothing(state: Any, ns: str) -> None:
    with pytest.raises(RuntimeError, match="changed my mind"):
        with state.transaction() as txn:
            txn.create(Resource(ns, T, "a", {}))
            raise RuntimeError("changed my mind")
    assert state.list(ns, T) == []


def test_a_key_written_twice_is_stored_once_with_one_event(state: Any, ns: str) -> None:
    events = state.watch_kind(ns, T)
    with state.transaction() as txn:
        txn.create(Resource(ns, T, "a", {"n": 1}))
        txn.modify(ns, T, "a", lambda s: s.update(n=2))
        txn.create(Resource(ns, T, "tmp", {}))
        txn.destroy(ns, T, "tmp")
        txn.create(Resource(ns, T, "b", {}))
    seen = [(e.kind, e.resource.metadata.id, e.resource.metadata.version) for e in _take(events, 2)]
    assert seen == [("created", "a", 2), ("created", "b", 1)]
    assert state.get(ns, T, "a").spec == {"n": 2}
    with pytest.raises(NotFoundError):
        state.get(ns, T, "tmp")


def _take(events: Any, n: int) -> list[Any]:
    out = []
    for event in events:
        out.append(event)
        if len(out) == n:
            break
    return out


def test_finalizers_and_teardown_in_a_transaction(state: Any, ns: str) -> None:
    state.create(Resource(ns, T, "held", {}))
    with state.transaction() as txn:
        txn.add_finalizer(ns, T, "held", "keeper")
        assert txn.teardown(ns, T, "held") is False             # the finalizer it just added
        txn.remove_finalizer(ns, T, "held", "keeper")
    res = state.get(ns, T, "held")
    assert res.metadata.phase == "tearing-down" and res.metadata.finalizers == []
    with state.transaction() as txn:
        txn.destroy(ns, T, "held")
    assert state.list(ns, T) == []


@pytest.mark.any_owner
def test_every_rule_holds_inside_a_transaction(state: Any, ns: str) -> None:
    state.create(Resource(ns, T, "theirs", {}), owner="them")
    with pytest.raises(OwnerConflictError):
        with state.transaction() as txn:
            txn.create(Resource(ns, T, "mine", {}), owner="me")
            txn.destroy(ns, T, "theirs", owner="me")
    assert ids(state.list(ns, T)) == ["theirs"]


def test_bad_transactions_are_refused_clearly(state: Any, ns: str) -> None:
    with pytest.raises(InvalidRequestError, match="already open"):
        with state.transaction():
            with state.transaction():
                pass
    with pytest.raises(InvalidRequestError, match="id must not be empty"):
        with state.transaction() as txn:
            txn.destroy(ns, T, "")
    with pytest.raises(InvalidRequestError, match=f"more than {MAX_OPS}"):
        with state.transaction() as txn:
            for i in range(MAX_OPS + 1):
                txn.create(Resource(ns, T, f"r{i}", {}))
    assert state.list(ns, T) == []


def test_racing_transactions_one_wins_the_other_is_refused(state: Any, ns: str) -> None:
    state.create(Resource(ns, T, "counter", {"n": 0}))
    read = state.get(ns, T, "counter")
    outcomes: list[str] = []
    start = threading.Barrier(2)

    def racer(name: str) -> None:
        mine = Resource(ns, T, "counter", {"n": name})
        mine.metadata.version = read.metadata.version
        start.wait()
        try:
            with state.transaction() as txn:
                txn.update(mine)
                txn.create(Resource(ns, U, name, {}))
            outcomes.append("won")
        except ConflictError:
            outcomes.append("lost")

    threads = [threading.Thread(target=racer, args=(name,)) for name in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["lost", "won"]
    winner = state.get(ns, T, "counter").spec["n"]
    assert ids(state.list(ns, U)) == [winner]


def test_teardown_and_destroy(state: Any, ns: str) -> None:
    state.create(Resource(ns, T, "free", {}))
    assert state.teardown_and_destroy(ns, T, "free") is True
    assert state.list(ns, T) == []
    state.create(Resource(ns, T, "held", {}))
    state.add_finalizer(ns, T, "held", "keeper")
    assert state.teardown_and_destroy(ns, T, "held") is False
    held = state.get(ns, T, "held")
    assert held.metadata.phase == "tearing-down" and held.metadata.finalizers == ["keeper"]
    state.remove_finalizer(ns, T, "held", "keeper")
    assert state.teardown_and_destroy(ns, T, "held") is True
    with pytest.raises(NotFoundError):
        state.teardown_and_destroy(ns, T, "never")
    with pytest.raises(InvalidRequestError, match="not inside another"):
        with state.transaction():
            state.teardown_and_destroy(ns, T, "x")


def test_modify_with_an_expected_phase(state: Any, ns: str) -> None:
    """COSI's WithExpectedPhase / WithExpectedPhaseAny: a tearing-down resource
    can be modified when the caller says it expects that phase (or any)."""
    from cosihost import PhaseConflictError
    state.create(Resource(ns, T, "going", {"n": 0}))
    state.add_finalizer(ns, T, "going", "keeper")
    state.teardown(ns, T, "going")
    with pytest.raises(PhaseConflictError):
        state.modify(ns, T, "going", lambda s: s.update(n=1))
    res = state.modify(ns, T, "going", lambda s: s.update(n=1), expected_phase="tearing-down")
    assert res.spec == {"n": 1} and res.metadata.phase == "tearing-down"
    assert state.modify(ns, T, "going", lambda s: s.update(n=2), expected_phase=None).spec == {"n": 2}
    with pytest.raises(PhaseConflictError):
        state.create(Resource(ns, T, "live", {}))
        state.modify(ns, T, "live", lambda s: s.update(n=1), expected_phase="tearing-down")


def test_watch_for_conditions(state: Any, ns: str) -> None:
    """COSI's WatchFor: wait for a phase, for finalizers to go, for a destroy."""
    state.create(Resource(ns, T, "w", {"n": 0}))
    assert state.watch_for(ns, T, "w", timeout=5).spec == {"n": 0}      # exists: at once
    state.add_finalizer(ns, T, "w", "keeper")
    with pytest.raises(TimeoutError):
        state.watch_for(ns, T, "w", finalizers_empty=True, timeout=0.2)
    state.teardown(ns, T, "w")
    going = state.watch_for(ns, T, "w", phase="tearing-down", timeout=5)
    assert going.metadata.finalizers == ["keeper"]
    state.remove_finalizer(ns, T, "w", "keeper")
    free = state.watch_for(ns, T, "w", phase="tearing-down", finalizers_empty=True, timeout=5)
    assert free.metadata.finalizers == []
    state.destroy(ns, T, "w")
    assert state.watch_for(ns, T, "w", event_types=["destroyed"], timeout=5).metadata.id == "w"
    assert state.watch_for(ns, T, "w", condition=lambda r: False, event_types=["destroyed"], timeout=5)
    with pytest.raises(InvalidRequestError, match="event_types"):
        state.watch_for(ns, T, "w", event_types=["exploded"], timeout=1)
