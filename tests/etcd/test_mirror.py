"""The mirror against changes made behind its back: several keys in one
revision, a watch that comes back after etcd compacted what it missed, and
reconnections that must not leak threads."""

from __future__ import annotations

import logging
import threading
import uuid

from cosihost import Resource
from cosihost.state.etcd import EtcdConfig, EtcdState
from cosihost.testing import wait_for


def _ids(state: EtcdState, ns: str = "ns", typ: str = "T") -> list[str]:
    return [r.metadata.id for r in state.list(ns, typ)]


def test_every_key_of_a_multi_key_revision_reaches_the_mirror(etcd_fleet):
    prefix = f"/multi-{uuid.uuid4().hex[:8]}"
    st = EtcdState(EtcdConfig(endpoints=tuple(etcd_fleet.endpoints), prefix=prefix))
    try:
        for rid in ("r0", "r1", "r2"):
            st.create(Resource("ns", "T", rid, {}))
        with st.watch_kind("ns", "T") as watch:
            etcd_fleet.etcdctl("del", "--prefix", f"{prefix}/ns/T/")  # three deletes, one revision
            gone = {watch.next(timeout=5).resource.metadata.id for _ in range(3)}
            assert gone == {"r0", "r1", "r2"}
        assert _ids(st) == []
    finally:
        st.close()


def test_a_watch_that_missed_compacted_history_resyncs(etcd_cluster, caplog):
    caplog.set_level(logging.WARNING, logger="cosihost.etcd")
    prefix = f"/resync-{uuid.uuid4().hex[:8]}"
    first = etcd_cluster.members[0]
    # This host talks to one member only, so stopping it cuts the host off.
    st = EtcdState(EtcdConfig(endpoints=(first.client_url,), prefix=prefix, timeout=2))
    other = EtcdState(EtcdConfig(endpoints=tuple(m.client_url for m in etcd_cluster.members[1:]), prefix=prefix))
    try:
        for rid in ("keep", "change", "drop"):
            other.create(Resource("ns", "T", rid, {"v": 0}))
        wait_for(lambda: _ids(st) == ["change", "drop", "keep"], timeout=10, message="the first host to see all")
        threads = threading.active_count()
        with st.watch_kind("ns", "T") as watch:
            for round in range(3):  # reconnections must not leak threads or streams
                first.stop()
                other.modify("ns", "T", "change", lambda s: s.update(v=round + 1))
                first.start()
                etcd_cluster.wait_healthy()
                ev = watch.next(timeout=15)
                assert ev is not None and (ev.kind, ev.resource.spec) == ("updated", {"v": round + 1})
            first.stop()
            other.teardown("ns", "T", "drop")
            other.destroy("ns", "T", "drop")
            other.create(Resource("ns", "T", "new", {}))
            etcd_cluster.etcdctl("compact", "--physical", str(other.applied),
                                 endpoints=[m.client_url for m in etcd_cluster.members[1:]])
            first.start()
            etcd_cluster.wait_healthy()
            seen = {}
            for _ in range(2):
                ev = watch.next(timeout=20)
                assert ev is not None, "no events after the resync"
                seen[ev.resource.metadata.id] = ev.kind
            assert seen == {"drop": "destroyed", "new": "created"}
        assert any("compacted past revision" in r.getMessage() for r in caplog.records), \
            "the watch should have found its revision compacted and resynced"
        assert _ids(st) == ["change", "keep", "new"]
        assert threading.active_count() <= threads + 1, threading.enumerate()
        st.create(Resource("ns", "T", "after", {}))  # and it still writes
        wait_for(lambda: "after" in _ids(other), timeout=10, message="the other host to see the write")
    finally:
        st.close()
        other.close()


def test_resuming_inside_a_multi_key_revision_misses_nothing(etcd_fleet, supervisor_factory):
    """Three resources deleted in one revision: the bookmarks of the first two
    resume before that revision (they come again), the last one's after it."""
    prefix = f"/partial-{uuid.uuid4().hex[:8]}"
    st = EtcdState(EtcdConfig(endpoints=tuple(etcd_fleet.endpoints), prefix=prefix))
    sup = supervisor_factory(config=etcd_fleet.namespace_config(prefix, namespace="ns"))
    try:
        for rid in ("r0", "r1", "r2"):
            st.create(Resource("ns", "T", rid, {}))
        with st.watch_kind("ns", "T", bootstrap=True) as watch:
            assert [watch.next(timeout=5).kind for _ in range(4)][-1] == "bootstrapped"
            etcd_fleet.etcdctl("del", "--prefix", f"{prefix}/ns/T/")
            gone = [watch.next(timeout=5) for _ in range(3)]
        revs = [int(e.bookmark.rpartition(":")[2]) for e in gone]
        assert revs[0] == revs[1] == revs[2] - 1
        with sup.client() as client:
            wait_for(lambda: not client.list("ns", "T"), timeout=10, message="the supervisor to see the deletes")
            for watch_kind in (st.watch_kind, client.watch_kind):  # in process and over the wire
                with watch_kind("ns", "T", since=gone[0].bookmark) as again:
                    assert sorted(again.next(timeout=5).resource.metadata.id for _ in range(3)) == [
                        "r0", "r1", "r2"]
                with watch_kind("ns", "T", since=gone[2].bookmark) as after:
                    assert after.next(timeout=0.3) is None
    finally:
        st.close()
