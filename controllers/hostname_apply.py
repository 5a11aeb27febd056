"""Hostname, applied: the one bundled controller that changes the device.

``net.HostnameApplyController`` sets the machine's hostname to what a
valid HostnameSpec says, but only for a config that asks for it with
``apply: true`` (so a developer's machine is never renamed by trying the
user guide). It shows how a controller that acts on the device is written
and confined: ``sethostname(2)`` needs ``CAP_SYS_ADMIN``, so it declares
that capability and, run as its own user (``[isolation]``), keeps nothing
else. What happened is in its output, one HostnameApplications resource per
spec: applied, or the error (EPERM without the capability).
"""

from __future__ import annotations

import socket

from cosihost import Controller, Input, Output, ResourceDefinition

NETWORK = "network"
SPECS = "HostnameSpecs.net.cosihost.dev"
APPLIED = "HostnameApplications.net.cosihost.dev"


class HostnameApplyController(Controller):
    name = "net.HostnameApplyController"
    inputs = [Input(NETWORK, SPECS, kind="weak")]
    outputs = [Output(APPLIED, kind="exclusive")]
    capabilities = ["CAP_SYS_ADMIN"]   # sethostname(2)
    definitions = [
        ResourceDefinition(APPLIED, aliases=("hostnameapplied", "hostnameapplications"), default_namespace=NETWORK,
                           print_columns=(("HOSTNAME", "hostname"), ("APPLIED", "applied"), ("ERROR", "error"))),
    ]

    def reconcile(self, rt) -> None:
        rt.start_tracking_outputs()
        for spec in rt.list(NETWORK, SPECS):
            wanted = spec.spec
            if not (wanted.get("valid") and wanted.get("apply")):
                continue
            result = apply(wanted["hostname"])
            rt.modify(NETWORK, APPLIED, spec.metadata.id, lambda s: (s.clear(), s.update(result)))
        rt.cleanup_outputs()


def apply(hostname: str) -> dict:
    try:
        if socket.gethostname() != hostname:
            socket.sethostname(hostname)
        return {"hostname": hostname, "applied": True, "error": ""}
    except OSError as exc:
        return {"hostname": hostname, "applied": False,
                "error": f"sethostname: {exc.strerror} (it needs CAP_SYS_ADMIN)"}
