"""A removed controller's outputs and definitions: kept (the default) with
their definitions still readable, marked orphaned; or destroyed, when the
config says so, except what another holder's finalizer still keeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cosihost.testing import process_gone, wait_for

from test_supervision import FAST

THINGS = "Things.test.cosihost.dev"
OTHERS = "Others.test.cosihost.dev"
DEFINITIONS = "ResourceDefinitions.meta.cosihost.dev"
MAKER = f'''
from cosihost import Controller, Output, ResourceDefinition

class Maker(Controller):
    name = "test.Maker"
    outputs = [Output("{THINGS}", kind="exclusive")]
    definitions = [ResourceDefinition("{THINGS}", aliases=("thing", "things"), default_namespace="made")]

    def reconcile(self, rt):
        for rid in ("a", "b", "c"):
            rt.modify("made", "{THINGS}", rid, lambda s: s.update(ok=True))
'''


def _cosihost(sup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cosihost", *args], capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, COSIHOST_RUNTIME_DIR=str(sup.runtime_dir)))


def _remove(sup, module: str, name: str) -> None:
    pid = sup.controller_pid(name)
    (sup.controllers_dir / module).unlink()
    with sup.client() as c:
        c.call("reload")
    wait_for(lambda: process_gone(pid), message="the removed controller's process to end")
    wait_for(lambda: name not in sup.statuses(), message="its status to go")


def _ids(sup, namespace: str = "made", type: str = THINGS) -> list[str]:
    with sup.client() as c:
        return [r.metadata.id for r in c.list(namespace, type)]


def test_kept_outputs_stay_findable_by_alias_under_an_orphaned_definition(supervisor_factory) -> None:
    sup = supervisor_factory(config=FAST, controllers={"maker": MAKER})
    wait_for(lambda: _ids(sup) == ["a", "b", "c"], message="the outputs")
    _remove(sup, "maker.py", "test.Maker")
    assert _ids(sup) == ["a", "b", "c"]
    listed = _cosihost(sup, "get", "things", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert [item["metadata"]["id"] for item in json.loads(listed.stdout)["items"]] == ["a", "b", "c"]
    with sup.client() as c:
        spec = c.get("meta", DEFINITIONS, THINGS).spec
    assert spec["orphaned"] is True and spec["orphaned_by"] == "test.Maker" and spec["namespaces"] == ["made"]
    assert "test.Maker" in _cosihost(sup, "get", "rd", THINGS).stdout


def test_destroy_removes_what_nobody_holds(supervisor_factory) -> None:
    sup = supervisor_factory(config=FAST + "[controllers]\nremoved_outputs = \"destroy\"\n",
                             controllers={"maker": MAKER})
    wait_for(lambda: _ids(sup) == ["a", "b", "c"], message="the outputs")
    with sup.client(admin=True) as admin:
        admin.add_finalizer("made", THINGS, "b", "someone.Else")
    _remove(sup, "maker.py", "test.Maker")
    wait_for(lambda: _ids(sup) == ["b"], message="the unheld outputs destroyed")
    with sup.client() as c:
        held = c.get("made", THINGS, "b")
        assert held.metadata.phase == "tearing-down" and held.metadata.finalizers == ["someone.Else"]
        definition = c.get("meta", DEFINITIONS, THINGS).spec     # "b" is left: still findable
    assert definition["orphaned"] is True
    # Its last finalizer gone, the supervisor destroys it: nobody else may.
    with sup.client(admin=True) as admin:
        admin.remove_finalizer("made", THINGS, "b", "someone.Else")
    wait_for(lambda: _ids(sup) == [], message="the released output destroyed")


def test_a_returning_controller_keeps_what_it_owned_when_released(supervisor_factory) -> None:
    """A held output is the controller's again once a controller of that name
    runs: its release then destroys nothing (another removed controller's
    output, released after it, is destroyed: the release was seen)."""
    other = (MAKER.replace("test.Maker", "test.Other").replace(THINGS, OTHERS).replace("Maker(", "Other(")
             .replace('"thing", "things"', '"other", "others"'))
    sup = supervisor_factory(config=FAST + "[controllers]\nremoved_outputs = \"destroy\"\n",
                             controllers={"maker": MAKER, "other": other.replace('"made"', '"other"')})
    wait_for(lambda: _ids(sup) == ["a", "b", "c"] and _ids(sup, "other", OTHERS) == ["a", "b", "c"],
             message="the outputs")
    with sup.client(admin=True) as admin:
        admin.add_finalizer("made", THINGS, "b", "someone.Else")
        admin.add_finalizer("other", OTHERS, "b", "someone.Else")
    _remove(sup, "maker.py", "test.Maker")
    _remove(sup, "other.py", "test.Other")
    wait_for(lambda: _ids(sup) == ["b"] and _ids(sup, "other", OTHERS) == ["b"], message="the unheld destroyed")
    sup.write_controller("maker", MAKER)
    with sup.client() as c:
        c.call("reload")
    wait_for(lambda: "a" in _ids(sup), message="the maker back, writing its outputs again")
    with sup.client(admin=True) as admin:
        admin.remove_finalizer("made", THINGS, "b", "someone.Else")
        admin.remove_finalizer("other", OTHERS, "b", "someone.Else")
    wait_for(lambda: _ids(sup, "other", OTHERS) == [], message="the other's released output destroyed")
    with sup.client() as c:  # its owner runs: it is the owner's to destroy, not the supervisor's
        assert c.get("made", THINGS, "b").metadata.finalizers == []
