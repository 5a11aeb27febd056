"""Shared fixtures: real supervisors in child processes, always cleaned up."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from cosihost.testing import SupervisorProcess
from cosihost.testing.etcdcluster import EtcdCluster, require_etcd


@pytest.fixture(scope="session")
def etcd_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One 3-member etcd cluster on loopback for the tests that only read and
    write (each under a key prefix of its own); tests that stop members
    start their own with ``etcd_cluster``. Skipped when etcd is missing."""
    require_etcd()
    root = tmp_path_factory.mktemp("etcd-fleet")
    cluster = EtcdCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def supervisor_factory() -> Iterator[Callable[..., SupervisorProcess]]:
    """Make supervisors (``start=False`` to start them yourself); every one
    is stopped and its controller processes killed when the test ends."""
    made: list[SupervisorProcess] = []

    def make(*, start: bool = True, **kwargs: Any) -> SupervisorProcess:
        sup = SupervisorProcess(**kwargs)
        made.append(sup)
        return sup.start() if start else sup

    yield make
    for sup in made:
        sup.cleanup()
