"""A finalizer whose controller is gone holds a resource for ever: the CLI
way out (issue: only Python could remove it). ``finalizers list`` says who
holds it and whether they run; ``finalizers remove`` and ``delete --force``
are for the admin, and say whose cleanup they skip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from cosihost import Resource
from cosihost.testing import SupervisorProcess, wait_for

from cli_helpers import SHOP, Cli  # type: ignore[import-not-found]

ORDERS = "Orders.test.cosihost.dev"
MAKER = "test.WidgetMaker"


@pytest.fixture
def orphaned(supervisor_factory) -> Iterator[tuple[SupervisorProcess, Cli]]:
    """Orders o1 and o2, each held by test.WidgetMaker's finalizer, and the
    module of test.WidgetMaker removed: nobody will ever take them off."""
    sup = supervisor_factory(controllers={"shop": SHOP})
    cli = Cli(sup.runtime_dir)
    with sup.client() as c:
        for oid in ("o1", "o2"):
            c.create(Resource("shop", ORDERS, oid, {"color": "red"}))
            wait_for(lambda oid=oid: c.get("shop", ORDERS, oid).metadata.finalizers == [MAKER],
                     message=f"the finalizer on {oid}")
    (sup.controllers_dir / "shop.py").unlink()
    assert cli.ok("reload") == f"stopped: test.Auditor, {MAKER}\n"
    wait_for(lambda: MAKER not in sup.statuses(), message="test.WidgetMaker to be gone")
    try:
        yield sup, cli
    finally:
        cli.close()


def _user_only(sup: SupervisorProcess, tmp_path: Path) -> Cli:
    """A client that reaches the supervisor's sockets but cannot read its
    admin token, as a user in the supervisor's group is."""
    door = tmp_path / "user-view"
    door.mkdir()
    for name in ("api.sock", "events.sock"):
        (door / name).symlink_to(sup.runtime_dir / name)
    return Cli(door)


def test_a_dead_holders_finalizer_is_removed_by_the_admin(orphaned, tmp_path):
    sup, cli = orphaned
    # The type's definition went with its controller: the full name still works.
    args = (ORDERS, "o1", "-n", "shop")
    assert "still held by test.WidgetMaker" in cli.fails("delete", *args, "--timeout", "0.5")
    rows = [line.split() for line in cli.ok("finalizers", "list", *args).splitlines()]
    assert rows == [["FINALIZER", "CONTROLLER", "PID"], [MAKER, "(none)"]]
    listed = json.loads(cli.ok("finalizers", "list", *args, "-o", "json"))
    assert listed["metadata"]["phase"] == "tearing-down"
    assert listed["finalizers"] == [{"name": MAKER, "state": None, "pid": None}]

    refused = _user_only(sup, tmp_path).fails("finalizers", "remove", *args[:2], MAKER, "-n", "shop")
    assert "removing finalizers is for the admin only" in refused and "admin token" in refused
    assert "has no finalizer nobody (it has: test.WidgetMaker)" in cli.fails(
        "finalizers", "remove", *args[:2], "nobody", "-n", "shop")

    done = cli("finalizers", "remove", *args[:2], MAKER, "-n", "shop")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"shop/{ORDERS}/o1 finalizer(s) removed: {MAKER}\n"
    assert f"held by {MAKER} (no controller of that name)" in done.stderr
    assert done.stderr.startswith("warning: ") and "cleanup" in done.stderr
    assert cli.ok("delete", *args) == f"shop/{ORDERS}/o1 deleted\n"


def test_delete_force_says_what_it_overrides(orphaned, tmp_path):
    sup, cli = orphaned
    args = (ORDERS, "o2", "-n", "shop")
    refused = _user_only(sup, tmp_path).fails("delete", *args, "--force")
    assert "delete --force is for the admin only" in refused
    with sup.client() as c:
        assert c.get("shop", ORDERS, "o2").metadata.phase == "running"   # refused before touching it
    done = cli("delete", *args, "--force")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"shop/{ORDERS}/o2 deleted\n"
    assert f"held by {MAKER} (no controller of that name)" in done.stderr
    with sup.client() as c:
        assert not c.list("shop", ORDERS, id_regex="^o2$")


def test_the_warning_says_when_the_holder_still_runs(supervisor_factory):
    sup = supervisor_factory(controllers={"shop": SHOP})
    cli = Cli(sup.runtime_dir)
    with sup.client() as c:
        c.create(Resource("elsewhere", ORDERS, "x1", {}))
        c.add_finalizer("elsewhere", ORDERS, "x1", MAKER)   # a namespace WidgetMaker does not watch
    pid = sup.controller_pid(MAKER)
    assert cli.ok("finalizers", "list", "order", "x1", "-n", "elsewhere").splitlines()[1].split() == \
        [MAKER, "running", str(pid)]
    done = cli("delete", "order", "x1", "-n", "elsewhere", "--force")
    assert done.returncode == 0 and done.stdout.endswith("deleted\n"), done.stderr
    assert f"{MAKER} (controller running, pid {pid})" in done.stderr
    assert f"({MAKER} may still be doing it)" in done.stderr
