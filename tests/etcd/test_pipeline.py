"""Writes to etcd in flight together (issue 13.5): many writers through a
supervisor all land, one key's writes keep their order, and a no-op costs
no Range when the mirror is known current, but does when it may lag.

Ranges are counted by the connection's own per-method counter (the one
production code keeps), against a real etcd."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from cosihost import Resource
from cosihost.errors import ConflictError
from cosihost.state.etcd import EtcdConfig, EtcdState
from cosihost.state.etcd.pipeline import Outcome
from cosihost.state.txn import Op
from cosihost.testing import wait_for

WRITERS = 12
UPDATES = 15


def _state(fleet: Any, prefix: str, **kwargs: Any) -> EtcdState:
    return EtcdState(EtcdConfig(endpoints=tuple(fleet.endpoints), prefix=prefix), **kwargs)


def test_many_writers_through_a_supervisor_all_land_with_their_versions(etcd_fleet, supervisor_factory):
    prefix = f"/many-{uuid.uuid4().hex[:8]}"
    sup = supervisor_factory(config=etcd_fleet.namespace_config(prefix, namespace="fleet"))
    failed: list[BaseException] = []
    with sup.client(admin=True) as admin:
        admin.create(Resource("fleet", "Shared", "s", {}))
        start = threading.Barrier(WRITERS)

        def writer(k: int) -> None:
            try:
                with sup.client(admin=True) as client:
                    start.wait(10)
                    client.create(Resource("fleet", "T", f"r{k}", {"n": 0}))
                    for n in range(1, UPDATES + 1):
                        client.modify("fleet", "T", f"r{k}", lambda spec, n=n: spec.update(n=n))
                    client.add_finalizer("fleet", "Shared", "s", f"w{k}")  # one key, every writer at once
            except BaseException as exc:
                failed.append(exc)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(WRITERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not failed, failed[0]
        for k in range(WRITERS):
            res = admin.get("fleet", "T", f"r{k}")
            assert (res.spec, res.metadata.version) == ({"n": UPDATES}, UPDATES + 1)
        shared = admin.get("fleet", "Shared", "s")
        assert sorted(shared.metadata.finalizers) == sorted(f"w{k}" for k in range(WRITERS))
        assert shared.metadata.version == WRITERS + 1  # each add landed once, none lost to another
    direct = _state(etcd_fleet, prefix)
    try:  # what etcd holds, read by another host
        assert {r.metadata.id: r.metadata.version for r in direct.list("fleet", "T")} == {
            f"r{k}": UPDATES + 1 for k in range(WRITERS)}
    finally:
        direct.close()


def test_writes_to_one_key_keep_their_order_while_many_are_in_flight(etcd_fleet):
    st = _state(etcd_fleet, f"/order-{uuid.uuid4().hex[:8]}")
    try:
        st.create(Resource("ns", "T", "one", {}))
        for k in range(20):
            st.create(Resource("ns", "Other", f"o{k}", {}))
        threads = threading.active_count()
        finished: list[tuple[str, Outcome]] = []
        all_done = threading.Event()
        lock = threading.Lock()
        total = 60 + 20

        def done(name: str) -> Any:
            def record(out: Outcome) -> None:
                with lock:
                    finished.append((name, out))
                    if len(finished) == total:
                        all_done.set()
            return record

        txns = st._conn.counts["Txn"]
        with st.watch_kind("ns", "T") as watch:
            for k in range(60):  # submitted at once; each needs the one before it in place
                st.submit([Op("add_finalizer", "ns", "T", "one", finalizers=(f"f{k:02d}",))], done(f"f{k:02d}"))
                if k < 20:  # other keys meanwhile: these overlap
                    st.submit([Op("teardown", "ns", "Other", f"o{k}")], done(f"o{k}"))
            assert threading.active_count() <= threads + 1, "not a thread per write"
            assert all_done.wait(30), f"{len(finished)} of {total} finished"
            assert not [out.error for _n, out in finished if out.error is not None]
            mine = [name for name, _out in finished if name.startswith("f")]
            assert mine == [f"f{k:02d}" for k in range(60)], "one key's writes finished out of order"
            seen = [watch.next(timeout=5).resource.metadata.finalizers[-1] for _ in range(60)]
        assert seen == [f"f{k:02d}" for k in range(60)]
        res = st.get("ns", "T", "one")
        assert res.metadata.finalizers == [f"f{k:02d}" for k in range(60)] and res.metadata.version == 61
        assert st._conn.counts["Txn"] - txns == total, "one compare-and-swap each, none lost to another"
        # A long lane of no-ops behind a write in flight: started one after the other, not recursed into.
        noops: list[Outcome] = []
        st.submit([Op("remove_finalizer", "ns", "T", "one", finalizers=("f00",))], noops.append)
        for _ in range(2_000):
            st.submit([Op("remove_finalizer", "ns", "T", "one", finalizers=("f00",))], noops.append)
        wait_for(lambda: len(noops) == 2_001, timeout=30, message="the no-ops to finish")
        assert [out.error for out in noops if out.error is not None] == []
        assert st.get("ns", "T", "one").metadata.finalizers == [f"f{k:02d}" for k in range(1, 60)]
    finally:
        st.close()


def _ranges(st: EtcdState) -> int:
    return st._conn.counts["Range"]


def test_a_no_op_on_a_current_mirror_costs_no_range(etcd_fleet):
    st = _state(etcd_fleet, f"/noop-{uuid.uuid4().hex[:8]}")
    try:
        st.create(Resource("ns", "T", "r", {}))
        st.add_finalizer("ns", "T", "r", "f")
        st.teardown("ns", "T", "r")
        wait_for(st.known_current, timeout=10, message="the mirror to be current")
        ranges, txns = _ranges(st), st._conn.counts["Txn"]
        for _ in range(5):
            assert st.add_finalizer("ns", "T", "r", "f").metadata.finalizers == ["f"]
            assert st.remove_finalizer("ns", "T", "r", "other").metadata.version == 3
            assert st.teardown("ns", "T", "r") is False
        with pytest.raises(ConflictError, match="finalizers pending"):  # refused on the mirror alone too
            st.destroy("ns", "T", "r")
        with st.transaction() as txn:  # a transaction that changes nothing
            txn.add_finalizer("ns", "T", "r", "f")
        assert (_ranges(st), st._conn.counts["Txn"]) == (ranges, txns), "a no-op asked etcd"
    finally:
        st.close()


def test_a_no_op_asks_etcd_when_the_mirror_may_lag(etcd_fleet):
    """This host's watch is held inside revision R (its event hook blocks):
    R is named but not applied, so the mirror is not known current. Another
    host's transaction at R removed the finalizer this host is asked to add:
    the mirror still shows it (a no-op, if believed); etcd's answer does not."""
    prefix = f"/lag-{uuid.uuid4().hex[:8]}"
    entered, release = threading.Event(), threading.Event()

    def hook(namespace: str, type: str, record: Any) -> None:
        if type == "A":  # "A" sorts first: "B" of the same revision is not applied yet
            entered.set()
            release.wait(20)

    st = _state(etcd_fleet, prefix, on_event=hook)
    other = _state(etcd_fleet, prefix)
    try:
        st.create(Resource("ns", "B", "r", {}))
        st.add_finalizer("ns", "B", "r", "f")
        wait_for(lambda: other.get("ns", "B", "r").metadata.finalizers == ["f"], timeout=10,
                 message="the other host to see the finalizer")
        wait_for(st.known_current, timeout=10, message="the mirror to be current")
        with other.transaction() as txn:
            txn.create(Resource("ns", "A", "x", {}))
            txn.remove_finalizer("ns", "B", "r", "f")
        assert entered.wait(10), "the watch did not deliver the other host's transaction"
        wait_for(lambda: not st.known_current(), timeout=10, message="the mirror to know it lags")
        assert st.get("ns", "B", "r").metadata.finalizers == ["f"]  # stale, as the test wants
        ranges = _ranges(st)
        outcome: list[Outcome] = []
        st.submit([Op("add_finalizer", "ns", "B", "r", finalizers=("f",))], outcome.append)
        wait_for(lambda: _ranges(st) == ranges + 1, timeout=10, message="a Range for the lagging mirror")
        release.set()
        wait_for(lambda: bool(outcome), timeout=10, message="the write to finish")
        assert outcome[0].error is None, outcome[0].error
        res = outcome[0].results[0]
        assert res.metadata.finalizers == ["f"] and res.metadata.version == 4, "the add was a real write"
        wait_for(lambda: other.get("ns", "B", "r").metadata.finalizers == ["f"], timeout=10,
                 message="etcd to hold the finalizer again")
        wait_for(st.known_current, timeout=10, message="the mirror to catch up")
        ranges = _ranges(st)
        st.add_finalizer("ns", "B", "r", "f")
        assert _ranges(st) == ranges, "current again: no Range"
    finally:
        release.set()
        st.close()
        other.close()
