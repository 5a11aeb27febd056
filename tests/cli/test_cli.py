"""Every command of DESIGN section 5, run as the real executable."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cosihost import Resource
from cosihost.testing import wait_for

from cli_helpers import SHOP, Cli  # type: ignore[import-not-found]

WIDGETS = "Widgets.test.cosihost.dev"
ORDERS = "Orders.test.cosihost.dev"
TOKENS = "Tokens.test.cosihost.dev"
STATUS = "ControllerStatuses.runtime.cosihost.dev"


def _order(shop, oid, color, size=1, labels=None):
    with shop.client() as c:
        c.create(Resource("shop", ORDERS, oid, {"color": color, "size": size}, labels=labels))
        wait_for(lambda: c.list("shop", WIDGETS, id_regex=f"^{oid}$"), message=f"widget {oid}")


def _rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()]


# -- get -------------------------------------------------------------------------

def test_get_prints_a_table_with_the_types_print_columns(shop, cli):
    _order(shop, "t1", "red", size=3)
    rows = _rows(cli.ok("get", "widgets"))
    assert rows[0] == ["NAMESPACE", "TYPE", "ID", "VERSION", "COLOR", "SIZE", "AGE"]
    assert ["shop", "Widgets", "t1", "1", "red", "3"] in [r[:6] for r in rows[1:]]
    one = _rows(cli.ok("get", "widget", "t1"))
    assert [r[:6] for r in one[1:]] == [["shop", "Widgets", "t1", "1", "red", "3"]]
    assert re.fullmatch(r"\d+s", one[1][6]), one   # AGE, as kubectl shows it


def test_type_names_aliases_and_plural_are_case_insensitive(shop, cli):
    _order(shop, "t2", "blue")
    expected = cli.ok("get", "WIDGET", "t2")
    assert "t2" in expected
    for name in ("widgets", "Widget", WIDGETS, WIDGETS.lower(), "Widgets"):
        assert cli.inproc("get", name, "t2") == (0, expected, "")
    assert cli.inproc("get", "widgets", "t2", "-n", "shop") == (0, expected, "")
    assert "unknown type 'gadgets'" in cli.fails("get", "gadgets")
    # A dotted name nobody defined is taken literally, in namespace "default".
    done = cli("get", "Nothing.test.cosihost.dev")
    assert done.returncode == 0 and "no resource definition" in done.stderr


def test_get_json_and_yaml_print_whole_resources(shop, cli):
    _order(shop, "t3", "green")
    with shop.client() as c:
        want = c.get("shop", WIDGETS, "t3").to_dict()
    assert json.loads(cli.ok("get", "widgets", "t3", "-o", "json")) == want
    assert list(yaml.safe_load_all(cli.ok("get", "widgets", "t3", "-o", "yaml"))) == [want]
    listed = json.loads(cli.ok("get", "widgets", "-o", "json"))
    assert set(listed) == {"kind", "items"} and listed["kind"] == "List"
    many = listed["items"]
    assert want in many and all(set(d) == {"metadata", "spec"} for d in many)
    assert list(yaml.safe_load_all(cli.ok("get", "widgets", "-o", "yaml"))) == [listed]


def test_get_filters_by_label_selector(shop, cli):
    with shop.client() as c:
        for oid, tier in (("l1", "gold"), ("l2", "silver"), ("l3", "bronze")):
            c.create(Resource("labels", ORDERS, oid, {}, labels={"tier": tier}))
    ids = lambda *args: [r[2] for r in _rows(cli.ok("get", "orders", "-n", "labels", *args))[1:]]  # noqa: E731
    assert ids("-l", "tier=gold") == ["l1"]
    assert ids("-l", "tier in (gold,silver)") == ["l1", "l2"]
    assert ids("-l", "tier=gold", "-l", "tier=bronze") == ["l1", "l3"]   # repeated -l: OR
    assert ids("-l", "tier!=gold") == ["l2", "l3"]
    assert "does not combine" in cli("get", "orders", "l1", "-l", "tier").stderr


def test_get_errors_are_one_line(shop, cli):
    assert "doesn't exist" in cli.fails("get", "widgets", "nope")
    assert "selector" in cli.fails("get", "widgets", "-l", "a in b").lower()


def test_sensitive_specs_are_hidden_unless_asked(shop, cli):
    with shop.client() as c:
        c.create(Resource("vault", TOKENS, "api", {"value": "s3cret"}))
    for args in (("get", "tokens"), ("get", "token", "api", "-o", "json"), ("get", "tokens", "-o", "yaml"),
                 ("get", "tokens", "-o", "wide")):
        out = cli.ok(*args)
        assert "s3cret" not in out and "(sensitive)" in out
    assert "s3cret" in cli.ok("get", "tokens", "--show-sensitive")
    assert json.loads(cli.ok("get", "token", "api", "-o", "json", "--show-sensitive"))["spec"] == {"value": "s3cret"}


def test_watch_json_prints_one_event_per_line(shop, cli):
    with shop.client() as c:
        c.create(Resource("watched", ORDERS, "w1", {"color": "red"}))
        lines = cli.stream("get", "orders", "-n", "watched", "--watch", "-o", "json")
        first = json.loads(lines.next())
        assert (first["event"], first["metadata"]["id"]) == ("created", "w1")
        assert json.loads(lines.next()) == {"event": "bootstrapped"}
        c.create(Resource("watched", ORDERS, "w2", {"color": "blue"}))
        c.modify("watched", ORDERS, "w2", lambda s: s.update(color="teal"))
        c.destroy("watched", ORDERS, "w1")
        events = [json.loads(lines.next()) for _ in range(3)]
    assert [(e["event"], e["metadata"]["id"]) for e in events] == [
        ("created", "w2"), ("updated", "w2"), ("destroyed", "w1")]
    assert events[1]["spec"] == {"color": "teal"}


def test_watch_table_marks_created_and_destroyed(shop, cli):
    with shop.client() as c:
        c.create(Resource("marks", ORDERS, "m1", {"color": "red"}))
        lines = cli.stream("get", "orders", "-n", "marks", "-w")
        assert lines.next().split() == ["*", "NAMESPACE", "TYPE", "ID", "VERSION", "COLOR", "AGE"]
        assert lines.next().split()[:6] == ["+", "marks", "Orders", "m1", "1", "red"]
        c.modify("marks", ORDERS, "m1", lambda s: s.update(color="pink"))
        updated = lines.next()
        assert updated.startswith(" ") and updated.split()[:5] == ["marks", "Orders", "m1", "2", "pink"]
        c.destroy("marks", ORDERS, "m1")
        assert lines.next().split()[:6] == ["-", "marks", "Orders", "m1", "2", "pink"]


def test_watch_of_one_id_waits_for_it(shop, cli):
    with shop.client() as c:
        lines = cli.stream("get", "orders", "later", "-n", "one", "--watch", "-o", "json")
        c.create(Resource("one", ORDERS, "other", {}))
        c.create(Resource("one", ORDERS, "later", {"color": "red"}))
        event = json.loads(lines.next())
    assert (event["event"], event["metadata"]["id"], event["spec"]) == ("created", "later", {"color": "red"})


# -- apply -----------------------------------------------------------------------

def test_apply_creates_then_updates_owner_less_resources(shop, cli, tmp_path):
    path = tmp_path / "orders.yaml"
    path.write_text("""
metadata: {type: order, id: a1, labels: {tier: gold}}
spec: {color: red}
---
- metadata: {type: Orders.test.cosihost.dev, namespace: shop, id: a2}
  spec: {color: blue}
- metadata: {type: ORDERS, id: a3}
  spec: {color: black}
""")
    out = cli.ok("apply", "-f", str(path))
    assert out.splitlines() == [f"shop/{ORDERS}/a1 created", f"shop/{ORDERS}/a2 created",
                                f"shop/{ORDERS}/a3 created"]
    assert cli.ok("apply", "-f", str(path)).count("unchanged") == 3
    with shop.client() as c:
        assert c.get("shop", ORDERS, "a1").metadata.labels == {"tier": "gold"}
        wait_for(lambda: c.list("shop", WIDGETS, id_regex="^a3$"), message="the widget of a3")
    # JSON (a list), and what `get -o yaml` printed applies again.
    js = tmp_path / "orders.json"
    js.write_text(json.dumps([{"metadata": {"type": "order", "id": "a1"}, "spec": {"color": "white"}}]))
    assert cli.ok("apply", "-f", str(js)) == f"shop/{ORDERS}/a1 configured\n"
    exported = tmp_path / "a1.yaml"
    exported.write_text(cli.ok("get", "order", "a1", "-o", "yaml").replace("white", "grey"))
    assert cli.ok("apply", "-f", str(exported)) == f"shop/{ORDERS}/a1 configured\n"
    assert cli.ok("apply", "-f", "-", input=exported.read_text()) == f"shop/{ORDERS}/a1 unchanged\n"
    with shop.client() as c:
        res = c.get("shop", ORDERS, "a1")
    assert res.spec == {"color": "grey"} and res.metadata.labels == {"tier": "gold"}


@pytest.mark.parametrize("content, message", [
    ("metadata: {type: order}\nspec: {}\n", "metadata.id is required"),
    ("metadata: [1, 2\n", "not valid YAML"),
    ("metadata: {type: gadget, id: x}\n", "unknown type 'gadget'"),
    ("metadata: {type: order, id: x, colour: red}\n", "unknown metadata field"),
    ("- 1\n- 2\n", "a resource is a mapping"),
    ("spec: {}\n", "a resource is a mapping with 'metadata'"),
])
def test_apply_refuses_a_bad_file_and_writes_nothing(shop, cli, tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text("metadata: {type: order, id: never}\nspec: {}\n---\n" + content)
    code, out, err = cli.inproc("apply", "-f", str(path))
    assert code == 1 and out == "" and message in err and len(err.splitlines()) == 1
    with shop.client() as c:
        assert not c.list("shop", ORDERS, id_regex="^never$")


def test_apply_errors_are_one_line(shop, cli, tmp_path):
    assert "cannot read" in cli.fails("apply", "-f", str(tmp_path / "missing.yaml"))
    (tmp_path / "empty.yaml").write_text("---\n")
    assert "no resources" in cli.fails("apply", "-f", str(tmp_path / "empty.yaml"))
    (tmp_path / "bad.yaml").write_text("metadata: {type: order, id: [x}\n")
    assert "not valid YAML" in cli.fails("apply", "-f", str(tmp_path / "bad.yaml"))
    _order(shop, "owned", "red")
    path = tmp_path / "w.yaml"
    path.write_text("metadata: {type: widget, id: owned}\nspec: {color: blue}\n")
    assert "belongs to controller test.WidgetMaker" in cli.fails("apply", "-f", str(path))
    path.write_text("metadata: {type: widget, id: fresh}\nspec: {color: blue}\n")
    assert "exclusive output of test.WidgetMaker" in cli.fails("apply", "-f", str(path))  # AccessDeniedError


def test_apply_is_all_or_nothing(shop, cli, tmp_path):
    """A file whose last resource is refused (at the supervisor, not while
    parsing) applies nothing, and says nothing was applied by exiting 1."""
    path = tmp_path / "mixed.yaml"
    path.write_text("metadata: {type: order, id: first}\nspec: {color: red}\n---\n"
                    "metadata: {type: order, id: second}\nspec: {color: blue}\n---\n"
                    "metadata: {type: widget, id: forged}\nspec: {color: blue}\n")
    assert "exclusive output of test.WidgetMaker" in cli.fails("apply", "-f", str(path))
    with shop.client() as c:
        assert not c.list("shop", ORDERS, id_regex="^(first|second)$")
    path.write_text("metadata: {type: order, id: twice}\nspec: {color: red}\n---\n"
                    "metadata: {type: order, id: twice}\nspec: {color: blue}\n")
    assert cli.ok("apply", "-f", str(path)).splitlines() == [f"shop/{ORDERS}/twice created",
                                                            f"shop/{ORDERS}/twice configured"]
    with shop.client() as c:
        assert c.get("shop", ORDERS, "twice").spec == {"color": "blue"}


# -- delete ----------------------------------------------------------------------

def test_delete_waits_for_the_controller_to_let_go(shop, cli):
    _order(shop, "d1", "red")
    with shop.client() as c:
        wait_for(lambda: c.get("shop", ORDERS, "d1").metadata.finalizers, message="the finalizer")
        assert cli.ok("delete", "order", "d1") == f"shop/{ORDERS}/d1 deleted\n"
        assert not c.list("shop", ORDERS, id_regex="^d1$")
        assert not c.list("shop", WIDGETS, id_regex="^d1$")


def test_delete_no_wait_and_timeout(shop, cli):
    with shop.client() as c:
        c.create(Resource("held", ORDERS, "h1", {}))
        c.add_finalizer("held", ORDERS, "h1", "someone")
        assert cli.ok("delete", "order", "h1", "-n", "held", "--no-wait") == \
            f"held/{ORDERS}/h1 tearing down; held by someone\n"
        assert "still held by someone" in cli.fails("delete", "order", "h1", "-n", "held", "--timeout", "0.3")
        assert c.get("held", ORDERS, "h1").metadata.phase == "tearing-down"
        c.remove_finalizer("held", ORDERS, "h1", "someone")
    assert cli.ok("delete", "order", "h1", "-n", "held").endswith("deleted\n")
    assert "doesn't exist" in cli.fails("delete", "order", "h1", "-n", "held")


def test_delete_of_a_controllers_output_is_refused(shop, cli):
    _order(shop, "d2", "red")
    assert "exclusive output of test.WidgetMaker" in cli.fails("delete", "widget", "d2")


# -- controllers / restart / reload / graph -----------------------------------------

def test_controllers_prints_the_controller_statuses(shop, cli):
    rows = _rows(cli.ok("controllers"))
    assert rows[0][:5] == ["NAME", "STATE", "PID", "RESTARTS", "UPTIME"]
    names = {r[0]: r for r in rows[1:]}
    assert set(names) == {"test.Auditor", "test.WidgetMaker"}
    assert names["test.WidgetMaker"][1] == "running"
    assert int(names["test.WidgetMaker"][2]) == shop.controller_pid("test.WidgetMaker")
    listed = json.loads(cli.ok("controllers", "-o", "json"))
    assert listed["kind"] == "List"
    docs = listed["items"]
    assert [d["metadata"]["id"] for d in docs] == ["test.Auditor", "test.WidgetMaker"]
    as_yaml = yaml.safe_load(cli.ok("controllers", "-o", "yaml"))   # the same List (usage moves on)
    assert as_yaml["kind"] == "List" and [(d["metadata"]["id"], set(d["spec"])) for d in as_yaml["items"]] == \
        [(d["metadata"]["id"], set(d["spec"])) for d in docs]
    assert all(d["metadata"]["type"] == STATUS and d["metadata"]["namespace"] == "runtime" for d in docs)
    assert {"state", "pid", "restarts", "last_exit", "limits", "usage"} <= set(docs[0]["spec"])


def test_graph_draws_inputs_and_outputs_by_kind(shop, cli):
    dot = cli.ok("graph")
    assert dot.startswith("digraph cosihost {") and dot.rstrip().endswith("}")
    assert '"c:test.WidgetMaker" [shape=box' in dot
    assert f'"t:{WIDGETS}" [shape=ellipse' in dot
    strong = next(line for line in dot.splitlines() if f'"t:{ORDERS}" -> "c:test.WidgetMaker"' in line)
    weak = next(line for line in dot.splitlines() if f'"t:{WIDGETS}" -> "c:test.Auditor"' in line)
    exclusive = next(line for line in dot.splitlines() if f'"c:test.WidgetMaker" -> "t:{WIDGETS}"' in line)
    shared = next(line for line in dot.splitlines() if '"c:test.Auditor" -> "t:Receipts' in line)
    assert "style=bold" in strong and "strong" in strong
    assert "style=dashed" in weak and "weak" in weak
    assert "exclusive" in exclusive and "shared" in shared and "arrowhead=onormal" in shared
    assert cli.ok("graph", "--controllers", str(shop.controllers_dir)) == dot   # offline, same picture


def test_graphviz_draws_the_graph(shop, cli):
    if not shutil.which("dot"):
        pytest.skip("dot is not on PATH (apt-get install -y graphviz)")
    done = subprocess.run(["dot", "-Tsvg"], input=cli.ok("graph"), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "<svg" in done.stdout, done.stderr


def test_restart_and_reload(supervisor_factory, tmp_path):
    sup = supervisor_factory(controllers={"shop": SHOP})
    cli = Cli(sup.runtime_dir)
    before = sup.controller_pid("test.Auditor")
    other = sup.controller_pid("test.WidgetMaker")
    out = cli.ok("restart", "test.Auditor")
    assert out.startswith("restarted test.Auditor (pid ")
    after = sup.controller_pid("test.Auditor")
    assert after != before and sup.controller_pid("test.WidgetMaker") == other
    assert "no running controller 'test.Nobody'" in cli.fails("restart", "test.Nobody")

    sup.write_controller("extra", '''
from cosihost import Controller, Output

class Extra(Controller):
    name = "test.Extra"
    outputs = [Output("Extras.test.cosihost.dev")]

    def reconcile(self, rt):
        rt.modify("default", "Extras.test.cosihost.dev", "x", lambda s: s.update(ok=True))
''')
    assert cli.ok("reload") == "started: test.Extra\n"
    assert cli.ok("reload") == "reloaded: nothing changed\n"
    assert "test.Extra" in cli.ok("controllers")

    # A watch whose supervisor goes away says so and ends, instead of hanging.
    lines = cli.stream("get", "cs", "--watch", "-o", "json")
    try:
        assert json.loads(lines.next())["event"] == "created"
        sup.stop()
        assert lines.proc.wait(timeout=20) == 1
        assert "stopped answering" in lines.proc.stderr.read()
    finally:
        cli.close()


# -- finding the supervisor, completion ------------------------------------------------

def test_no_supervisor_is_one_clear_line(tmp_path):
    cli = Cli(tmp_path / "nothing-here")
    assert f"no supervisor answering at {tmp_path / 'nothing-here'}" in cli.fails("get", "links")
    for args in (("controllers",), ("reload",), ("restart", "x"), ("delete", "x", "y"), ("graph",)):
        code, out, err = cli.inproc(*args)
        assert code == 1 and err.startswith("Error: no supervisor answering at") and len(err.splitlines()) == 1
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "api.sock").touch()   # a socket file nobody serves
    assert f"no supervisor answering at {stale}" in cli.fails("get", "links", "--runtime-dir", str(stale))


def test_runtime_dir_option_beats_the_environment(shop, tmp_path):
    cli = Cli(tmp_path / "elsewhere")
    assert "NAME" in cli.ok("controllers", "--runtime-dir", str(shop.runtime_dir))


def _completion(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("cosihost")
    cmd = [str(script)] if script.exists() else [
        sys.executable, "-c", "from cosihost.cli import main; main(prog_name='cosihost')"]
    return subprocess.run(cmd + args, capture_output=True, text=True, timeout=30, env=env)


def test_shell_completion(shop):
    env = dict(os.environ, _COSIHOST_COMPLETE="bash_source")
    done = _completion([], env)
    assert done.returncode == 0 and "complete -o nosort -F _cosihost_completion cosihost" in done.stdout
    env = dict(os.environ, _COSIHOST_COMPLETE="bash_complete", COMP_WORDS="cosihost get wid", COMP_CWORD="2",
               COSIHOST_RUNTIME_DIR=str(shop.runtime_dir))
    assert "plain,widget" in _completion([], env).stdout.split()
    env.update(COMP_WORDS="cosihost res", COMP_CWORD="1")
    assert "plain,restart" in _completion([], env).stdout.split()
