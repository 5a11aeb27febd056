"""The bundled controller that changes the device: with the supervisor in a
UTS namespace made for the test, a HostnameConfig with ``apply: true``
renames that namespace, done by a controller running as its own user with
CAP_SYS_ADMIN alone; denied that capability, it is refused, saying why."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from cosihost import Resource
from cosihost.settings import bundled_controllers_dir
from cosihost.testing import wait_for

from test_supervision import FAST

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a UTS namespace and uids of its own"),
    pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("nsenter") is None,
                       reason="unshare and nsenter are not installed (apt-get install -y util-linux)"),
]
ISOLATED = FAST + "[isolation]\nenabled = true\n"
MODULES = ("hostname.py", "hostname_apply.py")
NAME = "cosihost-uts-test"


def _supervisor(factory, config: str):
    sources = {name: (bundled_controllers_dir() / name).read_text() for name in MODULES}
    sup = factory(config=config, start=False, controllers=sources, wrapper=["unshare", "--uts"])
    os.chmod(sup.base, 0o711)
    os.chmod(sup.controllers_dir, 0o755)
    return sup.start()


def _hostname_of(pid: int) -> str:
    return subprocess.run(["nsenter", "-t", str(pid), "-u", "hostname"], capture_output=True, text=True,
                          timeout=10).stdout.strip()


def test_a_config_that_asks_renames_the_namespace(supervisor_factory) -> None:
    before = _hostname_of(os.getpid())
    sup = _supervisor(supervisor_factory, ISOLATED)
    status = sup.wait_status("net.HostnameApplyController", lambda s: s["state"] == "running")
    assert status["isolation"]["capabilities"] == ["CAP_SYS_ADMIN"] and status["isolation"]["uid"] >= 3_000_000
    with sup.client() as c:
        c.create(Resource("config", "HostnameConfigs.net.cosihost.dev", "quiet", {"hostname": "not-applied"}))
        c.create(Resource("config", "HostnameConfigs.net.cosihost.dev", "h", {"hostname": NAME, "apply": True}))
        done = wait_for(lambda: [r.spec for r in c.list("network", "HostnameApplications.net.cosihost.dev")],
                        message="the controller's report")[0]   # written once the name is set
        assert done == {"hostname": NAME, "applied": True, "error": ""}
        assert _hostname_of(sup.pid) == NAME
        assert [r.metadata.id for r in c.list("network", "HostnameApplications.net.cosihost.dev")] == ["h"]
        env = dict(os.environ, COSIHOST_RUNTIME_DIR=str(sup.runtime_dir))
        table = subprocess.run([sys.executable, "-m", "cosihost", "get", "hostnameapplications"], timeout=30,
                               capture_output=True, text=True, env=env)
        header, row = table.stdout.splitlines()   # as before it became a generic.transform
        assert header == "NAMESPACE   TYPE                   ID   VERSION   HOSTNAME            APPLIED   ERROR   AGE"
        assert row.rsplit(None, 1)[0] == f"network     HostnameApplications   h    1         {NAME}   true", row
        c.modify("config", "HostnameConfigs.net.cosihost.dev", "h", lambda s: s.update(apply=False))
        wait_for(lambda: not c.list("network", "HostnameApplications.net.cosihost.dev"),
                 message="the report of a config that no longer asks to go")
    assert _hostname_of(os.getpid()) == before   # this machine's own name never moved


def test_without_its_capability_it_is_refused_saying_why(supervisor_factory) -> None:
    sup = _supervisor(supervisor_factory, ISOLATED.replace("enabled = true", 'enabled = true\ndeny = ["CAP_SYS_ADMIN"]'))
    reason = sup.statuses()["net.HostnameApplyController"]["reason"]
    assert "CAP_SYS_ADMIN, which [isolation] deny refuses" in reason
    assert sup.statuses()["net.HostnameSpecController"]["state"] == "running"
