"""Real etcd clusters on loopback, for tests of etcd-backed namespaces.

:class:`EtcdCluster` starts ``size`` (3 by default) ``etcd`` processes on
127.0.0.1 with free client and peer ports and data dirs under a folder you
give, and waits (polling each member's ``/health``, with a deadline) until
every member reports healthy. Members can be stopped (SIGKILL: a crash) and
started again; ``cleanup()`` kills every member, waits for it and removes
the data dirs. :func:`require_etcd` skips a test, with the reason, when the
``etcd`` or ``etcdctl`` binary is missing (Debian: ``etcd-server`` and
``etcd-client``). The test suite's ``etcd_cluster`` and ``etcd_fleet``
fixtures are built on it.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional, Sequence


ETCD = shutil.which("etcd")
ETCDCTL = shutil.which("etcdctl")

# Short raft timings: loopback only, and they make elections take well under
# a second instead of several.  fsync stays on (no --unsafe-no-fsync).
HEARTBEAT_MS = 50
ELECTION_MS = 500
START_DEADLINE = 20.0


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together while
    picking, so they differ; a race with another process remains possible
    but is vanishingly rare on a test machine)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class EtcdError(RuntimeError):
    pass


class EtcdMember:
    """One etcd process of the cluster; ``stop()``/``start()`` may be called
    any number of times (the data dir is kept, so a restarted member rejoins
    with its WAL)."""

    def __init__(self, name: str, client_port: int, peer_port: int,
                 data_dir: Path, log_path: Path, initial_cluster: str,
                 token: str) -> None:
        self.name = name
        self.client_url = f"http://127.0.0.1:{client_port}"
        self.peer_url = f"http://127.0.0.1:{peer_port}"
        self.data_dir = data_dir
        self.log_path = log_path
        self._initial_cluster = initial_cluster
        self._token = token
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def __repr__(self) -> str:
        return f"<EtcdMember {self.name} {self.client_url} pid={self.pid}>"

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None and self.running else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def argv(self) -> list[str]:
        assert ETCD is not None
        return [
            ETCD,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self._initial_cluster,
            "--initial-cluster-token", self._token,
            "--initial-cluster-state", "new",
            "--heartbeat-interval", str(HEARTBEAT_MS),
            "--election-timeout", str(ELECTION_MS),
            "--listen-metrics-urls", "",
        ]

    def start(self) -> "EtcdMember":
        if self.running:
            return self
        log = open(self.log_path, "ab")
        try:
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith("ETCD")}
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        finally:
            log.close()
        return self

    def stop(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        """Stop the process: SIGKILL by default (a crash); with SIGTERM it
        is given ``timeout`` seconds and then killed."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        self.proc = None

    def healthy(self, timeout: float = 1.0) -> bool:
        """Whether ``GET /health`` answers ``{"health": "true"}`` (which in
        etcd 3.4 also means the member sees a leader)."""
        if not self.running:
            return False
        try:
            with urllib.request.urlopen(self.client_url + "/health",
                                        timeout=timeout) as resp:
                body = json.loads(resp.read() or b"{}")
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return body.get("health") in ("true", True)

    def status(self, timeout: float = 3.0) -> dict[str, Any]:
        """``etcdctl endpoint status -w json`` for this member alone."""
        out = run_etcdctl([self.client_url], "endpoint", "status", "-w",
                          "json", timeout=timeout)
        data = json.loads(out.stdout)
        status: dict[str, Any] = data[0]["Status"]
        return status

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def run_etcdctl(endpoints: Sequence[str], *args: str, timeout: float = 5.0,
                input: Optional[str] = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``etcdctl`` (API v3) against ``endpoints``; its own
    ``--command-timeout`` is ``timeout``, and the process gets a little more."""
    assert ETCDCTL is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
    env["ETCDCTL_API"] = "3"
    argv = [ETCDCTL, "--endpoints", ",".join(endpoints),
            "--dial-timeout", f"{min(timeout, 2.0)}s",
            "--command-timeout", f"{timeout}s", *args]
    proc = subprocess.run(argv, input=input, capture_output=True, text=True,
                          env=env, timeout=timeout + 5.0)
    if check and proc.returncode != 0:
        raise EtcdError(f"etcdctl {' '.join(args)} failed "
                        f"({proc.returncode}): {proc.stderr.strip()}")
    return proc


class EtcdCluster:
    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        ports = free_ports(2 * size)
        names = [f"m{i}" for i in range(size)]
        initial = ",".join(f"{n}=http://127.0.0.1:{ports[2 * i + 1]}"
                           for i, n in enumerate(names))
        token = f"cosihost-test-{os.getpid()}-{ports[0]}"
        self.members = [
            EtcdMember(n, ports[2 * i], ports[2 * i + 1], root / f"{n}.etcd",
                       root / f"{n}.log", initial, token)
            for i, n in enumerate(names)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def running(self) -> list[EtcdMember]:
        return [m for m in self.members if m.running]

    def start(self) -> "EtcdCluster":
        for m in self.members:
            m.start()
        self.wait_healthy()
        return self

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def cleanup(self) -> None:
        self.stop()
        for m in self.members:
            shutil.rmtree(m.data_dir, ignore_errors=True)

    def wait_healthy(self, members: Optional[Sequence[EtcdMember]] = None,
                     deadline: float = START_DEADLINE) -> None:
        """Poll ``/health`` of ``members`` (default: all running ones) until
        each is healthy, or raise with their log tails at the deadline."""
        members = list(members) if members is not None else self.running()
        end = time.monotonic() + deadline
        while True:
            pending = [m for m in members if not m.healthy()]
            if not pending:
                return
            dead = [m for m in pending if m.proc is None
                    or m.proc.poll() is not None]
            if dead or time.monotonic() >= end:
                why = "exited" if dead else f"not healthy after {deadline}s"
                tails = "\n".join(f"--- {m.name} ({m.log_path}):\n"
                                  f"{m.log_tail()}" for m in (dead or pending))
                raise EtcdError(f"etcd members {why}: "
                                f"{[m.name for m in (dead or pending)]}\n"
                                f"{tails}")
            time.sleep(0.05)

    def leader(self, timeout: float = 3.0) -> Optional[EtcdMember]:
        """The member that the running members agree is leader (from
        ``etcdctl endpoint status -w json``), or None if there is none or
        they disagree."""
        by_id: dict[int, EtcdMember] = {}
        leaders: set[int] = set()
        for m in self.running():
            try:
                st = m.status(timeout=timeout)
            except (EtcdError, subprocess.TimeoutExpired, ValueError,
                    KeyError, IndexError):
                continue
            by_id[int(st["header"]["member_id"])] = m
            leaders.add(int(st.get("leader") or 0))
        if len(leaders) != 1:
            return None
        return by_id.get(leaders.pop())

    def wait_leader(self, deadline: float = 15.0,
                    not_: Optional[EtcdMember] = None) -> EtcdMember:
        """Poll until a leader (other than ``not_``) is agreed on."""
        end = time.monotonic() + deadline
        while True:
            lead = self.leader()
            if lead is not None and lead is not not_:
                return lead
            if time.monotonic() >= end:
                raise EtcdError(f"no leader after {deadline}s")
            time.sleep(0.05)

    def keys(self, prefix: str) -> dict[str, bytes]:
        """Every key under ``prefix/`` and its value, as etcd has them."""
        out = self.etcdctl("get", "--prefix", prefix.rstrip("/") + "/", "-w", "json").stdout
        kvs = json.loads(out).get("kvs") or []
        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]) for kv in kvs}

    def namespace_config(self, prefix: str, *, namespace: str = "fleet", timeout: float = 3.0) -> str:
        """A supervisor config keeping ``namespace`` in this cluster under ``prefix``."""
        endpoints = ", ".join(f'"{e}"' for e in self.endpoints)
        return (f'[namespaces."{namespace}"]\nbackend = "etcd"\nendpoints = [{endpoints}]\n'
                f'prefix = "{prefix}"\ntimeout = {timeout}\n')

    def etcdctl(self, *args: str, endpoints: Optional[Sequence[str]] = None,
                timeout: float = 5.0, input: Optional[str] = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_etcdctl(endpoints or [m.client_url for m in self.running()]
                           or self.endpoints, *args, timeout=timeout,
                           input=input, check=check)


def require_etcd() -> None:
    if ETCD is None or ETCDCTL is None:
        missing = [n for n, p in (("etcd", ETCD), ("etcdctl", ETCDCTL))
                   if p is None]
        import pytest  # only tests skip; the benchmarks use the cluster without pytest

        pytest.skip(f"{' and '.join(missing)} not on PATH "
                    "(Debian packages etcd-server / etcd-client)")

