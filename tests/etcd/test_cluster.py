"""The etcd_cluster fixture itself: replication, leader failover, quorum loss
and recovery, all through etcdctl against real etcd processes."""

from __future__ import annotations

import os
import subprocess

import pytest

from cosihost.testing.etcdcluster import EtcdCluster, EtcdError, require_etcd

pytestmark = pytest.mark.timeout(60)


def get(cluster: EtcdCluster, key: str, endpoint: str) -> str:
    # Linearizable read (the default), so it reflects every committed write.
    out = cluster.etcdctl("get", key, "--print-value-only",
                          endpoints=[endpoint])
    return out.stdout.strip()


def test_cluster_is_three_healthy_members(etcd_cluster: EtcdCluster) -> None:
    assert len(etcd_cluster.members) == 3
    assert len(set(etcd_cluster.endpoints)) == 3
    assert all(m.healthy() and m.pid for m in etcd_cluster.members)
    out = etcd_cluster.etcdctl("member", "list", "-w", "simple")
    names = {line.split(", ")[2] for line in out.stdout.splitlines()}
    assert names == {m.name for m in etcd_cluster.members}
    assert etcd_cluster.wait_leader() in etcd_cluster.members


def test_put_on_one_member_is_read_from_another(
        etcd_cluster: EtcdCluster) -> None:
    a, b, c = etcd_cluster.members
    etcd_cluster.etcdctl("put", "/t/k", "v1", endpoints=[a.client_url])
    assert get(etcd_cluster, "/t/k", b.client_url) == "v1"
    assert get(etcd_cluster, "/t/k", c.client_url) == "v1"


def test_stopping_the_leader_elects_another_and_writes_resume(
        etcd_cluster: EtcdCluster) -> None:
    old = etcd_cluster.wait_leader()
    etcd_cluster.etcdctl("put", "/t/before", "1")
    old.stop()  # SIGKILL: a crash, no leadership hand-over
    assert not old.running and old.pid is None
    new = etcd_cluster.wait_leader(not_=old)
    assert new is not old and new.running
    rest = [m.client_url for m in etcd_cluster.running()]
    etcd_cluster.etcdctl("put", "/t/after", "2", endpoints=rest)
    assert get(etcd_cluster, "/t/before", rest[0]) == "1"
    assert get(etcd_cluster, "/t/after", rest[1]) == "2"
    # The old leader rejoins from its data dir and catches up.
    old.start()
    etcd_cluster.wait_healthy([old])
    assert get(etcd_cluster, "/t/after", old.client_url) == "2"


def test_quorum_loss_makes_writes_time_out_until_restored(
        etcd_cluster: EtcdCluster) -> None:
    a, b, c = etcd_cluster.members
    etcd_cluster.etcdctl("put", "/t/q", "before")
    b.stop()
    c.stop()
    assert etcd_cluster.running() == [a]
    failed = etcd_cluster.etcdctl("put", "/t/q", "lost", timeout=2.0,
                                  endpoints=[a.client_url], check=False)
    assert failed.returncode != 0
    assert "deadline exceeded" in failed.stderr or "timed out" in failed.stderr
    b.start()
    c.start()
    etcd_cluster.wait_healthy()
    etcd_cluster.etcdctl("put", "/t/q", "after", endpoints=[a.client_url])
    assert get(etcd_cluster, "/t/q", c.client_url) == "after"


def test_teardown_leaves_no_process(tmp_path) -> None:
    require_etcd()
    cluster = EtcdCluster(tmp_path / "etcd")
    cluster.root.mkdir()
    try:
        cluster.start()
        pids = [m.pid for m in cluster.members]
        assert all(pids)
    finally:
        cluster.cleanup()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not any(m.data_dir.exists() for m in cluster.members)


def test_etcdctl_errors_are_raised(etcd_cluster: EtcdCluster) -> None:
    with pytest.raises(EtcdError):
        etcd_cluster.etcdctl("no-such-command")
    assert isinstance(etcd_cluster.etcdctl("endpoint", "health"),
                      subprocess.CompletedProcess)
