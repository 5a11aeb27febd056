"""Controller modules that go wrong touch only themselves; declarations are
checked; the controller runtime survives lost replies and changes inputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cosihost import Resource
from cosihost.testing import wait_for

from test_supervision import FAST, RELAY, _running_pid

BROKEN = {
    "raises": "raise RuntimeError('broken on purpose')\n",
    "exits": "import os\nos._exit(7)\n",
    "segfaults": "import ctypes\nctypes.string_at(0)\n",
    "hangs": "import time\nwhile True:\n    time.sleep(1)\n",
    "empty": "X = 1\n",
    "syntax": "def (:\n",
    "twice": ("from cosihost import Controller, Output\n"
              "class A(Controller):\n    name = 'test.Twice'\n    outputs = [Output('TwiceA.test.cosihost.dev')]\n"
              "class B(Controller):\n    name = 'test.Twice'\n    outputs = [Output('TwiceB.test.cosihost.dev')]\n"),
}
REASONS = {
    "raises": "broken on purpose",
    "exits": "exited with code 7",
    "segfaults": "SIGSEGV",
    "hangs": "hung",
    "empty": "defines no Controller subclass",
    "syntax": "SyntaxError",
    "twice": "'test.Twice' more than once",
}


def test_broken_modules_are_reported_and_harm_nothing(supervisor_factory):
    controllers = {name: source for name, source in BROKEN.items()}
    controllers["relay"] = RELAY
    sup = supervisor_factory(config=FAST + "probe_timeout = 5.0\n", controllers=controllers)
    with sup.client() as c:
        relay = _running_pid(c, "test.Relay")
        statuses = sup.statuses()
        for name, reason in REASONS.items():
            status = statuses[f"{name}.py"]
            assert status["state"] == "refused", status
            assert reason in status["reason"], (name, status["reason"])
        c.create(Resource("relay-in", "Ints.test.cosihost.dev", "x", {"value": 1}))
        wait_for(lambda: c.list("relay-out", "Strs.test.cosihost.dev"), message="the good controller to work")
        assert _running_pid(c, "test.Relay") == relay
        # Fixing a module and reloading clears its error and starts it.
        sup.write_controller("raises", RELAY.replace("test.Relay", "test.Fixed").replace(
            '"Strs.test.cosihost.dev")]', '"Fixed.test.cosihost.dev")]'))
        summary = c.call("reload")
        assert summary["started"] == ["test.Fixed"]
        assert "raises.py" not in sup.statuses()


def summary_line(sup) -> str:
    with sup.client() as c:
        return c.call("ping")["summary"]


TWIN = '''
from cosihost import Controller, Input, Output

class {cls}(Controller):
    name = "{name}"
    inputs = [Input("twins", "Ints.test.cosihost.dev", kind="{kind}")]
    outputs = [Output("{out}", kind="{okind}")]

    def reconcile(self, rt):
        pass
'''


def test_bad_declarations_are_refused_naming_both_parties(supervisor_factory):
    sup = supervisor_factory(config=FAST, controllers={
        "a_first": TWIN.format(cls="A", name="test.Same", kind="weak", out="A.test.cosihost.dev", okind="exclusive"),
        "b_same_name": TWIN.format(cls="B", name="test.Same", kind="weak", out="B.test.cosihost.dev", okind="exclusive"),
        "c_shared": TWIN.format(cls="C", name="test.C", kind="weak", out="A.test.cosihost.dev", okind="shared"),
        "d_bad_kind": TWIN.format(cls="D", name="test.D", kind="sometimes", out="D.test.cosihost.dev", okind="exclusive"),
        "e_bad_output": TWIN.format(cls="E", name="test.E", kind="weak", out="E.test.cosihost.dev", okind="mine"),
    })
    statuses = sup.statuses()
    assert statuses["test.Same"]["state"] == "running"
    assert statuses["test.Same"]["module"] == "a_first.py"
    refused = {name: s["reason"] for name, s in statuses.items() if s["state"] == "refused"}
    assert "a_first.py:A" in refused["test.C"] and "c_shared.py:C" in refused["test.C"]
    assert "sometimes" in refused["test.D"]
    assert "mine" in refused["test.E"]
    # An unchanged refused module is not probed again on reload; the reload
    # still says what stays refused, and why.
    with sup.client() as c:
        summary = c.call("reload")
    assert {k: summary[k] for k in ("started", "restarted", "stopped", "failed")} == \
        {"started": [], "restarted": [], "stopped": [], "failed": []}
    assert summary["refused"] == ["b_same_name.py:B", "test.C", "test.D", "test.E"]
    assert summary["reasons"]["test.C"] == refused["test.C"]
    assert "4 refused" in summary_line(sup)
    # Once what stood in their way is gone, refused controllers start on reload.
    (sup.controllers_dir / "a_first.py").unlink()
    with sup.client() as c:
        summary = c.call("reload")
    assert summary["started"] == ["test.C"]  # at once; test.Same once a_first's process is gone
    sup.wait_status("test.Same", lambda st: st["module"] == "b_same_name.py" and st["state"] == "running")
    sup.wait_status("test.C", lambda st: st["state"] == "running")
    assert "c_shared.py:C" not in sup.statuses()  # no refusal left behind under its source
    assert "2 refused" in summary_line(sup)


CREATOR = '''
from cosihost import Controller, Input, Output

class Creator(Controller):
    name = "test.Creator"
    inputs = [Input("go", "Ints.test.cosihost.dev")]
    outputs = [Output("Made.test.cosihost.dev")]

    def reconcile(self, rt):
        go = rt.list("go", "Ints.test.cosihost.dev")
        if not go:
            return
        have = {r.metadata.id for r in rt.list("made", "Made.test.cosihost.dev")}
        for i in range(go[0].spec["value"]):
            rid = f"m{i:04d}"
            if rid not in have:
                from cosihost import Resource
                rt.create(Resource("made", "Made.test.cosihost.dev", rid, {"i": i}))
'''


@pytest.mark.timeout(120)
def test_lost_replies_never_wedge_a_controller_or_apply_twice(supervisor_factory):
    sup = supervisor_factory(config=FAST + "request_timeout = 0.3\nhung_after = 60\n",
                             controllers={"creator": CREATOR})
    count = 400
    with sup.client(timeout=10) as c:
        c.create(Resource("go", "Ints.test.cosihost.dev", "go", {"value": count}))
        outages = 0
        while len(c.list("made", "Made.test.cosihost.dev")) < count and outages < 5:
            os.kill(sup.pid, signal.SIGSTOP)
            time.sleep(0.5)  # the outage itself (longer than request_timeout), not a wait for a condition
            os.kill(sup.pid, signal.SIGCONT)
            outages += 1
        wait_for(lambda: len(c.list("made", "Made.test.cosihost.dev")) == count, timeout=30,
                 message="every resource to be made")
        made = c.list("made", "Made.test.cosihost.dev")
        assert all(r.metadata.version == 1 for r in made)
        status = sup.wait_status("test.Creator", lambda s: s["counters"].get("writes", 0) >= count)
        assert status["counters"]["resent"] >= 1, "no request timed out: the test proved nothing"
        assert status["restarts"] == 0


FOLLOWER = '''
from cosihost import Controller, Input, Output

class Follower(Controller):
    name = "test.Follower"
    inputs = [Input("config", "Ints.test.cosihost.dev")]
    outputs = [Output("Strs.test.cosihost.dev")]

    def reconcile(self, rt):
        cfg = rt.list("config", "Ints.test.cosihost.dev")
        if not cfg:
            return
        source = "ns" + str(cfg[0].spec["value"])
        rt.update_inputs([Input("config", "Ints.test.cosihost.dev"), Input(source, "Ints.test.cosihost.dev")])
        total = sum(r.spec["value"] for r in rt.list(source, "Ints.test.cosihost.dev"))
        rt.modify("out", "Strs.test.cosihost.dev", "total", lambda s: s.update(value=str(total), source=source))
'''


def test_update_inputs_follows_new_kinds_and_drops_old_ones(supervisor_factory):
    sup = supervisor_factory(config=FAST, controllers={"follower": FOLLOWER})
    with sup.client() as c:
        c.create(Resource("ns1", "Ints.test.cosihost.dev", "a", {"value": 5}))
        c.create(Resource("ns2", "Ints.test.cosihost.dev", "a", {"value": 50}))
        c.create(Resource("config", "Ints.test.cosihost.dev", "which", {"value": 1}))

        def out():
            res = c.list("out", "Strs.test.cosihost.dev")
            return res[0].spec if res else None
        wait_for(lambda: out() == {"value": "5", "source": "ns1"}, message="following ns1")
        c.create(Resource("ns1", "Ints.test.cosihost.dev", "b", {"value": 1}))
        wait_for(lambda: out() == {"value": "6", "source": "ns1"}, message="a change in ns1 to wake it")
        c.modify("config", "Ints.test.cosihost.dev", "which", lambda s: s.update(value=2))
        wait_for(lambda: out() == {"value": "50", "source": "ns2"}, message="following ns2")
        inputs = sup.wait_status("test.Follower", lambda s: len(s["inputs"]) == 2 and
                                 s["inputs"][1][0] == "ns2")["inputs"]
        assert ["ns1", "Ints.test.cosihost.dev", "weak", None] not in inputs
        c.create(Resource("ns2", "Ints.test.cosihost.dev", "b", {"value": 2}))
        wait_for(lambda: out() == {"value": "52", "source": "ns2"}, message="a change in ns2 to wake it")


DEFINER = '''
from cosihost import Controller, Output, ResourceDefinition

class Definer(Controller):
    name = "test.Definer"
    outputs = [Output("Gadgets.test.cosihost.dev")]
    definitions = [ResourceDefinition("Gadgets.test.cosihost.dev", aliases=("gadget",))]

    def reconcile(self, rt):
        pass
'''


def test_a_removed_controllers_definitions_go_with_it(supervisor_factory):
    sup = supervisor_factory(config=FAST, controllers={"definer": DEFINER})
    with sup.client() as c:
        defined = lambda: {r.metadata.id for r in c.list("meta", "ResourceDefinitions.meta.cosihost.dev")}
        wait_for(lambda: "Gadgets.test.cosihost.dev" in defined(), message="the gadget definition")
        own = defined() - {"Gadgets.test.cosihost.dev"}
        assert own, "the supervisor defines its own types"
        (sup.controllers_dir / "definer.py").unlink()
        c.call("reload")
        wait_for(lambda: "Gadgets.test.cosihost.dev" not in defined(), message="the definition to go")
        assert defined() == own


LOADER = """
import sys, msgpack
from cosihost.worker.entry import load_module
config = msgpack.unpackb(sys.stdin.buffer.read())
module = load_module(config["module"], config["source"], config["code"])
print(module.WHAT)
"""


def _run_loader(config) -> subprocess.CompletedProcess:
    import msgpack
    return subprocess.run([sys.executable, "-c", LOADER], input=msgpack.packb(config),
                          capture_output=True, timeout=30)


def _load_in_child(config) -> str:
    done = _run_loader(config)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().strip()


def test_controllers_start_from_code_the_supervisor_compiled_once(tmp_path):
    """A controller process does not compile its module (that cost it 1.4 MB
    of private memory): the supervisor sends the probed source compiled once.
    Bytes that are not the probed ones go as source, compiled where they run."""
    from cosihost.settings import Timing
    from cosihost.supervisor.processes import Slot, module_digest, worker_config

    module = tmp_path / "mod.py"
    module.write_text("WHAT = 'probed'\n")
    slot = Slot("test.Mod", module, "Mod", module_digest(module), None)
    config = worker_config(slot, runtime_dir=tmp_path, timing=Timing())
    assert config["code"] and config["source"] is None
    assert worker_config(slot, runtime_dir=tmp_path, timing=Timing())["code"] is config["code"]
    assert _load_in_child(config) == "probed"

    module.write_text("WHAT = 'edited'\n")  # changed since the probe, not reloaded yet
    config = worker_config(slot, runtime_dir=tmp_path, timing=Timing())
    assert config["code"] is None and config["source"] == b"WHAT = 'edited'\n"
    assert _load_in_child(config) == "edited"

    # Compiled in the controller as an import compiles it: none of the loader's
    # own __future__ flags (annotations would be strings, and this would load).
    module.write_text("WHAT: NotDefinedAnywhere = 'x'\n")
    config = worker_config(slot, runtime_dir=tmp_path, timing=Timing())
    assert config["source"] is not None
    done = _run_loader(config)
    assert done.returncode != 0 and b"NameError" in done.stderr

    module.write_text("WHAT = (\n")  # probed broken: the controller reports the error itself
    slot.digest = module_digest(module)
    config = worker_config(slot, runtime_dir=tmp_path, timing=Timing())
    assert config["code"] is None and config["source"] == b"WHAT = (\n"
