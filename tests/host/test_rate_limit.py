"""A controller's write rate limit is kept by the supervisor: a controller
writing in a tight loop is slowed to its rate (its rt waits and resends),
the refusals show in its status, and the others keep being served."""

from __future__ import annotations

import pytest

from cosihost import InvalidRequestError, Resource
from cosihost.supervisor.ratelimit import split
from cosihost.testing import wait_for

from test_supervision import FAST, RELAY

WRITES, RATE, BURST = 40, 20, 5
SPAMMER = f'''
import time
from cosihost import Controller, Output

class Spammer(Controller):
    name = "test.Spammer"
    outputs = [Output("Spam.test.cosihost.dev")]
    limits = {{"writes": {RATE}, "write_burst": {BURST}}}
    done = False

    def reconcile(self, rt):
        if self.done:
            return
        start = time.monotonic()
        for i in range({WRITES} - 1):   # a runaway loop: every round writes again
            rt.modify("spam", "Spam.test.cosihost.dev", "it", lambda s: s.update(n=i))
        rt.modify("spam", "Spam.test.cosihost.dev", "it",
                  lambda s: s.update(n={WRITES}, took=time.monotonic() - start))
        self.done = True
'''


def test_a_runaway_controller_is_throttled_and_the_others_are_served(supervisor_factory) -> None:
    sup = supervisor_factory(config=FAST, controllers={"spammer": SPAMMER, "relay": RELAY})
    with sup.client() as c:
        c.create(Resource("relay-in", "Ints.test.cosihost.dev", "x", {"value": 7}))
        wait_for(lambda: [r.spec for r in c.list("relay-out", "Strs.test.cosihost.dev")] == [{"value": "7"}],
                 message="the other controller's output, while the spammer is throttled")
        done = wait_for(lambda: (r := c.list("spam", "Spam.test.cosihost.dev")) and r[0].spec.get("n") == WRITES
                        and r[0], timeout=30, message="the spammer's last write")
    assert done.metadata.version == WRITES            # every write applied once, none lost
    assert done.spec["took"] >= (WRITES - BURST) / RATE * 0.9
    status = sup.wait_status("test.Spammer", lambda s: s.get("throttled", 0) > 0)
    assert status["state"] == "running"
    assert sup.statuses()["test.Relay"].get("throttled", 0) == 0


@pytest.mark.parametrize("limits, message", [
    ({"writes": 0}, "must be a positive number"),
    ({"writes": "fast"}, "must be a positive number"),
    ({"write_burst": 3}, "write_burst needs writes"),
])
def test_bad_write_limits_are_refused(limits, message) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        split("test.X", limits)


def test_a_bad_write_limit_refuses_only_its_controller(supervisor_factory) -> None:
    sup = supervisor_factory(config=FAST, controllers={"spammer": SPAMMER.replace(f'"writes": {RATE}', '"writes": -1'),
                                                       "relay": RELAY})
    assert "positive number" in sup.statuses()["test.Spammer"]["reason"]
    assert sup.statuses()["test.Relay"]["state"] == "running"
