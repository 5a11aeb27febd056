"""The implementations the state conformance suite runs against.

Every test in this directory takes a ``state`` fixture and uses only the
public verbs of DESIGN 2a, so one suite checks every implementation. To add
one (the wire client, say), add an entry to :data:`IMPLEMENTATIONS`: a
context manager that is given a fresh temporary directory and yields an
object with the State API verbs, cleaning up when the test ends.

An implementation through which a caller can write only as itself (a wire
client, whose identity is its owner) sets ``any_owner=False``; tests marked
``any_owner`` (those that write as several owners) are then skipped for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import pytest

from cosihost.state import InMemoryState, SqliteStore
from cosihost.state.etcd import EtcdConfig, EtcdState
from cosihost.testing.etcdcluster import EtcdCluster
from cosihost.testing import SupervisorProcess

#: Every namespace the conformance tests write to; the SQLite implementation
#: declares them all persistent so that every write goes through the store.
NAMESPACES = ("default", "other")


@dataclasses.dataclass(frozen=True)
class Implementation:
    open: Callable[[Path], ContextManager[Any]]
    #: May a caller write as any owner (True in process), or only as itself?
    any_owner: bool = True
    #: Opened on the session's shared supervisor instead of a temporary dir;
    #: tests then get namespaces no other test uses.
    shared: bool = False
    #: A session fixture to open it on instead of a temporary dir.
    on: str | None = None
    #: Put before the tests' namespace names (to land in the backend under test).
    ns_prefix: str = ""


@contextlib.contextmanager
def _memory(tmp_path: Path) -> Iterator[InMemoryState]:
    yield InMemoryState()


@contextlib.contextmanager
def _sqlite(tmp_path: Path) -> Iterator[InMemoryState]:
    store = SqliteStore.in_dir(tmp_path / "state", namespaces=NAMESPACES)
    try:
        yield InMemoryState(store=store)
    finally:
        store.close()


@contextlib.contextmanager
def _wire(supervisor: SupervisorProcess, *, admin: bool) -> Iterator[Any]:
    """A client of a real supervisor (no controllers): the admin may write as
    any owner; a user client writes only as "" (itself)."""
    with supervisor.client(admin=admin) as client:
        yield client


@contextlib.contextmanager
def _etcd(cluster: EtcdCluster) -> Iterator[EtcdState]:
    """A mirror of a prefix no other test uses, in the session's 3-member cluster."""
    st = EtcdState(EtcdConfig(endpoints=tuple(cluster.endpoints), prefix=f"/conformance-{uuid.uuid4().hex[:8]}"))
    try:
        yield st
    finally:
        st.close()


IMPLEMENTATIONS: dict[str, Implementation] = {
    "memory": Implementation(_memory),
    "sqlite": Implementation(_sqlite),
    "wire": Implementation(lambda sup: _wire(sup, admin=True), shared=True),
    "wire-user": Implementation(lambda sup: _wire(sup, admin=False), any_owner=False, shared=True),
    "etcd": Implementation(_etcd, on="etcd_fleet"),
    "wire-etcd": Implementation(lambda sup: _wire(sup, admin=True), on="etcd_supervisor", shared=True,
                                ns_prefix="etcd-"),
}


@pytest.fixture(scope="session")
def shared_supervisor() -> Iterator[SupervisorProcess]:
    """One supervisor for every wire test (starting one per test costs more
    than the test); tests then use namespaces of their own (see ``ns``)."""
    sup = SupervisorProcess()
    try:
        sup.start()
        yield sup
    finally:
        sup.cleanup()


@pytest.fixture(scope="session")
def etcd_supervisor(etcd_fleet: EtcdCluster) -> Iterator[SupervisorProcess]:
    """A supervisor whose namespaces ``etcd-*`` are kept in the session's etcd."""
    endpoints = ", ".join(f'"{e}"' for e in etcd_fleet.endpoints)
    sup = SupervisorProcess(config=f"""
        [namespaces."etcd-*"]
        backend = "etcd"
        endpoints = [{endpoints}]
        prefix = "/wire-{uuid.uuid4().hex[:8]}"
        """)
    try:
        sup.start()
        yield sup
    finally:
        sup.cleanup()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "any_owner: the test writes as several owners (skipped where a caller "
        "can only write as itself)")


@pytest.fixture(params=list(IMPLEMENTATIONS))
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    impl = IMPLEMENTATIONS[request.param]
    if request.node.get_closest_marker("any_owner") and not impl.any_owner:
        pytest.skip(f"{request.param}: a caller writes only as itself")
    where = tmp_path
    if impl.shared or impl.on:
        where = request.getfixturevalue(impl.on or "shared_supervisor")
    with impl.open(where) as st:
        yield st


def _namespace(request: pytest.FixtureRequest, base: str) -> str:
    callspec = getattr(request.node, "callspec", None)
    impl = IMPLEMENTATIONS.get(callspec.params.get("state", "")) if callspec else None
    if impl is None:
        return base
    return f"{impl.ns_prefix}{base}-{uuid.uuid4().hex[:8]}" if impl.shared else f"{impl.ns_prefix}{base}"


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    return _namespace(request, NAMESPACES[0])


@pytest.fixture
def other_ns(request: pytest.FixtureRequest) -> str:
    return _namespace(request, NAMESPACES[1])


def expect_event(watch: Any, kind: str, id: str | None = None) -> Any:
    """The watch's next event, which must come within 5 s and be of ``kind``
    (and about ``id``, when given)."""
    event = watch.next(timeout=5)
    assert event is not None, f"timed out waiting for a {kind!r} event"
    assert event.kind == kind, f"expected {kind!r}, got {event.kind!r}: {event}"
    if id is not None:
        assert event.resource is not None and event.resource.metadata.id == id, event
    return event


@pytest.fixture
def expect() -> Callable[..., Any]:
    """:func:`expect_event`, for test modules (which cannot import conftest)."""
    return expect_event
