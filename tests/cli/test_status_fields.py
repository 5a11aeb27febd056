"""Status fields that were wrong for a while (issue): UPTIME was computed
when the status was last refreshed (every 10 s), not when shown, and ``pid``
was 0 while a controller had no process, so ``kill -9 $pid`` signalled the
script's own process group."""

from __future__ import annotations

import json
import re
import time

from cosihost.testing import wait_for

from cli_helpers import Cli  # type: ignore[import-not-found]

STEADY = '''
from cosihost import Controller

class Steady(Controller):
    name = "test.Steady"

    def reconcile(self, rt):
        pass
'''
# Dies at its first reconcile; the long backoff keeps it without a process.
DOOMED = '''
import os
from cosihost import Controller

class Doomed(Controller):
    name = "test.Doomed"

    def reconcile(self, rt):
        os._exit(3)
'''
CLASH = '''
from cosihost import Controller

class Clash(Controller):
    name = "test.Steady"

    def reconcile(self, rt):
        pass
'''
# Statuses are refreshed rarely, so a stale value would show.
CONFIG = "[timing]\nusage_every = 600\nbackoff_base = 600\nbackoff_cap = 600\n"


def _seconds(text: str) -> int:
    """kubectl-style ages back to seconds: 5s, 2m30s, 3h."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)([smhd])", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(int(n) * units[u] for n, u in parts)


def _table(cli: Cli) -> dict[str, dict[str, str]]:
    lines = cli.ok("controllers").splitlines()
    header = lines[0]
    starts = [header.index(h) for h in ("NAME", "STATE", "PID", "RESTARTS", "UPTIME", "CPU")]
    cells = lambda line: [line[a:b].strip() for a, b in zip(starts, starts[1:])]  # noqa: E731
    return {c[0]: dict(zip(("NAME", "STATE", "PID", "RESTARTS", "UPTIME"), c)) for c in map(cells, lines[1:])}


def test_uptime_is_computed_when_shown(supervisor_factory):
    sup = supervisor_factory(controllers={"steady": STEADY}, config=CONFIG)
    cli = Cli(sup.runtime_dir)
    status = sup.wait_status("test.Steady", lambda s: s["state"] == "running")
    assert "uptime" not in status           # a stored uptime is stale the moment it is stored
    started = status["started"]
    wait_for(lambda: time.time() - started >= 3, message="the controller to have run 3 s")
    row = _table(cli)["test.Steady"]
    assert row["PID"] == str(status["pid"])
    assert _seconds(row["UPTIME"]) >= 3, row
    got = cli.ok("get", "cs", "test.Steady").splitlines()
    assert got[0].split()[:8] == ["NAMESPACE", "TYPE", "ID", "VERSION", "STATE", "PID", "RESTARTS", "UPTIME"]
    assert _seconds(got[1].split()[7]) >= 3, got


def test_pid_is_null_without_a_process(supervisor_factory):
    sup = supervisor_factory(controllers={"doomed": DOOMED, "steady": STEADY, "zclash": CLASH}, config=CONFIG)
    cli = Cli(sup.runtime_dir)
    sup.wait_status("test.Doomed", lambda s: s["state"] == "backoff")
    items = {d["metadata"]["id"]: d["spec"] for d in json.loads(cli.ok("controllers", "-o", "json"))["items"]}
    doomed = items["test.Doomed"]
    assert (doomed["pid"], doomed["started"], doomed["restarts"]) == (None, None, 1), doomed
    assert doomed["last_exit"]["code"] == 3
    refused = items["zclash.py:Clash"]        # the name test.Steady is taken by steady.py
    assert (refused["state"], refused["pid"], refused["started"]) == ("refused", None, None), refused
    assert isinstance(items["test.Steady"]["pid"], int) and items["test.Steady"]["pid"] > 0
    rows = _table(cli)
    assert (rows["test.Doomed"]["PID"], rows["test.Doomed"]["UPTIME"]) == ("", "")
    assert rows["zclash.py:Clash"]["PID"] == ""
