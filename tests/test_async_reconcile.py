"""``async def reconcile`` runs, in the harness and in a real controller
process: awaited on the controller's own event loop, with ``rt`` usable
from it, its failures retried like any other."""

from __future__ import annotations

import asyncio

from cosihost import Controller, Input, Output, Resource
from cosihost.testing import ControllerHarness, wait_for

INTS = "Ints.test.cosihost.dev"
STRS = "Strs.test.cosihost.dev"
ASYNC_MODULE = f'''
import asyncio
from cosihost import Controller, Input, Output

class AsyncRelay(Controller):
    name = "test.AsyncRelay"
    inputs = [Input("in", "{INTS}", kind="weak")]
    outputs = [Output("{STRS}", kind="exclusive")]

    async def reconcile(self, rt):
        await asyncio.sleep(0.001)
        for res in rt.list("in", "{INTS}"):
            rt.modify("out", "{STRS}", res.metadata.id, lambda s: s.update(value=str(res.spec["value"])))
'''


class AsyncRelay(Controller):
    name = "test.AsyncRelay"
    inputs = [Input("in", INTS, kind="weak")]
    outputs = [Output(STRS, kind="exclusive")]

    def __init__(self) -> None:
        self.loops: set[int] = set()
        self.fail_next = True

    async def reconcile(self, rt):  # type: ignore[no-untyped-def]
        self.loops.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0.001)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("first round fails on purpose")
        for res in rt.list("in", INTS):
            rt.modify("out", STRS, res.metadata.id, lambda s: s.update(value=str(res.spec["value"])))


def test_an_async_reconcile_is_awaited_retried_and_keeps_its_loop() -> None:
    controller = AsyncRelay()
    with ControllerHarness(controller) as h:
        h.state.create(Resource("in", INTS, "one", {"value": 1}))
        assert h.wait_for_spec("out", STRS, "one", lambda s: s.get("value") == "1")
        h.state.create(Resource("in", INTS, "two", {"value": 2}))
        assert h.wait_for_spec("out", STRS, "two", lambda s: s.get("value") == "2")
        assert [str(e) for e in h.errors] == ["first round fails on purpose"]
    assert len(controller.loops) == 1   # one event loop for every round


def test_an_async_controller_module_works_in_its_own_process(supervisor_factory) -> None:
    sup = supervisor_factory(controllers={"relay": ASYNC_MODULE})
    with sup.client() as c:
        c.create(Resource("in", INTS, "x", {"value": 7}))
        wait_for(lambda: [r.spec for r in c.list("out", STRS)] == [{"value": "7"}],
                 message="the async controller's output")
