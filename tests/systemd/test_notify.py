"""sd_notify from a real supervisor process to a socket the test binds.

What systemd needs from ``Type=notify`` + ``NotifyAccess=main`` +
``WatchdogSec=``: every message from the main pid, READY=1 only once every
controller has reconciled once, STATUS= lines that say how many run,
RELOADING=1 ... READY=1 around a reload, STOPPING=1 on SIGTERM, and watchdog
pings at half WATCHDOG_USEC that stop while the main loop is stuck.
"""

from __future__ import annotations

import os
import signal
import statistics
import time

import psutil
import pytest

from cosihost.supervisor.sdnotify import Notifier
from cosihost.testing import wait_for

pytestmark = pytest.mark.timeout(60)

GATED = '''
import os, time
from cosihost import Controller, Output

class Gated(Controller):
    """Its first reconcile returns only once the gate file exists."""
    name = "test.Gated"
    outputs = [Output("Gates.test.cosihost.dev")]

    def reconcile(self, rt):
        while not os.path.exists({gate!r}):
            time.sleep(0.02)
'''

BROKEN = "raise RuntimeError('this module does not import')\n"


def _env(sock, watchdog_usec: int | None = None, **more: str) -> dict[str, str]:
    env = {"NOTIFY_SOCKET": str(sock.path), **more}
    if watchdog_usec:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return env


def test_ready_waits_for_every_first_reconcile_and_comes_from_the_main_pid(
        notify_socket, supervisor_factory, plain_controller):
    sup = supervisor_factory(start=False, env=_env(notify_socket, 400_000),
                             controllers={"plain": plain_controller("Plain")})
    # In the supervisor's folder, not tmp_path (0700): the controller may run as a user of its own.
    gate = sup.base / "gate"
    sup.write_controller("gated", GATED.format(gate=str(gate)))
    sup.start(wait=False)
    # The loop runs (and pings) long before it is ready; no READY while a
    # first reconcile is still going.
    notify_socket.until(lambda m: "WATCHDOG=1" in m, timeout=15, what="the first watchdog ping")
    notify_socket.during(1.0)
    early = list(notify_socket.seen)
    assert sum("WATCHDOG=1" in m for m in early) >= 4, [m.fields for m in early]
    assert not [m for m in early if "READY" in m.fields]
    assert sup.ping()["ready"] is False
    gate.touch()
    ready = notify_socket.until(lambda m: "READY=1" in m, timeout=15, what="READY=1")
    assert ready.pid == sup.pid, "sent by another process: NotifyAccess=main would refuse it"
    assert ready.fields["MAINPID"] == str(sup.pid)
    assert ready.fields["STATUS"] == "2/2 controllers running"
    assert sup.ping()["ready"] is True
    assert {m.pid for m in notify_socket.seen} == {sup.pid}
    # No child inherits the variables (sd_notify's unset_environment).
    children = wait_for(lambda: [p for p in psutil.Process(sup.pid).children(recursive=True)
                                 if "controller" in " ".join(p.cmdline())], message="controller processes")
    for proc in psutil.Process(sup.pid).children(recursive=True):
        try:
            env = proc.environ()
        except psutil.NoSuchProcess:
            continue
        assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(env), proc.cmdline()
    assert len(children) == 2


def test_status_lines_reload_and_stopping(notify_socket, supervisor_factory, plain_controller):
    sup = supervisor_factory(start=False, env=_env(notify_socket),
                             controllers={"plain": plain_controller("Plain"), "broken": BROKEN})
    sup.start(wait=False)
    ready = notify_socket.until(lambda m: "READY=1" in m, timeout=15, what="READY=1")
    assert ready.fields["STATUS"] == "1/1 controllers running, 1 module(s) failed"

    sup.write_controller("second", plain_controller("Second"))
    (sup.controllers_dir / "broken.py").unlink()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    os.kill(sup.pid, signal.SIGHUP)
    reloading = notify_socket.until(lambda m: "RELOADING" in m.fields, timeout=10, what="RELOADING=1")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert "RELOADING=1" in reloading and reloading.pid == sup.pid
    assert before <= int(reloading.fields["MONOTONIC_USEC"]) <= after
    assert reloading.fields["STATUS"] == "reloading controllers"
    between = []
    done = notify_socket.until(lambda m: between.append(m) or "READY=1" in m, timeout=15, what="READY=1 after the reload")
    assert [m.fields for m in between[:-1] if "STATUS" in m.fields] == [], "STATUS overwritten mid-reload"
    assert done.pid == sup.pid
    # READY comes back only once the new controller has reconciled once.
    assert done.fields["STATUS"] == "2/2 controllers running"

    os.kill(sup.pid, signal.SIGTERM)
    stopping = notify_socket.until(lambda m: "STOPPING" in m.fields, timeout=10, what="STOPPING=1")
    assert "STOPPING=1" in stopping and stopping.fields["STATUS"] == "stopping controllers"
    assert sup.proc.wait(timeout=15) == 0
    after_stop = notify_socket.during(0.2)
    assert not [m for m in after_stop if "STATUS" in m.fields or "READY" in m.fields]


def test_watchdog_pings_at_half_the_interval_and_never_from_a_stopped_loop(
        notify_socket, supervisor_factory, plain_controller):
    usec = 1_000_000
    period = usec / 2e6
    sup = supervisor_factory(start=False, env=_env(notify_socket, usec),
                             controllers={"plain": plain_controller("Plain")})
    sup.start(wait=False)
    notify_socket.until(lambda m: "READY=1" in m, timeout=15, what="READY=1")
    pings = []
    notify_socket.until(lambda m: "WATCHDOG=1" in m and pings.append(m) is None and len(pings) == 7,
                        timeout=10 * period, what="7 watchdog pings")
    gaps = [b.sent - a.sent for a, b in zip(pings, pings[1:])]
    print(f"watchdog gaps for WATCHDOG_USEC={usec}: {[round(g, 3) for g in gaps]}")
    assert min(gaps) >= 0.95 * period, gaps
    assert statistics.median(gaps) <= 1.3 * period, gaps
    assert max(gaps) < usec / 1e6, gaps  # systemd would have killed it

    # A stuck loop must not ping: stop the whole process for two watchdog timeouts.
    os.kill(sup.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: psutil.Process(sup.pid).status() == psutil.STATUS_STOPPED, timeout=5,
                 message="the supervisor to stop")
        stopped_at = time.time()
        during = notify_socket.during(2 * usec / 1e6)
        late = [m.fields for m in during if m.sent > stopped_at]
        assert late == [], "sent while SIGSTOPped"
    finally:
        os.kill(sup.pid, signal.SIGCONT)
    resumed = notify_socket.until(lambda m: "WATCHDOG=1" in m, timeout=period + 2, what="a ping after SIGCONT")
    assert resumed.sent > stopped_at and resumed.pid == sup.pid


def test_status_counts_refused_controllers(notify_socket, supervisor_factory, plain_controller):
    def same(cls: str) -> str:
        return plain_controller(cls).replace(f'name = "test.{cls}"', 'name = "test.Same"')
    sup = supervisor_factory(start=False, env=_env(notify_socket), controllers={"a": same("A"), "b": same("B")})
    sup.start(wait=False)
    ready = notify_socket.until(lambda m: "READY=1" in m, timeout=15, what="READY=1")
    assert ready.fields["STATUS"] == "1/1 controllers running, 1 refused"


def test_no_watchdog_for_another_pid(notify_socket, supervisor_factory):
    # WATCHDOG_PID names the process systemd watches; a supervisor started by
    # a wrapper that did not exec must not ping on its behalf.
    sup = supervisor_factory(start=False, env=_env(notify_socket, 100_000, WATCHDOG_PID="1"))
    sup.start(wait=False)
    notify_socket.until(lambda m: "READY=1" in m, timeout=15, what="READY=1")
    assert not [m for m in notify_socket.seen + notify_socket.during(0.5) if "WATCHDOG" in m.fields]


def test_abstract_socket_and_unsupported_addresses(caplog):
    import socket
    name = f"cosihost-test-{os.getpid()}"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind("\0" + name)
    rx.settimeout(5)
    env = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    n = Notifier.from_env(env)
    assert env == {}, "the variables are taken out so that children do not inherit them"
    assert n.interval == 1.0
    n.ready("0/0 controllers running")
    assert rx.recv(4096).split(b"\n") == [b"READY=1", b"STATUS=0/0 controllers running",
                                           f"MAINPID={os.getpid()}".encode()]
    assert n.watchdog() == pytest.approx(1.0, abs=0.1)  # first ping right away
    assert rx.recv(4096) == b"WATCHDOG=1"
    n.close()
    rx.close()

    for bad in ("relative/path", "vsock:2:1234", "@"):
        n = Notifier.from_env({"NOTIFY_SOCKET": bad})
        assert n.send("READY=1") is False
    assert "is not a socket path or @name" in caplog.text
    assert Notifier.from_env({}).watchdog() is None


def test_a_vanished_socket_is_reported_once(tmp_path, caplog):
    n = Notifier(str(tmp_path / "gone"), watchdog_usec=2)
    for _ in range(5):
        n.send("WATCHDOG=1")
    assert caplog.text.count("sd_notify to") == 1
