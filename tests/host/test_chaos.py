"""Chaos: controllers write continuously while random ones are SIGKILLed.

Nothing but the targets dies, no acknowledged write is lost (each counter's
value equals its version, and a watcher sees every version exactly once, in
order), and everything converges afterwards. The default suite makes 20
kills; ``pytest -m slow tests/host/test_chaos.py`` makes 500.
"""

from __future__ import annotations

import os
import random
import signal

import pytest

from cosihost import Resource
from cosihost.testing import wait_for

from test_supervision import FAST, RELAY, _running_pid

COUNT = "Counts.test.cosihost.dev"
TOTAL = "Totals.test.cosihost.dev"
STOP = "Stops.test.cosihost.dev"

WRITER = '''
from cosihost import Controller, Input, Output

class Writer{n}(Controller):
    name = "chaos.Writer{n}"
    inputs = [Input("chaos", "Stops.test.cosihost.dev")]
    outputs = [Output("Counts.test.cosihost.dev", kind="shared")]

    def reconcile(self, rt):
        if rt.list("chaos", "Stops.test.cosihost.dev"):
            return
        rt.modify("chaos", "Counts.test.cosihost.dev", self.name, lambda s: s.update(value=s.get("value", 0) + 1))
        rt.requeue(after=0.002)
'''

SUMMER = '''
from cosihost import Controller, Input, Output

class Summer(Controller):
    name = "chaos.Summer"
    inputs = [Input("chaos", "Counts.test.cosihost.dev")]
    outputs = [Output("Totals.test.cosihost.dev")]

    def reconcile(self, rt):
        total = sum(r.spec["value"] for r in rt.list("chaos", "Counts.test.cosihost.dev"))
        rt.modify("chaos", "Totals.test.cosihost.dev", "total", lambda s: s.update(value=total))
'''

WRITERS = 3
TARGETS = [f"chaos.Writer{n}" for n in range(WRITERS)] + ["chaos.Summer"]


class Ledger:
    """Follows the counters: every version once, in order, value == version."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}

    def apply(self, event) -> None:
        assert event.kind in ("created", "updated", "bootstrapped"), event
        if event.kind == "bootstrapped":
            return
        md = event.resource.metadata
        assert event.resource.spec["value"] == md.version, f"value and version differ: {event.resource}"
        if event.kind == "created":
            assert md.id not in self.versions or md.version > self.versions[md.id]
        else:
            assert md.version == self.versions.get(md.id, 0) + 1, f"{md.id}: skipped from {self.versions.get(md.id)} to {md.version}"
        self.versions[md.id] = md.version


def _drain(watch, ledger: Ledger) -> None:
    while (event := watch.next(timeout=0)) is not None:
        ledger.apply(event)


def _chaos(supervisor_factory, kills: int) -> None:
    controllers = {f"writer{n}": WRITER.format(n=n) for n in range(WRITERS)}
    controllers.update(summer=SUMMER, relay=RELAY)
    sup = supervisor_factory(config=FAST, controllers=controllers)
    rng = random.Random(20261128)
    ledger = Ledger()
    with sup.client() as c:
        bystander = _running_pid(c, "test.Relay")
        watch = c.watch_kind("chaos", COUNT, bootstrap=True)
        pids = {name: _running_pid(c, name) for name in TARGETS}
        for _ in range(kills):
            name = rng.choice(TARGETS)
            pid = _running_pid(c, name, not_pid=-pids[name] if pids[name] < 0 else 0)
            os.kill(pid, signal.SIGKILL)
            pids[name] = -pid
            _drain(watch, ledger)
        c.create(Resource("chaos", STOP, "stop"))
        for name in TARGETS:  # back, in a process newer than the last one killed (so counted)
            _running_pid(c, name, not_pid=-pids[name] if pids[name] < 0 else 0)

        def converged() -> bool:
            _drain(watch, ledger)
            counts = {r.metadata.id: r.spec["value"] for r in c.list("chaos", COUNT)}
            total = c.get("chaos", TOTAL, "total").spec["value"]
            return len(counts) == WRITERS and total == sum(counts.values()) and counts == ledger.versions
        wait_for(converged, timeout=60, message="counters and total to converge")
        assert all(v > 1 for v in ledger.versions.values())
        assert _running_pid(c, "test.Relay") == bystander
        assert sup.proc.poll() is None
        statuses = sup.statuses()
        assert sum(statuses[n]["restarts"] for n in TARGETS) >= kills
        assert statuses["test.Relay"]["restarts"] == 0


@pytest.mark.timeout(180)
def test_chaos_twenty_kills(supervisor_factory):
    _chaos(supervisor_factory, 20)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_chaos_five_hundred_kills(supervisor_factory):
    _chaos(supervisor_factory, 500)


SLOW = '''
import os
import time
from cosihost import Controller, Input, Output

class Slow(Controller):
    name = "test.Slow"
    inputs = [Input("flood", "Ints.test.cosihost.dev"), Input("flood", "Stops.test.cosihost.dev")]
    outputs = [Output("Totals.test.cosihost.dev")]
    paused = False

    def reconcile(self, rt):
        pause = rt.list("flood", "Stops.test.cosihost.dev")
        if pause and not self.paused:
            self.paused = True
            rt.modify("flood", "Totals.test.cosihost.dev", "paused", lambda s: s.update(value=1))
            while not os.path.exists(pause[0].spec["until"]):  # stop reading events meanwhile
                time.sleep(0.01)
        total = sum(r.spec["value"] for r in rt.list("flood", "Ints.test.cosihost.dev"))
        rt.modify("flood", "Totals.test.cosihost.dev", "slow", lambda s: s.update(value=total))
'''

TINY_QUEUES = FAST + """
subscriber_hwm = 20
publisher_hwm = 20
hung_after = 60
"""


@pytest.mark.timeout(120)
def test_slow_consumer_detects_loss_resyncs_and_converges(supervisor_factory):
    sup = supervisor_factory(config="history = 100\n" + TINY_QUEUES, controllers={"slow": SLOW, "relay": RELAY})
    until = sup.base / "go"
    with sup.client() as c:
        relay = _running_pid(c, "test.Relay")
        slow = _running_pid(c, "test.Slow")
        c.create(Resource("flood", STOP, "pause", {"until": str(until)}))
        wait_for(lambda: c.list("flood", TOTAL, id_regex="^paused$"), message="the slow controller to pause")
        expected = 0
        for i in range(3000):
            c.create(Resource("flood", "Ints.test.cosihost.dev", f"i{i:04d}", {"value": i, "pad": "x" * 200}))
            expected += i
            if i % 100 == 0:
                c.create(Resource("relay-in", "Ints.test.cosihost.dev", f"r{i:04d}", {"value": i}))
        until.touch()
        wait_for(lambda: c.list("flood", TOTAL, id_regex="^slow$") and
                 c.get("flood", TOTAL, "slow").spec["value"] == expected, timeout=60,
                 message="the slow controller to converge")
        status = sup.wait_status("test.Slow", lambda s: s["counters"].get("resyncs", 0) >= 1)
        assert status["pid"] == slow and status["restarts"] == 0
        wait_for(lambda: len(c.list("relay-out", "Strs.test.cosihost.dev")) == 30, message="the relay to keep up")
        relay_status = sup.statuses()["test.Relay"]
        assert relay_status["pid"] == relay and relay_status["counters"]["resyncs"] == 0
