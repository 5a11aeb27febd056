"""Supervisors with namespaces in etcd: the config, the keys in etcd, and two
hosts (two supervisors with their own runtime and state folders) sharing
one etcd namespace, with a controller chain that spans them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import uuid

import msgpack
import pytest

from cosihost import NotFoundError, Resource
from cosihost.testing import wait_for
from cosihost.testing.conformance import (INT, INT_TO_STR, SENTENCE, STR, STR_TO_SENTENCE, int_resource,
                                          teardown_and_wait, values, wait_values)


@pytest.fixture
def prefix() -> str:
    return f"/fleet-{uuid.uuid4().hex[:8]}"


def test_etcd_namespace_is_kept_in_etcd_and_others_are_not(etcd_fleet, supervisor_factory, prefix):
    sup = supervisor_factory(config=etcd_fleet.namespace_config(prefix))
    with sup.client(admin=True) as c:
        c.create(Resource("fleet", "Notes", "a/b", {"text": "shared"}), owner="ops")
        c.create(Resource("default", "Notes", "local", {"text": "mine"}))
        stored = etcd_fleet.keys(prefix)
        assert list(stored) == [f"{prefix}/fleet/Notes/a%2Fb"]
        fields = msgpack.unpackb(stored[f"{prefix}/fleet/Notes/a%2Fb"], raw=False)
        assert "shared" in str(fields) and "ops" in fields
        assert c.get("fleet", "Notes", "a/b").metadata.owner == "ops"


def run_with_config(tmp_path, config: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(config))
    return subprocess.run([sys.executable, "-m", "cosihost", "run", "--config", str(path),
                           "--runtime-dir", str(tmp_path / "run"), "--state-dir", str(tmp_path / "state"),
                           "--controllers", str(tmp_path)], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("table, expected", [
    ('backend = "etcd"\nendpoints = []', "endpoints must be a non-empty list"),
    ('backend = "etcd"\nendpoints = ["127.0.0.1:9"]\ncert_file = "c.pem"', "cert_file and key_file go together"),
    ('backend = "etcd"\nendpoints = ["127.0.0.1:9"]\npersistent = true', "drop persistent"),
    ('backend = "etcd"\nendpoint = ["127.0.0.1:9"]', "unknown key 'endpoint'"),
    ('backend = "zookeeper"', "unknown backend 'zookeeper'"),
    ('backend = "etcd"\nendpoints = ["127.0.0.1:9"]\ntimeout = "fast"', "timeout must be a number of seconds"),
    ('backend = "etcd"\nendpoints = ["127.0.0.1:9"]\nca_file = 3', "ca_file must be a string"),
])
def test_bad_etcd_config_is_one_clear_line(tmp_path, table, expected):
    result = run_with_config(tmp_path, "[namespaces.fleet]\n" + table + "\n")
    assert result.returncode == 1
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_the_runtime_namespace_cannot_be_put_in_etcd(tmp_path):
    result = run_with_config(tmp_path, """
        [namespaces."run*"]
        backend = "etcd"
        endpoints = ["127.0.0.1:9"]
        """)
    assert result.returncode == 1
    assert "namespace 'runtime' is this host's own" in result.stderr


def test_two_hosts_share_a_namespace_and_a_chain_spans_them(etcd_fleet, supervisor_factory, prefix):
    """Host A turns local Ints into fleet Strs; host B turns fleet Strs into
    its own local Sentences, holding a finalizer on each Str across hosts."""
    config = etcd_fleet.namespace_config(prefix)
    a = supervisor_factory(config=config, controllers={"inttostr": INT_TO_STR.format(src="default", dst="fleet")})
    b = supervisor_factory(config=config,
                           controllers={"strtosentence": STR_TO_SENTENCE.format(src="fleet", dst="default")})
    assert a.runtime_dir != b.runtime_dir and a.state_dir != b.state_dir
    with a.client() as ca, b.client() as cb:
        ca.create(int_resource("default", "one", 1))
        ca.create(int_resource("default", "two", 2))
        wait_values(cb, "default", SENTENCE, {"one": "1 sentence", "two": "2 sentence"})
        # The Strs are A's controller's, held by B's controller's finalizer.
        str_one = cb.get("fleet", STR, "one")
        assert str_one.metadata.owner == "IntToStrController"
        assert str_one.metadata.finalizers == ["StrToSentenceController"]
        assert values(ca, "default", SENTENCE) == {}  # B's outputs stay on B

        ca.modify("default", INT, "one", lambda s: s.update(value=11))
        wait_values(cb, "default", SENTENCE, {"one": "11 sentence", "two": "2 sentence"})

        # Teardown crosses both hosts: A tears the Str down, B lets it go, A destroys it.
        teardown_and_wait(ca, "default", INT, "two")
        wait_values(cb, "default", SENTENCE, {"one": "11 sentence"})
        wait_values(ca, "fleet", STR, {"one": "11"})


def test_access_rules_hold_on_an_etcd_namespace(etcd_fleet, supervisor_factory, prefix):
    config = etcd_fleet.namespace_config(prefix)
    a = supervisor_factory(config=config, controllers={"inttostr": INT_TO_STR.format(src="default", dst="fleet")})
    b = supervisor_factory(config=config)
    with a.client() as ca, b.client(admin=True) as admin_b, b.client() as user_b:
        ca.create(int_resource("default", "one", 1))
        wait_values(admin_b, "fleet", STR, {"one": "1"})
        # An output owned by a controller on host A is not a user's to change on host B.
        res = user_b.get("fleet", STR, "one")
        res.spec = {"value": "forged"}
        with pytest.raises(Exception) as err:
            user_b.update(res)
        assert err.type.__name__ in ("OwnerConflictError", "AccessDeniedError")
        assert ca.get("fleet", STR, "one").spec == {"value": "1"}


def test_restarted_host_catches_up_with_what_changed_while_it_was_down(etcd_fleet, supervisor_factory, prefix):
    config = etcd_fleet.namespace_config(prefix)
    a = supervisor_factory(config=config, controllers={"inttostr": INT_TO_STR.format(src="default", dst="fleet")})
    b = supervisor_factory(config=config,
                           controllers={"strtosentence": STR_TO_SENTENCE.format(src="fleet", dst="default")})
    with a.client() as ca:
        ca.create(int_resource("default", "one", 1))
        with b.client() as cb:
            wait_values(cb, "default", SENTENCE, {"one": "1 sentence"})
        assert b.stop() == 0
        ca.create(int_resource("default", "two", 2))
        ca.modify("default", INT, "one", lambda s: s.update(value=10))
        wait_values(ca, "fleet", STR, {"one": "10", "two": "2"})
        b.start()
        with b.client() as cb:
            # B's Sentences are in memory: rebuilt from the fleet's Strs, both changes seen.
            wait_values(cb, "default", SENTENCE, {"one": "10 sentence", "two": "2 sentence"})
            assert cb.get("fleet", STR, "two").metadata.finalizers == ["StrToSentenceController"]


def test_a_write_from_another_host_reaches_a_watch_as_an_event(etcd_fleet, supervisor_factory, prefix):
    config = etcd_fleet.namespace_config(prefix)
    a = supervisor_factory(config=config)
    b = supervisor_factory(config=config)
    with a.client(admin=True) as ca, b.client() as cb:
        with cb.watch_kind("fleet", "Notes", bootstrap=True) as watch:
            assert watch.next(timeout=5).kind == "bootstrapped"
            ca.create(Resource("fleet", "Notes", "n1", {"v": 1}))
            ev = watch.next(timeout=5)
            assert ev is not None and ev.kind == "created" and ev.resource.spec == {"v": 1}
            ca.destroy("fleet", "Notes", "n1")
            ev = watch.next(timeout=5)
            assert ev is not None and ev.kind == "destroyed"
        with pytest.raises(NotFoundError):
            cb.get("fleet", "Notes", "n1")


def test_two_hosts_racing_on_one_resource_never_both_win(etcd_fleet, supervisor_factory, prefix):
    config = etcd_fleet.namespace_config(prefix)
    a = supervisor_factory(config=config)
    b = supervisor_factory(config=config)
    with a.client(admin=True) as ca, b.client(admin=True) as cb:
        ca.create(Resource("fleet", "Counter", "c", {"n": 0}))
        wait_for(lambda: cb.get("fleet", "Counter", "c"), timeout=10, message="host B to see the counter")
        done: list[int] = []

        def bump(client, n: int) -> None:
            for _ in range(n):
                client.modify("fleet", "Counter", "c", lambda s: s.update(n=s["n"] + 1))
                done.append(1)

        threads = [threading.Thread(target=bump, args=(cl, 25)) for cl in (ca, cb)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(done) == 50
        # Every acknowledged increment counted once: no lost update across hosts.
        wait_for(lambda: ca.get("fleet", "Counter", "c").spec["n"] == 50, timeout=10,
                 message="the counter to reach 50 on host A")
        assert cb.get("fleet", "Counter", "c").spec["n"] == 50
        assert ca.get("fleet", "Counter", "c").metadata.version == 51


def test_a_clients_bookmark_outlives_the_supervisor(etcd_fleet, supervisor_factory, prefix):
    """Over the wire too, a bookmark of an etcd namespace is an etcd revision:
    a client resumes from it after its supervisor restarted (a new epoch)."""
    config = etcd_fleet.namespace_config(prefix)
    a = supervisor_factory(config=config)
    b = supervisor_factory(config=config)
    with a.client(admin=True) as ca, a.client() as reader:
        ca.create(Resource("fleet", "Notes", "one", {"v": 1}))
        with reader.watch_kind("fleet", "Notes", bootstrap=True) as watch:
            assert [watch.next(timeout=5).kind for _ in range(2)] == ["created", "bootstrapped"]
            ca.modify("fleet", "Notes", "one", lambda s: s.update(v=2))
            bookmark = watch.next(timeout=5).bookmark
    epoch = a.ping()["epoch"]
    assert a.stop() == 0
    with b.client(admin=True) as cb:
        cb.modify("fleet", "Notes", "one", lambda s: s.update(v=3))
        cb.create(Resource("fleet", "Notes", "two", {"v": 1}))
        a.start()
        assert a.ping()["epoch"] != epoch
        with a.client() as reader, reader.watch_kind("fleet", "Notes", since=bookmark) as watch:
            got = [watch.next(timeout=5) for _ in range(2)]
            assert [(e.kind, e.resource.metadata.id, e.resource.spec) for e in got] == [
                ("updated", "one", {"v": 3}), ("created", "two", {"v": 1})]
            cb.create(Resource("fleet", "Notes", "three", {}))
            live = watch.next(timeout=5)
            assert (live.kind, live.resource.metadata.id) == ("created", "three")
            assert live.bookmark.startswith(bookmark.rpartition(":")[0] + ":")  # an etcd revision too
