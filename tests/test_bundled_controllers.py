"""The bundled controllers (controllers/) under a real supervisor, on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from cosihost import NotFoundError
from cosihost.testing import ControllerHarness, SupervisorProcess, load_controller, wait_for

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "controllers"
LINKS = "LinkStatuses.net.cosihost.dev"
CONFIGS = "HostnameConfigs.net.cosihost.dev"
SPECS = "HostnameSpecs.net.cosihost.dev"
DEFINITIONS = "ResourceDefinitions.meta.cosihost.dev"
STATUS = "ControllerStatuses.runtime.cosihost.dev"
SPEC_CONTROLLER = "net.HostnameSpecController"


@pytest.fixture(scope="module")
def device() -> Iterator[SupervisorProcess]:
    """A supervisor running a copy of every bundled controller module."""
    modules = {p.name: p.read_text() for p in BUNDLED.glob("*.py") if not p.name.startswith("_")}
    sup = SupervisorProcess(controllers=modules)
    try:
        sup.start()
        yield sup
    finally:
        sup.cleanup()


def cosihost(sup: SupervisorProcess, *args: str, input: str | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "cosihost", *args], capture_output=True, text=True, input=input,
                          timeout=30, env=dict(os.environ, COSIHOST_RUNTIME_DIR=str(sup.runtime_dir)))
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_bundled_controller_runs(device):
    statuses = device.statuses()
    assert {"net.LinkStatusController", "net.AddressStatusController", "net.HostnameStatusController",
            SPEC_CONTROLLER, "system.CPUStatsController", "system.MemoryStatsController",
            "system.DiskStatsController"} <= set(statuses)
    assert {s["state"] for s in statuses.values()} == {"running"}, statuses


def test_get_links_shows_the_real_interfaces(device):
    names = set(psutil.net_if_stats())
    def ids() -> set[str] | None:
        found = {item["metadata"]["id"] for item in json.loads(cosihost(device, "get", "links", "-o", "json"))["items"]}
        return found if names <= found else None
    assert wait_for(ids, message="every interface psutil knows") >= names
    table = cosihost(device, "get", "links").splitlines()
    assert table[0].split()[:4] == ["NAMESPACE", "TYPE", "ID", "VERSION"]
    if "lo" in names:
        lo = next(line.split() for line in table if line.split()[2] == "lo")
        assert lo[:3] == ["network", "LinkStatuses", "lo"] and "loopback" in lo
        loopbacks = cosihost(device, "get", "linkstatus", "-l", "kind=loopback").splitlines()[1:]
        assert [line.split()[2] for line in loopbacks] == ["lo"]


def test_the_other_statuses_match_the_machine(device):
    with device.client() as c:
        host = c.get("network", "HostnameStatuses.net.cosihost.dev", "hostname").spec
        assert host["hostname"] == os.uname().nodename
        cpu = c.get("system", "CPUStats.system.cosihost.dev", "cpu").spec
        assert cpu["logical"] == psutil.cpu_count()
        memory = c.get("system", "MemoryStats.system.cosihost.dev", "memory").spec
        assert memory["total"] == psutil.virtual_memory().total
        disks = {r.metadata.id for r in c.list("system", "DiskStats.system.cosihost.dev")}
        assert disks <= {p.mountpoint for p in psutil.disk_partitions()}
        addresses = [r.spec for r in c.list("network", "AddressStatuses.net.cosihost.dev")]
    mine = {(link, a.address) for link, addrs in psutil.net_if_addrs().items() for a in addrs
            if a.family.name in ("AF_INET",)}
    assert mine <= {(a["link"], a["address"]) for a in addresses}


def test_every_declared_type_has_a_definition(device):
    with device.client() as c:
        defined = {r.metadata.id: r.spec for r in c.list("meta", DEFINITIONS)}
        for status in c.list("runtime", STATUS):
            for typ, _kind in status.spec["outputs"]:
                assert typ in defined, f"{status.metadata.id} outputs {typ} without a definition"
            for _ns, typ, _kind, _id in status.spec["inputs"]:
                assert typ in defined, f"{status.metadata.id} reads {typ} without a definition"
    links = defined[LINKS]
    assert {"linkstatus", "links"} <= set(links["aliases"]) and links["default_namespace"] == "network"


def test_hostname_config_chain_with_a_finalizer(device, tmp_path):
    before = os.uname().nodename
    config = tmp_path / "hostname.yaml"
    config.write_text("metadata: {type: hostnameconfig, id: hostname}\nspec: {hostname: edge-7.example.org}\n")
    assert cosihost(device, "apply", "-f", str(config)) == f"config/{CONFIGS}/hostname created\n"
    with device.client() as c:
        spec = wait_for(lambda: _spec(c, "network", SPECS, "hostname"), message="the derived spec")
        assert (spec["hostname"], spec["domainname"], spec["valid"]) == ("edge-7", "example.org", True)
        wait_for(lambda: SPEC_CONTROLLER in c.get("config", CONFIGS, "hostname").metadata.finalizers,
                 message="the controller's finalizer on the config")

        out = cosihost(device, "delete", "hostnameconfig", "hostname", "--no-wait")
        assert "tearing down" in out or "deleted" in out
        wait_for(lambda: _spec(c, "network", SPECS, "hostname") is None, message="the spec to go")
        wait_for(lambda: not _finalizers(c), message="the finalizer to be removed")
        assert cosihost(device, "delete", "hostnameconfig", "hostname").endswith("deleted\n")
        assert _spec(c, "config", CONFIGS, "hostname") is None
    assert os.uname().nodename == before   # derived, never applied to the machine


def test_graph_of_the_bundled_controllers_is_the_documented_one(device):
    live = cosihost(device, "graph")
    offline = cosihost(device, "graph", "--controllers", str(BUNDLED))
    assert live == offline
    documented = (ROOT / "docs" / "graph.dot").read_text()
    assert live == documented, "regenerate: cosihost graph --controllers controllers > docs/graph.dot"


def test_link_controller_in_the_harness():
    with ControllerHarness(load_controller(BUNDLED / "links.py")) as h:
        for name in psutil.net_if_stats():
            res = h.wait_for_resource("network", LINKS, name)
            assert res.metadata.labels["kind"] == res.spec["kind"]
        h.wait_idle()
        assert h.rt.requeue_at is not None   # refreshed on a period


def _spec(c: Any, ns: str, typ: str, rid: str) -> Any:
    try:
        return c.get(ns, typ, rid).spec
    except NotFoundError:
        return None


def _finalizers(c: Any) -> list[str]:
    return c.get("config", CONFIGS, "hostname").metadata.finalizers
