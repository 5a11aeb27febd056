"""A restarted controller cleans up what its last life wrote.

``cleanup_outputs`` destroys the controller's outputs that a round did not
touch. A new process knows only the kinds it has read or written, so an
output in a namespace the first round does not touch used to survive a
restart for ever; the supervisor now tells a controller where it owns
outputs, and its first cleanup looks there too.
"""

from __future__ import annotations

from cosihost import Controller, Input, InMemoryState, Output, Resource
from cosihost.testing import ControllerHarness, process_gone, wait_for

from test_supervision import FAST

SOURCES = "Sources.test.cosihost.dev"
COPIES = "Copies.test.cosihost.dev"
MIRROR = f'''
from cosihost import Controller, Input, Output

class Mirror(Controller):
    name = "test.Mirror"
    inputs = [Input("default", "{SOURCES}", kind="weak")]
    outputs = [Output("{COPIES}", kind="exclusive")]

    def reconcile(self, rt):
        rt.start_tracking_outputs()
        for src in rt.list("default", "{SOURCES}"):
            rt.modify(src.spec["to"], "{COPIES}", src.metadata.id, lambda s: s.update(src.spec))
        rt.cleanup_outputs()
'''


def _ids(client, namespace: str) -> set[str]:
    return {r.metadata.id for r in client.list(namespace, COPIES)}


def test_outputs_whose_inputs_went_while_the_controller_was_away_are_destroyed(supervisor_factory) -> None:
    sup = supervisor_factory(config=FAST, controllers={"mirror": MIRROR})
    with sup.client() as c:
        c.create(Resource("default", SOURCES, "a", {"to": "left"}))
        c.create(Resource("default", SOURCES, "b", {"to": "right"}))
        wait_for(lambda: _ids(c, "left") == {"a"} and _ids(c, "right") == {"b"}, message="both copies")
        pid = sup.controller_pid("test.Mirror")
        source = (sup.controllers_dir / "mirror.py").read_text()
        (sup.controllers_dir / "mirror.py").unlink()
        c.call("reload")
        wait_for(lambda: process_gone(pid), message="the removed controller's process to end")
        c.destroy("default", SOURCES, "a")
        c.destroy("default", SOURCES, "b")
        assert _ids(c, "left") == {"a"} and _ids(c, "right") == {"b"}   # nobody to clean up yet
        sup.write_controller("mirror", source)
        c.call("reload")
        wait_for(lambda: not _ids(c, "left") and not _ids(c, "right"), timeout=15,
                 message="the restarted controller to destroy both stale copies")


class Mirror(Controller):
    name = "test.Mirror"
    inputs = [Input("default", SOURCES, kind="weak")]
    outputs = [Output(COPIES, kind="exclusive")]

    def reconcile(self, rt):  # type: ignore[no-untyped-def]
        rt.start_tracking_outputs()
        for src in rt.list("default", SOURCES):
            rt.modify(src.spec["to"], COPIES, src.metadata.id, lambda s: s.update(src.spec))
        rt.cleanup_outputs()


def test_the_harness_cleans_up_what_an_earlier_run_left() -> None:
    state = InMemoryState()
    state.create(Resource("elsewhere", COPIES, "stale", {"to": "elsewhere"}), owner="test.Mirror")
    state.create(Resource("elsewhere", COPIES, "theirs", {}), owner="test.Other")
    with ControllerHarness(Mirror, state) as h:
        h.wait_destroyed("elsewhere", COPIES, "stale")
        assert [r.metadata.id for r in state.list("elsewhere", COPIES)] == ["theirs"]
