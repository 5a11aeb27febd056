"""The supervisor runs controllers in their own processes and they converge."""

from __future__ import annotations

import os
import signal

import psutil

from cosihost import Resource
from cosihost.testing import wait_for

DOUBLER = '''
from cosihost import Controller, Input, Output

class Doubler(Controller):
    name = "test.Doubler"
    inputs = [Input("default", "Ints.test.cosihost.dev")]
    outputs = [Output("Doubles.test.cosihost.dev")]

    def reconcile(self, rt):
        for r in rt.list("default", "Ints.test.cosihost.dev"):
            value = r.spec["value"]
            rt.modify("default", "Doubles.test.cosihost.dev", r.metadata.id,
                      lambda spec: spec.update(value=value * 2))
'''


def test_controller_converges_in_its_own_process(supervisor_factory):
    sup = supervisor_factory(controllers={"double": DOUBLER})
    with sup.client() as c:
        c.create(Resource("default", "Ints.test.cosihost.dev", "one", {"value": 21}))
        res = wait_for(lambda: _spec(c, "one"), message="the double")
        assert res == {"value": 42}
        pid = sup.controller_pid("test.Doubler")
        assert pid != sup.pid
        parent = psutil.Process(pid).parent()
        assert sup.pid in (parent.pid, parent.ppid())  # the supervisor, or its zygote
        assert c.get("default", "Doubles.test.cosihost.dev", "one").metadata.owner == "test.Doubler"


def test_second_supervisor_on_same_runtime_dir_fails_clearly(supervisor_factory):
    import subprocess
    import sys
    sup = supervisor_factory(controllers={})
    done = subprocess.run([sys.executable, "-m", "cosihost", "run", "--runtime-dir", str(sup.runtime_dir),
                           "--controllers", str(sup.controllers_dir), "--no-bundled"],
                          capture_output=True, timeout=30)
    assert done.returncode != 0
    assert b"another supervisor" in done.stderr
    assert sup.ping()["ready"]


def _spec(client, rid):
    from cosihost import NotFoundError
    try:
        return client.get("default", "Doubles.test.cosihost.dev", rid).spec
    except NotFoundError:
        return None


def test_a_watch_ends_with_an_error_when_its_supervisor_goes_away(supervisor_factory):
    """No watch waits forever on a supervisor that died: after a few silent
    seconds it checks, and ends with an error event saying why."""
    sup = supervisor_factory()
    with sup.client(timeout=1, retries=0) as client:
        with client.watch_kind("default", "Quiet", bootstrap=True) as watch:
            assert watch.next(timeout=5).kind == "bootstrapped"
            assert sup.proc is not None
            os.kill(sup.proc.pid, signal.SIGKILL)
            sup.proc.wait(timeout=10)
            event = watch.next(timeout=watch.IDLE_CHECK + 10)
            assert event is not None and event.kind == "error"
            assert "the supervisor is not answering" in event.error
            assert watch.next(timeout=0) is None


def test_a_quiet_watch_keeps_going_and_catches_up(supervisor_factory):
    sup = supervisor_factory()
    with sup.client() as client, client.watch_kind("default", "Quiet", bootstrap=True) as watch:
        assert watch.next(timeout=5).kind == "bootstrapped"
        assert watch.next(timeout=watch.IDLE_CHECK + 1) is None  # silence is not an error
        client.create(Resource("default", "Quiet", "a", {}))
        event = watch.next(timeout=5)
        assert event is not None and event.kind == "created"
