"""A kind bigger than one message still syncs: snapshots come in pages."""

from __future__ import annotations

import pytest

from cosihost import Resource
from cosihost.testing import wait_for
from cosihost.wire import MAX_MESSAGE_BYTES

from test_supervision import FAST

COUNTER = '''
from cosihost import Controller, Input, Output

class Counter(Controller):
    name = "test.Counter"
    inputs = [Input("big", "Bigs.test.cosihost.dev")]
    outputs = [Output("Counts.test.cosihost.dev")]

    def reconcile(self, rt):
        n = len(rt.list("big", "Bigs.test.cosihost.dev"))
        rt.modify("count", "Counts.test.cosihost.dev", "n", lambda s: s.update(n=n))
'''


@pytest.mark.timeout(120)
def test_kind_larger_than_a_message_bootstraps_in_pages(supervisor_factory):
    sup = supervisor_factory(config=FAST, controllers={})
    count, pad = 10_000, "x" * 500
    assert count * len(pad) > MAX_MESSAGE_BYTES
    with sup.client() as c:
        for i in range(count):
            c.create(Resource("big", "Bigs.test.cosihost.dev", f"r{i:05d}", {"i": i, "pad": pad}))
        with c.watch_kind("big", "Bigs.test.cosihost.dev", bootstrap=True) as watch:
            ids = []
            while (event := watch.next(timeout=10)).kind != "bootstrapped":
                ids.append(event.resource.metadata.id)
        assert ids == [f"r{i:05d}" for i in range(count)]
        sup.write_controller("counter", COUNTER)
        assert c.call("reload")["started"] == ["test.Counter"]
        wait_for(lambda: c.list("count", "Counts.test.cosihost.dev") and
                 c.get("count", "Counts.test.cosihost.dev", "n").spec["n"] == count, timeout=30,
                 message="the controller to see every item")
        assert sup.statuses()["test.Counter"]["restarts"] == 0
