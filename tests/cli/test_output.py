"""Output as kubectl prints it (issue: `-o json` printed one object per
line, so `| python3 -m json.tool` failed with "Extra data"; `controllers
-o yaml` was refused; tables showed epoch floats and raw byte counts)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Iterator

import pytest
import yaml

from cosihost import Resource, ResourceDefinition
from cosihost.cli.output import human_bytes, human_duration
from cosihost.testing import SupervisorProcess

from cli_helpers import Cli  # type: ignore[import-not-found]

PARCELS = "Parcels.test.cosihost.dev"
DEPOT = f'''
from cosihost import Controller, Output, ResourceDefinition

class Depot(Controller):
    """Declares how parcels are shown; users create them."""
    name = "test.Depot"
    outputs = [Output("Depots.test.cosihost.dev")]
    definitions = [
        ResourceDefinition("{PARCELS}", aliases=("parcel", "parcels"), default_namespace="depot",
                           print_columns=(("WEIGHT", "weight"), ("SIZE", "size", "bytes"),
                                          ("SENT", "sent", "timestamp"), ("TRANSIT", "transit", "duration"))),
    ]

    def reconcile(self, rt):
        pass
'''
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def depot() -> Iterator[tuple[SupervisorProcess, Cli]]:
    sup = SupervisorProcess(controllers={"depot": DEPOT})
    cli = Cli(sup.runtime_dir)
    try:
        sup.start()
        now = time.time()
        with sup.client() as c:
            c.create(Resource("depot", PARCELS, "p1", {"weight": 2, "size": 5 * MIB, "sent": now - 5 * 3600 - 30,
                                                       "transit": 150}))
            c.create(Resource("depot", PARCELS, "p2", {"weight": 1, "size": 3 * 1024 ** 3, "sent": now - 3 * 86400,
                                                       "transit": 90000}))
        yield sup, cli
    finally:
        cli.close()
        sup.cleanup()


def test_json_of_many_is_one_list_document(depot):
    _sup, cli = depot
    out = cli.ok("get", "parcels", "-o", "json")
    tool = subprocess.run([sys.executable, "-m", "json.tool"], input=out, capture_output=True, text=True,
                          timeout=30)
    assert tool.returncode == 0, tool.stderr                  # was: "Extra data"
    doc = json.loads(out)
    assert doc["kind"] == "List" and [i["metadata"]["id"] for i in doc["items"]] == ["p1", "p2"]
    one = json.loads(cli.ok("get", "parcel", "p1", "-o", "json"))   # one named: the object itself
    assert one == doc["items"][0]
    assert yaml.safe_load(cli.ok("get", "parcels", "-o", "yaml")) == doc
    none = json.loads(cli.ok("get", "parcels", "-n", "empty", "-o", "json"))
    assert none == {"kind": "List", "items": []}


def test_a_listed_yaml_document_applies_again(depot, tmp_path):
    _sup, cli = depot
    exported = tmp_path / "parcels.yaml"
    exported.write_text(cli.ok("get", "parcels", "-o", "yaml").replace("weight: 1", "weight: 4"))
    assert cli.ok("apply", "-f", str(exported)).splitlines() == [
        f"depot/{PARCELS}/p1 unchanged", f"depot/{PARCELS}/p2 configured"]
    assert json.loads(cli.ok("get", "parcel", "p2", "-o", "json"))["spec"]["weight"] == 4


def test_every_printing_command_takes_yaml(depot):
    _sup, cli = depot
    listed = yaml.safe_load(cli.ok("controllers", "-o", "yaml"))
    assert listed["kind"] == "List" and [i["metadata"]["id"] for i in listed["items"]] == ["test.Depot"]
    summary = yaml.safe_load(cli.ok("reload", "-o", "yaml"))
    assert summary["started"] == [] and summary["refused"] == [] and summary["failed"] == []
    held = yaml.safe_load(cli.ok("finalizers", "list", "parcel", "p1", "-o", "yaml"))
    assert held["metadata"]["id"] == "p1" and held["finalizers"] == []


def test_tables_show_age_and_human_units_and_wide_keeps_raw_values(depot):
    sup, cli = depot
    lines = cli.ok("get", "parcels").splitlines()
    assert lines[0].split() == ["NAMESPACE", "TYPE", "ID", "VERSION", "WEIGHT", "SIZE", "SENT", "TRANSIT", "AGE"]
    p1, p2 = (line.split() for line in lines[1:])
    assert p1[5:8] == ["5.0MiB", "5h", "2m30s"] and p2[5:8] == ["3.0GiB", "3d", "25h"]
    assert p1[8].endswith("s") and "." not in p1[8]            # AGE: no epoch float
    with sup.client() as c:
        res = c.get("depot", PARCELS, "p1")
    wide = cli.ok("get", "parcel", "p1", "-o", "wide").splitlines()
    assert wide[0].split() == ["NAMESPACE", "TYPE", "ID", "VERSION", "WEIGHT", "SIZE", "SENT", "TRANSIT",
                               "OWNER", "PHASE", "FINALIZERS", "CREATED", "UPDATED"]
    row = wide[1].split()
    assert row[4:7] == ["2", str(5 * MIB), str(round(res.spec["sent"], 3))] and row[7] == "150"
    assert row[8:] == ["running", str(round(res.metadata.created, 3)), str(round(res.metadata.updated, 3))]
    assert json.loads(cli.ok("get", "parcel", "p1", "-o", "json"))["spec"]["size"] == 5 * MIB
    mem = cli.ok("controllers").splitlines()
    assert "MiB" in mem[1] and str(sup.controller_pid("test.Depot")) in mem[1]
    raw = cli.ok("controllers", "-o", "wide").splitlines()
    assert raw[0].split()[:7] == ["NAME", "STATE", "PID", "RESTARTS", "STARTED", "CPU", "SECONDS"]
    assert "MiB" not in raw[1]


def test_human_units_follow_kubectl():
    assert [human_duration(s) for s in (0, 59, 119, 150, 600, 7300, 12000, 30 * 3600, 2 * 86400, 200000,
                                        30 * 86400, 800 * 86400, 10 * 365 * 86400)] == [
        "0s", "59s", "119s", "2m30s", "10m", "121m", "3h20m", "30h", "2d", "2d7h", "30d", "2y70d", "10y"]
    assert [human_bytes(n) for n in (0, 1023, 1536, 5 * MIB, 150 * MIB, 3 * 1024 ** 3)] == [
        "0B", "1023B", "1.5KiB", "5.0MiB", "150MiB", "3.0GiB"]


def test_a_column_format_must_be_known():
    with pytest.raises(ValueError, match="format"):
        ResourceDefinition("Things.test.cosihost.dev", print_columns=(("SIZE", "size", "megabytes"),))
    assert ResourceDefinition("Things.test.cosihost.dev", print_columns=(("SIZE", "size", "bytes"),)).to_spec()[
        "print_columns"] == [["SIZE", "size", "bytes"]]
