"""The ``etcd_cluster`` fixture: a healthy 3-member etcd cluster on
127.0.0.1 for one test, torn down (every process killed, data dirs removed)
when it ends; skipped with the reason when etcd/etcdctl is missing.  The
machinery is in ``etcdcluster.py`` beside this file."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from cosihost.testing.etcdcluster import EtcdCluster, require_etcd


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A healthy 3-member etcd cluster on 127.0.0.1 for one test."""
    require_etcd()
    cluster = EtcdCluster(tmp_path / "etcd")
    cluster.root.mkdir(parents=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()
