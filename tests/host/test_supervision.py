"""Supervision: crash isolation, hung controllers, restart and reload without
downtime, shutdown, and nothing outliving the supervisor."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from cosihost import Client, Resource
from cosihost.testing import wait_for

INT = "Ints.test.cosihost.dev"
STR = "Strs.test.cosihost.dev"
MARK = "Marks.test.cosihost.dev"

FAST = """
[timing]
heartbeat = 0.1
backoff_base = 0.02
backoff_cap = 0.1
usage_every = 0.2
"""

VICTIM = '''
import os
from cosihost import Controller, Output

class Victim(Controller):
    name = "test.Victim"
    outputs = [Output("Marks.test.cosihost.dev")]

    def reconcile(self, rt):
        rt.modify("marks", "Marks.test.cosihost.dev", "victim", lambda s: s.update(pid=os.getpid()))
'''

RELAY = '''
from cosihost import Controller, Input, Output

class Relay(Controller):
    name = "test.Relay"
    inputs = [Input("relay-in", "Ints.test.cosihost.dev")]
    outputs = [Output("Strs.test.cosihost.dev")]

    def reconcile(self, rt):
        for res in rt.list("relay-in", "Ints.test.cosihost.dev"):
            value = str(res.spec["value"])
            rt.modify("relay-out", "Strs.test.cosihost.dev", res.metadata.id, lambda s: s.update(value=value))
'''


def _running_pid(client: Client, name: str, *, not_pid: int = 0) -> int:
    def check() -> int:
        for r in client.list("runtime", "ControllerStatuses.runtime.cosihost.dev"):
            if r.metadata.id == name and r.spec["state"] == "running" and r.spec["pid"] not in (0, not_pid):
                return r.spec["pid"]
        return 0
    return wait_for(check, timeout=20, message=f"{name} running with a new pid")


def _collect(watch, ids: set[str], *, timeout: float = 20) -> list[str]:
    """Created ids from a kind watch until all of ``ids`` were seen; no error allowed."""
    seen: list[str] = []
    while not ids <= set(seen):
        event = watch.next(timeout=timeout)
        assert event is not None, f"timed out; saw {len(seen)} of {len(ids)}"
        assert event.kind != "error", event.error
        if event.kind == "created":
            seen.append(event.resource.metadata.id)
    return seen


def test_fifty_kills_leave_other_controllers_untouched(supervisor_factory):
    sup = supervisor_factory(config=FAST, controllers={"victim": VICTIM, "relay": RELAY})
    with sup.client() as c:
        relay_pid = _running_pid(c, "test.Relay")
        watch = c.watch_kind("relay-out", STR)
        victim = _running_pid(c, "test.Victim")
        ids = set()
        for i in range(50):
            os.kill(victim, signal.SIGKILL)
            rid = f"n{i:02d}"
            ids.add(rid)
            c.create(Resource("relay-in", INT, rid, {"value": i}))
            victim = _running_pid(c, "test.Victim", not_pid=victim)
        seen = _collect(watch, ids)
        assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
        assert _running_pid(c, "test.Relay") == relay_pid
        status = sup.wait_status("test.Victim", lambda s: s["restarts"] >= 50)
        assert status["last_exit"]["signal"] == "SIGKILL"
        relay = sup.wait_status("test.Relay", lambda s: s["counters"].get("reconciles", 0) > 0)
        assert relay["restarts"] == 0
        assert relay["counters"]["resyncs"] == 0
        assert c.get("marks", MARK, "victim").spec["pid"] == victim


HANGER = '''
import time
from cosihost import Controller, Input, Output

class Hanger(Controller):
    name = "test.Hanger"
    inputs = [Input("hang", "Ints.test.cosihost.dev")]
    outputs = [Output("Hangs.test.cosihost.dev")]

    def reconcile(self, rt):
        if rt.list("hang", "Ints.test.cosihost.dev"):
            while True:
                time.sleep(1)
'''


def test_hung_controller_is_killed_and_restarted(supervisor_factory):
    sup = supervisor_factory(config=FAST + "hung_after = 1.0\n", controllers={"hanger": HANGER, "relay": RELAY})
    with sup.client() as c:
        hanger = _running_pid(c, "test.Hanger")
        relay = _running_pid(c, "test.Relay")
        c.create(Resource("hang", INT, "now", {"value": 1}))
        status = sup.wait_status("test.Hanger", lambda s: (s["last_exit"] or {}).get("reason") == "hung")
        assert status["restarts"] >= 1
        assert not psutil.pid_exists(hanger) or psutil.Process(hanger).status() == psutil.STATUS_ZOMBIE
        assert _running_pid(c, "test.Relay") == relay


def test_restart_returns_once_reconciled_and_others_keep_running(supervisor_factory):
    sup = supervisor_factory(config=FAST, controllers={"victim": VICTIM, "relay": RELAY})
    with sup.client() as c, Client(sup.runtime_dir, timeout=30, retries=0) as slow:
        victim = _running_pid(c, "test.Victim")
        relay = _running_pid(c, "test.Relay")
        watch = c.watch_kind("relay-out", STR)
        c.create(Resource("relay-in", INT, "before", {"value": 1}))
        result = slow.call("restart", name="test.Victim")
        assert result["pid"] != victim
        status = sup.statuses()["test.Victim"]
        assert status["state"] == "running" and status["pid"] == result["pid"]
        assert c.get("marks", MARK, "victim").spec["pid"] == result["pid"]  # reconciled again
        c.create(Resource("relay-in", INT, "after", {"value": 2}))
        assert sorted(_collect(watch, {"before", "after"})) == ["after", "before"]
        assert _running_pid(c, "test.Relay") == relay
        with pytest.raises(Exception, match="no running controller"):
            slow.call("restart", name="test.Nobody")


def test_reload_starts_new_restarts_changed_stops_removed(supervisor_factory):
    sup = supervisor_factory(config=FAST, controllers={"victim": VICTIM, "relay": RELAY})
    with sup.client() as c, Client(sup.runtime_dir, timeout=30, retries=0) as slow:
        victim = _running_pid(c, "test.Victim")
        relay = _running_pid(c, "test.Relay")
        assert slow.call("reload") == {"started": [], "restarted": [], "stopped": [], "refused": [], "failed": [],
                                       "reasons": {}}

        sup.write_controller("hanger", HANGER)
        assert slow.call("reload")["started"] == ["test.Hanger"]
        _running_pid(c, "test.Hanger")
        assert _running_pid(c, "test.Victim") == victim and _running_pid(c, "test.Relay") == relay

        sup.write_controller("victim", VICTIM + "\n# changed\n")
        assert slow.call("reload")["restarted"] == ["test.Victim"]
        new_victim = _running_pid(c, "test.Victim", not_pid=victim)
        assert _running_pid(c, "test.Relay") == relay

        (sup.controllers_dir / "hanger.py").unlink()
        assert slow.call("reload")["stopped"] == ["test.Hanger"]
        wait_for(lambda: "test.Hanger" not in sup.statuses(), message="the removed controller's status to go")
        assert _running_pid(c, "test.Victim") == new_victim and _running_pid(c, "test.Relay") == relay


def test_sighup_reloads(supervisor_factory):
    sup = supervisor_factory(config=FAST, controllers={"relay": RELAY})
    with sup.client() as c:
        relay = _running_pid(c, "test.Relay")
        sup.write_controller("victim", VICTIM)
        os.kill(sup.pid, signal.SIGHUP)
        _running_pid(c, "test.Victim")
        assert _running_pid(c, "test.Relay") == relay


STUBBORN = '''
import signal
from cosihost import Controller, Output

class Stubborn(Controller):
    name = "test.Stubborn"
    outputs = [Output("Marks.test.cosihost.dev", kind="shared")]

    def reconcile(self, rt):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        rt.modify("marks", "Marks.test.cosihost.dev", "stubborn", lambda s: s.update(ignoring=True))
'''


def test_sigterm_stops_everything_and_kills_stragglers(supervisor_factory):
    sup = supervisor_factory(config=FAST + "stop_timeout = 1.0\n", controllers={"stubborn": STUBBORN, "relay": RELAY})
    with sup.client() as c:
        pids = [_running_pid(c, "test.Stubborn"), _running_pid(c, "test.Relay")]
        wait_for(lambda: c.get("marks", MARK, "stubborn").spec.get("ignoring"), message="SIGTERM ignored")
    procs = [psutil.Process(p) for p in pids]
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.proc.wait(timeout=15) == 0
    gone, alive = psutil.wait_procs(procs, timeout=5)
    assert not alive
    assert not (sup.runtime_dir / "api.sock").exists()


def test_no_controller_outlives_a_killed_supervisor(supervisor_factory):
    sup = supervisor_factory(config=FAST, controllers={"victim": VICTIM, "relay": RELAY})
    with sup.client() as c:
        pids = [_running_pid(c, "test.Victim"), _running_pid(c, "test.Relay")]
    procs = [psutil.Process(p) for p in pids]
    sup.proc.kill()
    sup.proc.wait(timeout=10)
    gone, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive, f"outlived the supervisor: {alive}"


def test_process_titles_name_the_supervisor_and_controllers(supervisor_factory):
    sup = supervisor_factory(config=FAST, controllers={"relay": RELAY})
    with sup.client() as c:
        relay = _running_pid(c, "test.Relay")
    # What ps shows (/proc/PID/cmdline), read with psutil: a Python-only machine has no ps.
    lines = [" ".join(psutil.Process(pid).cmdline()) for pid in (sup.pid, relay)]
    assert any(line.startswith("cosihost: supervisor") for line in lines), lines
    assert any(line.startswith("cosihost: controller test.Relay") for line in lines), lines


def _zygote_pid(sup) -> int:
    for child in psutil.Process(sup.pid).children():
        if "zygote" in " ".join(child.cmdline()):
            return child.pid
    return 0


def test_killed_zygote_takes_its_children_and_both_come_back(supervisor_factory):
    sup = supervisor_factory(config=FAST, controllers={"victim": VICTIM, "relay": RELAY})
    with sup.client() as c:
        victim = _running_pid(c, "test.Victim")
        zygote = wait_for(lambda: _zygote_pid(sup), message="the zygote")
        assert psutil.Process(victim).ppid() == zygote
        os.kill(zygote, signal.SIGKILL)
        new_victim = _running_pid(c, "test.Victim", not_pid=victim)
        assert wait_for(lambda: _zygote_pid(sup) not in (0, zygote), message="a new zygote")
        assert psutil.Process(new_victim).ppid() == _zygote_pid(sup)
        c.create(Resource("relay-in", INT, "after", {"value": 7}))
        wait_for(lambda: c.list("relay-out", STR, id_regex="^after$"), message="the relay to work again")


def test_cold_starts_without_the_zygote(supervisor_factory):
    sup = supervisor_factory(config=FAST + "zygote = false\n", controllers={"relay": RELAY})
    with sup.client() as c:
        relay = _running_pid(c, "test.Relay")
        assert psutil.Process(relay).ppid() == sup.pid
        assert _zygote_pid(sup) == 0
        os.kill(relay, signal.SIGKILL)
        _running_pid(c, "test.Relay", not_pid=relay)
