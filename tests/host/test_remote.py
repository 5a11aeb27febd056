"""Remote access over loopback TCP with CURVE: each key acts as its role,
unknown keys and plain-text peers never get in."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import zmq

from cosihost import AccessDeniedError, Client, Resource, UnavailableError
from cosihost.keys import ClientKey, KeyPair
from cosihost.testing import wait_for

from test_supervision import FAST, RELAY

THINGS = "RemoteThings.test.cosihost.dev"
ROLES = ("read", "write", "admin")


def _two_free_ports() -> int:
    """A port whose next one is free too (requests, then events)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return int(port)
    raise RuntimeError("no two free ports in a row")


@pytest.fixture
def remote(supervisor_factory, tmp_path: Path) -> Iterator[tuple[Any, str, dict[str, Path]]]:
    """A supervisor listening on loopback with a key of each role, and the key files."""
    port = _two_free_ports()
    pairs = {role: KeyPair.new() for role in ROLES}
    clients = "".join(f'[remote.clients.{role}er]\nkey = "{pair.public}"\nrole = "{role}"\n'
                      for role, pair in pairs.items())
    sup = supervisor_factory(config=FAST + f'[remote]\nlisten = "tcp://127.0.0.1:{port}"\n' + clients,
                             controllers={"relay": RELAY})
    server = (sup.state_dir / "remote" / "server.key").read_text()
    assert oct((sup.state_dir / "remote" / "server.key").stat().st_mode & 0o777) == "0o600"
    server_public = server.split('public = "')[1].split('"')[0]
    files = {}
    for role, pair in pairs.items():
        files[role] = tmp_path / f"{role}.key"
        ClientKey(pair, server_public).save(files[role])
    files["stranger"] = tmp_path / "stranger.key"
    ClientKey(KeyPair.new(), server_public).save(files["stranger"])
    yield sup, f"tcp://127.0.0.1:{port}", files


def test_a_read_key_reads_and_watches_but_cannot_write(remote) -> None:
    sup, url, keys = remote
    with Client(remote=url, key=keys["read"]) as c:
        assert c.call("ping")["ready"]
        events = c.watch_kind("remote", THINGS)
        with sup.client() as local:
            local.create(Resource("remote", THINGS, "seen", {"n": 1}))
        first = next(iter(events))
        assert (first.kind, first.resource.metadata.id) == ("created", "seen")
        assert [r.metadata.id for r in c.list("remote", THINGS)] == ["seen"]
        with pytest.raises(AccessDeniedError, match="read role"):
            c.create(Resource("remote", THINGS, "mine", {}))
        with pytest.raises(AccessDeniedError, match="read role"):
            c.call("restart", name="test.Relay")


def test_a_write_key_writes_as_a_user_but_cannot_restart(remote) -> None:
    sup, url, keys = remote
    with Client(remote=url, key=keys["write"]) as c:
        made = c.create(Resource("remote", THINGS, "written", {}))
        assert made.metadata.owner == ""
        with pytest.raises(AccessDeniedError, match="write role"):
            c.call("restart", name="test.Relay")


def test_an_admin_key_restarts_a_controller(remote) -> None:
    sup, url, keys = remote
    before = sup.controller_pid("test.Relay")
    with Client(remote=url, key=keys["admin"], timeout=15) as c:
        c.call("restart", name="test.Relay")
    wait_for(lambda: sup.controller_pid("test.Relay") != before, message="a new process")


def test_unknown_keys_and_plain_peers_are_refused(remote) -> None:
    sup, url, keys = remote
    with Client(remote=url, key=keys["stranger"], timeout=1.0, retries=0) as c:
        with pytest.raises(UnavailableError):
            c.call("ping")
    ctx = zmq.Context()
    try:
        plain = ctx.socket(zmq.REQ)
        plain.setsockopt(zmq.LINGER, 0)
        plain.connect(url)
        plain.send(b"\x80")
        assert plain.poll(1000) == 0   # no CURVE handshake: no connection, no answer
        plain.close()
    finally:
        ctx.term()
    assert sup.ping()["ready"]


def test_the_cli_talks_to_a_remote_supervisor(remote) -> None:
    sup, url, keys = remote
    with sup.client() as local:
        local.create(Resource("remote", THINGS, "listed", {}))
    env = {k: v for k, v in os.environ.items() if k != "COSIHOST_RUNTIME_DIR"}
    done = subprocess.run([sys.executable, "-m", "cosihost", "--remote", url, "--key", str(keys["read"]),
                           "get", THINGS, "-n", "remote", "-o", "json"],
                          capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    assert '"listed"' in done.stdout
    refused = subprocess.run([sys.executable, "-m", "cosihost", "--remote", url, "--key", str(keys["read"]),
                              "restart", "test.Relay"], capture_output=True, text=True, timeout=30, env=env)
    assert refused.returncode == 1 and "read role" in refused.stderr and len(refused.stderr.splitlines()) == 1


def test_keys_commands_make_what_remote_access_needs(remote, tmp_path: Path) -> None:
    sup, url, _keys = remote
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cosihost", "keys", *args], capture_output=True, text=True,
                              timeout=30)
    server = cli("server", "--state-dir", str(sup.state_dir))
    assert server.returncode == 0 and server.stdout.strip() in (sup.state_dir / "remote" / "server.key").read_text()
    made = cli("new", str(tmp_path / "new.key"), "--server", server.stdout.strip())
    assert made.returncode == 0
    key = ClientKey.load(tmp_path / "new.key")
    assert key.pair.public == made.stdout.strip() and key.server == server.stdout.strip()
    assert oct((tmp_path / "new.key").stat().st_mode & 0o777) == "0o600"
    again = cli("new", str(tmp_path / "new.key"), "--server", server.stdout.strip())
    assert again.returncode == 1 and "never overwritten" in again.stderr
