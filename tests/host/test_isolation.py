"""Each controller as a user of its own (``[isolation]``): a rogue
controller's attempts on the supervisor, its files and the other
controllers all fail while it keeps running; the bundled controllers work
under their own uids. Root only: only root can hand out uids."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from cosihost import Resource, wire
from cosihost.testing import wait_for

from test_supervision import FAST, RELAY

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: only root can run controllers as other users")

ISOLATED = FAST + "[isolation]\nenabled = true\n\n[namespaces.keep]\npersistent = true\n"
TARGETS = "Targets.test.cosihost.dev"
ATTEMPTS = "Attempts.test.cosihost.dev"
ROGUE = '''
import ctypes, errno, os
from cosihost import Client, Controller, Input, Output

class Rogue(Controller):
    name = "test.Rogue"
    inputs = [Input("rogue", "{targets}", kind="weak")]
    outputs = [Output("{attempts}")]

    def reconcile(self, rt):
        targets = rt.list("rogue", "{targets}")
        if not targets:
            return
        sup, other = targets[0].spec["supervisor"], targets[0].spec["other"]
        libc = ctypes.CDLL(None, use_errno=True)
        results = {{}}

        def ptrace():
            if libc.ptrace(16, sup, None, None) != 0:  # PTRACE_ATTACH
                raise OSError(ctypes.get_errno(), "ptrace")

        def cgroup_of(pid):
            """The folder of ``pid``'s memory cgroup (v1) or of its cgroup2 node."""
            unified = ""
            for line in open(f"/proc/{{pid}}/cgroup"):
                num, controllers, path = line.rstrip("\\n").split(":", 2)
                if "memory" in controllers.split(","):
                    return "/sys/fs/cgroup/memory" + path
                if num == "0":
                    unified = "/sys/fs/cgroup" + path
            return unified

        def raise_own_limit(folder):
            name = "memory.limit_in_bytes" if os.path.exists(os.path.join(folder, "memory.limit_in_bytes")) \\
                else "memory.max"
            with open(os.path.join(folder, name), "w") as fh:
                fh.write("max" if name == "memory.max" else "-1")

        def attempt(what, fn):
            try:
                fn()
                results[what] = "succeeded"
            except OSError as exc:
                results[what] = errno.errorcode.get(exc.errno, str(exc.errno))
            except Exception as exc:
                results[what] = type(exc).__name__

        attempt("read admin.token", lambda: open("{rd}/admin.token").read())
        attempt("read the state database", lambda: open("{sd}/state.sqlite3", "rb").read(1))
        attempt("connect as admin", lambda: Client("{rd}", admin=True).close())
        attempt("signal the supervisor", lambda: os.kill(sup, 0))
        attempt("signal another controller", lambda: os.kill(other, 0))
        attempt("ptrace the supervisor", ptrace)
        attempt("read the supervisor's environ", lambda: open(f"/proc/{{sup}}/environ", "rb").read())
        attempt("write in the runtime folder", lambda: open("{rd}/rogue", "w").close())
        attempt("write in /etc", lambda: open("/etc/cosihost-rogue", "w").close())
        attempt("setuid(0)", lambda: os.setuid(0))
        attempt("join another controller's cgroup",
                lambda: open(os.path.join(cgroup_of(other), "cgroup.procs"), "w").write(str(os.getpid())))
        attempt("raise its own memory limit", lambda: raise_own_limit(cgroup_of(os.getpid())))
        rt.modify("rogue", "{attempts}", "all", lambda s: s.update(results=results, uid=os.getuid()))
'''


def test_a_rogue_controller_cannot_touch_what_is_not_its_own(supervisor_factory) -> None:
    sup = supervisor_factory(config=ISOLATED, start=False, controllers={"relay": RELAY})
    sup.write_controller("rogue", ROGUE.format(targets=TARGETS, attempts=ATTEMPTS, rd=sup.runtime_dir,
                                               sd=sup.state_dir))
    sup.start()
    other = sup.controller_pid("test.Relay")
    with sup.client() as c:
        c.create(Resource("keep", "Kept.test.cosihost.dev", "x", {}))   # the state database exists
        c.create(Resource("rogue", TARGETS, "t", {"supervisor": sup.pid, "other": other}))
        spec = wait_for(lambda: [r.spec for r in c.list("rogue", ATTEMPTS)], message="the rogue's attempts")[0]
    assert spec["uid"] >= 3_000_000
    assert spec["results"] and all(r != "succeeded" for r in spec["results"].values()), spec["results"]
    for what in ("join another controller's cgroup", "raise its own memory limit"):  # refused, not missing
        assert spec["results"][what] in ("EACCES", "EPERM", "EROFS"), spec["results"]
    status = sup.statuses()["test.Rogue"]
    assert status["state"] == "running" and status["isolation"]["uid"] == spec["uid"]
    assert status["isolation"]["no_new_privs"] is True
    relay_status = sup.statuses()["test.Relay"]
    if str(relay_status.get("mechanism", "")).startswith("cgroup"):  # then "another controller's cgroup" is its own
        assert Path(f"/proc/{other}/cgroup").read_text() != Path(f"/proc/{sup.pid}/cgroup").read_text()
    relay = relay_status["isolation"]["uid"]
    assert relay != spec["uid"] and psutil.Process(other).uids().real == relay


def test_the_bundled_controllers_work_under_their_own_uids(supervisor_factory) -> None:
    sup = supervisor_factory(config=ISOLATED, start=False, bundled=True, controllers={})
    sup.start()
    names = set(psutil.net_if_stats())
    with sup.client() as c:
        wait_for(lambda: names <= {r.metadata.id for r in c.list("network", "LinkStatuses.net.cosihost.dev")},
                 message="every interface listed by the isolated links controller")
    statuses = sup.statuses()
    uids = {name: s["isolation"].get("uid") for name, s in statuses.items()}
    assert all(s["state"] == "running" for s in statuses.values()), statuses
    assert all(uid and uid >= 3_000_000 for uid in uids.values()), uids
    assert len(set(uids.values())) == len(uids)   # one user each


CAPS = "Caps.test.cosihost.dev"
PROBE = '''
import os, socket
from cosihost import Controller, Output

class {cls}(Controller):
    name = "test.{cls}"
    outputs = [Output("{caps}{cls}")]
    capabilities = {caps_list}

    def reconcile(self, rt):
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
        sets = {{k: int(status[k].strip(), 16) for k in ("CapPrm", "CapEff", "CapAmb", "CapBnd")}}
        try:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, 36, 1)   # SO_MARK: needs CAP_NET_ADMIN
            mark = "set"
        except PermissionError:
            mark = "EPERM"
        rt.modify("caps", "{caps}{cls}", "x", lambda s: s.update(sets=sets, mark=mark))
'''


def test_a_controller_keeps_exactly_the_capabilities_it_declares(supervisor_factory) -> None:
    modules = {"admin": PROBE.format(cls="NetAdmin", caps=CAPS, caps_list='["CAP_NET_ADMIN"]'),
               "plain": PROBE.format(cls="Plain", caps=CAPS, caps_list="[]")}
    sup = supervisor_factory(config=ISOLATED, start=False, controllers=modules)
    sup.start()
    with sup.client() as c:
        admin = wait_for(lambda: [r.spec for r in c.list("caps", CAPS + "NetAdmin")], message="NetAdmin")[0]
        plain = wait_for(lambda: [r.spec for r in c.list("caps", CAPS + "Plain")], message="Plain")[0]
    net_admin = 1 << 12
    assert admin["sets"] == {"CapPrm": net_admin, "CapEff": net_admin, "CapAmb": net_admin, "CapBnd": net_admin}
    assert admin["mark"] == "set"
    assert plain["sets"] == {"CapPrm": 0, "CapEff": 0, "CapAmb": 0, "CapBnd": 0} and plain["mark"] == "EPERM"
    assert sup.statuses()["test.NetAdmin"]["isolation"]["capabilities"] == ["CAP_NET_ADMIN"]


def test_a_denied_capability_refuses_only_that_controller(supervisor_factory) -> None:
    modules = {"admin": PROBE.format(cls="Wants", caps=CAPS, caps_list='["CAP_SYS_ADMIN"]'),
               "plain": PROBE.format(cls="Plain", caps=CAPS, caps_list="[]"),
               "typo": PROBE.format(cls="Typo", caps=CAPS, caps_list='["CAP_NET_WIZARD"]')}
    config = ISOLATED.replace("enabled = true", 'enabled = true\ndeny = ["CAP_SYS_ADMIN"]')
    sup = supervisor_factory(config=config, start=False, controllers=modules)
    sup.start()
    statuses = sup.statuses()
    assert "CAP_SYS_ADMIN, which [isolation] deny refuses" in statuses["test.Wants"]["reason"]
    assert "unknown capability 'CAP_NET_WIZARD'" in statuses["test.Typo"]["reason"]
    assert statuses["test.Plain"]["state"] == "running"


IMPORTS = "Imports.test.cosihost.dev"
IMPORTER = '''
import os
from cosihost import Controller, Output

class {cls}(Controller):
    name = "test.{cls}"
    outputs = [Output("{imports}{cls}")]

    def reconcile(self, rt):
        import colorsys, xml.dom.minidom  # first imported here, long after the process took its user
        import logging.handlers, zmq.utils.monitor  # submodules of packages the zygote had imported
        loaded = [m.__name__ for m in (xml.dom.minidom, logging.handlers, zmq.utils.monitor)]
        rt.modify("imports", "{imports}{cls}", "x", lambda s: s.update(uid=os.getuid(), loaded=loaded))
'''


def _imported(sup, cls: str) -> dict:
    with sup.client() as c:
        return wait_for(lambda: [r.spec for r in c.list("imports", IMPORTS + cls)], message=f"{cls}'s report")[0]


@pytest.mark.parametrize("zygote", [True, False], ids=["zygote", "cold"])
def test_isolation_is_on_by_default_and_controllers_import_wherever_python_lives(supervisor_factory, zygote) -> None:
    """No [isolation] table: as root every controller runs as its own user.
    It takes its user after exec (cold) or fork (zygote), so the interpreter
    may live below a folder that user cannot enter (pyenv under a 0700
    /root); what it imports afterwards comes through descriptors opened
    while it was root."""
    config = FAST + f"zygote = {str(zygote).lower()}\n"
    sup = supervisor_factory(config=config, controllers={"importer": IMPORTER.format(cls="Importer", imports=IMPORTS)})
    spec = _imported(sup, "Importer")
    status = sup.statuses()["test.Importer"]
    assert spec == {"uid": status["isolation"]["uid"],
                    "loaded": ["xml.dom.minidom", "logging.handlers", "zmq.utils.monitor"]}, (spec, sys.prefix)
    assert spec["uid"] >= 3_000_000 and status["restarts"] == 0 and status["last_exit"] is None
    assert status["isolation"]["mode"] == "dynamic-user" and status["isolation"]["no_new_privs"] is True
    assert _wide_row(sup, "test.Importer")[-2:] == ["uid", str(spec["uid"])]


def _wide_row(sup, name: str) -> list[str]:
    """``cosihost controllers -o wide``: the controller's row, split."""
    out = subprocess.run([sys.executable, "-m", "cosihost", "controllers", "-o", "wide",
                          "--runtime-dir", str(sup.runtime_dir)], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0].split()[-1] == "ISOLATION", lines[0]
    return next(line.split() for line in lines if line.startswith(name + " "))


def test_isolation_turned_off_says_so(supervisor_factory) -> None:
    config = FAST + "\n[isolation]\nenabled = false\n"
    sup = supervisor_factory(config=config, controllers={"importer": IMPORTER.format(cls="Importer", imports=IMPORTS)})
    assert _imported(sup, "Importer")["uid"] == 0
    assert sup.statuses()["test.Importer"]["isolation"] == {"mode": "none", "reason": "[isolation] enabled = false"}
    assert _wide_row(sup, "test.Importer")[-1] == "none"


def test_a_reload_gives_the_runtime_folder_back_to_the_socket_group(supervisor_factory) -> None:
    """systemd sets RuntimeDirectory= up again for ExecReload (``kill -HUP``)
    and, finding the folder's group is not root's, chowns the whole tree to
    root: as it does, then SIGHUP. A controller the reload starts must reach
    the sockets."""
    sup = supervisor_factory(config=FAST, controllers={"first": IMPORTER.format(cls="First", imports=IMPORTS)})
    group = os.stat(sup.runtime_dir).st_gid
    assert group != 0
    for name in ("", wire.API_SOCKET, wire.EVENTS_SOCKET):
        os.chown(sup.runtime_dir / name, 0, 0)
    sup.write_controller("second", IMPORTER.format(cls="Second", imports=IMPORTS))
    os.kill(sup.pid, signal.SIGHUP)
    assert _imported(sup, "Second")["uid"] >= 3_000_000
    assert sup.wait_status("test.Second", lambda s: s["state"] == "running")["restarts"] == 0
    assert {os.stat(sup.runtime_dir / name).st_gid for name in ("", wire.API_SOCKET, wire.EVENTS_SOCKET)} == {group}
