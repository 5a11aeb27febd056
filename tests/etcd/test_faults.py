"""etcd faults under a running supervisor: the leader stopped, the quorum
lost and restored. Each test has its own 3-member cluster to break."""

from __future__ import annotations

import threading
import uuid

import pytest

from cosihost import Resource, UnavailableError
from cosihost.testing import wait_for
from cosihost.testing.conformance import INT_TO_STR, SENTENCE, STR, STR_TO_SENTENCE, int_resource, wait_values
from cosihost.state.etcd import EtcdConfig, EtcdState


@pytest.fixture
def prefix() -> str:
    return f"/faults-{uuid.uuid4().hex[:8]}"


def test_writes_resume_after_the_leader_is_stopped(etcd_cluster, supervisor_factory, prefix):
    sup = supervisor_factory(config=etcd_cluster.namespace_config(prefix, timeout=10))
    with sup.client(admin=True, timeout=15) as c:
        for i in range(10):
            c.create(Resource("fleet", "W", f"before-{i}", {"i": i}))
        leader = etcd_cluster.leader()
        assert leader is not None
        leader.stop()
        # No waiting for the election: the writes ride through it.
        for i in range(10):
            c.create(Resource("fleet", "W", f"after-{i}", {"i": i}))
        new_leader = etcd_cluster.wait_leader(not_=leader)
        assert new_leader is not leader
        stored = etcd_cluster.keys(prefix)
        for when in ("before", "after"):
            for i in range(10):
                assert f"{prefix}/fleet/W/{when}-{i}" in stored
        assert len(c.list("fleet", "W")) == 20


def test_lost_quorum_fails_writes_clearly_and_restoring_it_converges(etcd_cluster, supervisor_factory, prefix):
    sup = supervisor_factory(config=etcd_cluster.namespace_config(prefix, timeout=4),
                             controllers={"inttostr": INT_TO_STR.format(src="default", dst="fleet")})
    acked: list[str] = []
    with sup.client(admin=True, timeout=10, retries=0) as c:
        for i in range(10):
            c.create(Resource("fleet", "W", f"w{i}", {"i": i}))
            acked.append(f"w{i}")
        c.create(int_resource("default", "one", 1))
        wait_values(c, "fleet", STR, {"one": "1"})

        stopped = etcd_cluster.members[1:]
        for member in stopped:
            member.stop()
        failure: list[BaseException] = []

        def write_during_outage() -> None:
            try:
                c2 = sup.client(admin=True, timeout=10, retries=0)
                with c2:
                    c2.create(Resource("fleet", "W", "during", {}))
                    acked.append("during")
            except BaseException as exc:  # noqa: BLE001 - the test inspects it
                failure.append(exc)

        writer = threading.Thread(target=write_during_outage)
        writer.start()
        # While that write waits on etcd, the supervisor keeps serving everything else.
        c.create(Resource("default", "Local", "x", {"ok": True}))
        assert c.call("ping")["ready"] in (True, False)
        assert writer.is_alive(), "the etcd write should still be waiting for a quorum"
        assert c.get("fleet", "W", "w3").spec == {"i": 3}  # reads are served from the mirror
        # A controller whose output is in etcd fails to write and is retried.
        c.create(int_resource("default", "two", 2))
        writer.join(timeout=30)
        assert not writer.is_alive()
        assert len(failure) == 1 and isinstance(failure[0], UnavailableError), failure
        assert "etcd" in str(failure[0]) and "no member could apply it" in str(failure[0])
        assert "during" not in acked

        for member in stopped:
            member.start()
        etcd_cluster.wait_healthy()
        wait_values(c, "fleet", STR, {"one": "1", "two": "2"}, timeout=30)
        c.create(Resource("fleet", "W", "after", {}))
        acked.append("after")
        # No acknowledged write is lost, in etcd or in the host's view of it.
        stored = etcd_cluster.keys(prefix)
        for rid in acked:
            assert f"{prefix}/fleet/W/{rid}" in stored
        wait_for(lambda: set(acked) <= {r.metadata.id for r in c.list("fleet", "W")}, timeout=10,
                 message="every acknowledged write in the supervisor's view")


def test_state_survives_a_member_restart_and_a_fresh_mirror_agrees(etcd_cluster, prefix):
    config = EtcdConfig(endpoints=tuple(etcd_cluster.endpoints), prefix=prefix, timeout=10)
    st = EtcdState(config)
    try:
        for i in range(20):
            st.create(Resource("ns", "T", str(i), {"i": i}))
        member = etcd_cluster.members[0]
        member.stop()
        for i in range(20, 40):
            st.create(Resource("ns", "T", str(i), {"i": i}))
        member.start()
        etcd_cluster.wait_healthy()
        fresh = EtcdState(config)
        try:
            assert [r.spec for r in fresh.list("ns", "T")] == [r.spec for r in st.list("ns", "T")]
            assert len(fresh.list("ns", "T")) == 40
        finally:
            fresh.close()
    finally:
        st.close()


def test_a_bookmark_outlives_the_host_that_gave_it(etcd_fleet):
    """A watch resumed from a bookmark taken before a restart gets what
    changed since (from etcd's history at that revision), then live events."""
    config = EtcdConfig(endpoints=tuple(etcd_fleet.endpoints), prefix=f"/bookmarks-{uuid.uuid4().hex[:8]}")
    first = EtcdState(config)
    try:
        for rid in ("keep", "change", "drop"):
            first.create(Resource("ns", "T", rid, {"v": 0}, labels={"app": "x"}))
        with first.watch_kind("ns", "T", bootstrap=True) as watch:
            events = [watch.next(timeout=5) for _ in range(4)]
        assert events[-1].kind == "bootstrapped"
        bookmark = events[-1].bookmark
    finally:
        first.close()
    # While no host of ours runs, another writer changes things.
    other = EtcdState(config)
    try:
        other.modify("ns", "T", "change", lambda s: s.update(v=1))
        other.teardown("ns", "T", "drop")
        other.destroy("ns", "T", "drop")
        other.create(Resource("ns", "T", "new", {"v": 2}, labels={"app": "x"}))
        other.create(Resource("ns", "T", "unlabelled", {"v": 3}))
    finally:
        other.close()
    second = EtcdState(config)
    try:
        with second.watch_kind("ns", "T", since=bookmark, labels="app=x") as watch:
            got = [watch.next(timeout=5) for _ in range(3)]
            assert [(e.kind, e.resource.metadata.id) for e in got] == [
                ("destroyed", "drop"), ("updated", "change"), ("created", "new")]
            assert got[1].old.spec == {"v": 0} and got[1].resource.spec == {"v": 1}
            assert watch.next(timeout=0.2) is None  # nothing else changed
            second.modify("ns", "T", "keep", lambda s: s.update(v=9))
            live = watch.next(timeout=5)
            assert (live.kind, live.resource.spec) == ("updated", {"v": 9})
        # Resuming from the middle of the catch-up misses nothing after it
        # ("drop" was destroyed after "change" was updated: it comes again).
        with second.watch_kind("ns", "T", since=got[1].bookmark, labels="app=x") as watch:
            rest = [watch.next(timeout=5) for _ in range(3)]
            assert [(e.kind, e.resource.metadata.id) for e in rest] == [
                ("destroyed", "drop"), ("created", "new"), ("updated", "keep")]
    finally:
        second.close()


def test_a_compacted_bookmark_ends_the_watch_with_a_resync_error(etcd_fleet):
    config = EtcdConfig(endpoints=tuple(etcd_fleet.endpoints), prefix=f"/compact-{uuid.uuid4().hex[:8]}")
    st = EtcdState(config)
    try:
        st.create(Resource("ns", "T", "a", {}))
        with st.watch_kind("ns", "T", bootstrap=True) as watch:
            bookmark = [watch.next(timeout=5) for _ in range(2)][-1].bookmark
        st.create(Resource("ns", "T", "b", {}))
        st.close()
        st = EtcdState(config)  # its history starts after the bookmark: it must ask etcd
        etcd_fleet.etcdctl("compact", "--physical", str(st.applied))
        rev = bookmark.rpartition(":")[2]

        def compacted_on_every_member() -> bool:  # members apply the compaction in their own time
            return all(etcd_fleet.etcdctl("get", "x", f"--rev={rev}", endpoints=[e], check=False).returncode
                       for e in etcd_fleet.endpoints)

        wait_for(compacted_on_every_member, timeout=10, message="the compaction on every member")
        with st.watch_kind("ns", "T", since=bookmark) as watch:
            event = watch.next(timeout=5)
            assert event.kind == "error" and "compacted" in event.error
    finally:
        st.close()


def test_a_host_that_boots_before_etcd_runs_and_catches_up(etcd_cluster, supervisor_factory, prefix):
    """A device may boot before its network: the host runs its local
    namespaces and controllers, the etcd namespace answers "not reached
    yet", and once etcd is up everything converges."""
    seed = EtcdState(EtcdConfig(endpoints=tuple(etcd_cluster.endpoints), prefix=prefix))
    try:
        seed.create(Resource("fleet", STR, "one", {"value": "1"}))
    finally:
        seed.close()
    etcd_cluster.stop()
    sup = supervisor_factory(config=etcd_cluster.namespace_config(prefix, timeout=1),
                             controllers={"strtosentence": STR_TO_SENTENCE.format(src="fleet", dst="default")})
    with sup.client(admin=True, timeout=10) as c:
        c.create(Resource("default", "Local", "x", {}))  # the host serves what it can
        assert c.get("default", "Local", "x").spec == {}
        with pytest.raises(UnavailableError, match="namespace 'fleet' is kept in etcd, not reached yet"):
            c.get("fleet", STR, "one")
        with pytest.raises(UnavailableError, match="not reached yet"):
            c.create(Resource("fleet", STR, "two", {"value": "2"}))
        # The controller is up, waiting for its input, and the host is ready.
        sup.wait_status("StrToSentenceController", lambda st: st["counters"].get("waiting") == 1)
        assert "1 waiting for inputs" in sup.ping()["summary"]
        for member in etcd_cluster.members:
            member.start()
        etcd_cluster.wait_healthy()
        wait_values(c, "default", SENTENCE, {"one": "1 sentence"}, timeout=30)
        c.create(Resource("fleet", STR, "two", {"value": "2"}), owner="IntToStrController")
        wait_values(c, "default", SENTENCE, {"one": "1 sentence", "two": "2 sentence"}, timeout=15)
