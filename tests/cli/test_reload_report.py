"""``cosihost reload`` tells what it did and fails when something is broken
(issue: a removed module reloaded as "nothing changed", and refusals exited 0),
and ``graph --controllers`` draws a broken module as the live graph does."""

from __future__ import annotations

import json

from cosihost.testing import process_gone, wait_for

from cli_helpers import SHOP, Cli  # type: ignore[import-not-found]

EXTRA = '''
from cosihost import Controller, Output

class Extra(Controller):
    name = "test.Extra"
    outputs = [Output("Extras.test.cosihost.dev")]

    def reconcile(self, rt):
        rt.modify("default", "Extras.test.cosihost.dev", "x", lambda s: s.update(ok=True))
'''
# Two controllers in one module; the second goes when the module changes.
PAIR = EXTRA + '''

class Spare(Controller):
    name = "test.Spare"
    outputs = [Output("Spares.test.cosihost.dev")]

    def reconcile(self, rt):
        pass
'''
BROKEN = "raise RuntimeError('boom at import')\n"
# Claims WidgetMaker's exclusive output: refused, naming both.
CLASH = '''
from cosihost import Controller, Output

class Clash(Controller):
    name = "test.Clash"
    outputs = [Output("Widgets.test.cosihost.dev", kind="exclusive")]

    def reconcile(self, rt):
        pass
'''


def test_reload_says_which_controllers_it_stopped(supervisor_factory):
    sup = supervisor_factory(controllers={"shop": SHOP, "extra": PAIR})
    cli = Cli(sup.runtime_dir)
    spare = sup.controller_pid("test.Spare")
    sup.write_controller("extra", EXTRA)            # the module no longer defines test.Spare
    assert cli.ok("reload") == "restarted: test.Extra\nstopped: test.Spare\n"
    wait_for(lambda: process_gone(spare), message="test.Spare's process to end")
    extra = sup.controller_pid("test.Extra")
    (sup.controllers_dir / "extra.py").unlink()     # the module is gone
    assert cli.ok("reload") == "stopped: test.Extra\n"
    wait_for(lambda: process_gone(extra), message="test.Extra's process to end")
    wait_for(lambda: "test.Extra" not in sup.statuses(), message="test.Extra's status to go")
    assert cli.ok("reload") == "reloaded: nothing changed\n"


def test_reload_exits_1_while_anything_is_refused_or_failed(supervisor_factory):
    sup = supervisor_factory(controllers={"shop": SHOP})
    cli = Cli(sup.runtime_dir)
    sup.write_controller("broken", BROKEN)
    sup.write_controller("clash", CLASH)
    sup.write_controller("extra", EXTRA)
    done = cli("reload")
    assert done.returncode == 1, done.stdout
    lines = done.stdout.splitlines()
    assert lines[0] == "started: test.Extra"
    refused = next(line for line in lines if line.startswith("refused: test.Clash: "))
    assert "exclusive" in refused and "test.WidgetMaker" in refused
    failed = next(line for line in lines if line.startswith("failed: broken.py: "))
    assert "boom at import" in failed
    assert done.stderr == "Error: reload: 1 controller(s) refused and 1 module(s) failed\n"
    # Nothing changed since, but the folder is still broken: still exit 1, still told.
    again = cli("reload", "-o", "json")
    assert again.returncode == 1
    summary = json.loads(again.stdout)
    assert (summary["started"], summary["stopped"], summary["refused"], summary["failed"]) == \
        ([], [], ["test.Clash"], ["broken.py"])
    assert "boom at import" in summary["reasons"]["broken.py"]
    (sup.controllers_dir / "broken.py").unlink()
    (sup.controllers_dir / "clash.py").unlink()
    assert cli.ok("reload") == "reloaded: nothing changed\n"
    assert {"test.Extra", "test.WidgetMaker", "test.Auditor"} == set(sup.statuses())


def test_offline_graph_draws_a_broken_module_as_the_live_graph_does(supervisor_factory):
    # Modules are taken in name order: shop.py before zclash.py, so test.Clash is the one refused.
    sup = supervisor_factory(controllers={"shop": SHOP, "broken": BROKEN, "zclash": CLASH})
    cli = Cli(sup.runtime_dir)
    live = cli.ok("graph")
    assert '"c:broken.py" [shape=box, style="rounded,dashed"' in live and "broken.py (refused)" in live
    assert "test.Clash (refused)" in live
    offline = cli("graph", "--controllers", str(sup.controllers_dir))
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout == live
    warnings = offline.stderr.splitlines()
    assert any(w.startswith("warning: broken.py refused: ") and "boom at import" in w for w in warnings)
    assert any(w.startswith("warning: test.Clash refused: ") for w in warnings)


SLOW_IMPORT = '''
import time
time.sleep(3)   # a module slow to import keeps the scan busy

from cosihost import Controller, Output

class Slow(Controller):
    name = "test.Slow"
    outputs = [Output("Slows.test.cosihost.dev")]

    def reconcile(self, rt):
        pass
'''


def test_a_reload_during_a_scan_gets_a_scan_of_its_own(supervisor_factory):
    sup = supervisor_factory(controllers={"shop": SHOP, "extra": EXTRA})
    cli = Cli(sup.runtime_dir)
    extra = sup.controller_pid("test.Extra")
    sup.write_controller("slow", SLOW_IMPORT)
    first = cli.stream("reload")
    wait_for(lambda: not sup.ping()["ready"], message="the first reload's scan to begin")
    (sup.controllers_dir / "extra.py").unlink()   # after the first scan looked at the folder
    assert cli.ok("reload") == "stopped: test.Extra\n"
    assert first.next() == "started: test.Slow"
    assert first.proc.wait(timeout=30) == 0
    wait_for(lambda: process_gone(extra), message="test.Extra's process to end")
