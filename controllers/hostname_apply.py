"""Hostname, applied: the one bundled controller that changes the device.

``net.HostnameApplyController`` sets the machine's hostname to what a
valid HostnameSpec says, but only for a config that asks for it with
``apply: true`` (so a developer's machine is never renamed by trying the
user guide). It shows how a controller that acts on the device is written
and confined: ``sethostname(2)`` needs ``CAP_SYS_ADMIN``, so it declares
that capability and, run as its own user (``[isolation]``), keeps nothing
else. What happened is in its output, one HostnameApplications resource per
spec: applied, or the error (EPERM without the capability). It is a
``cosihost.generic.transform``: one report per spec that asks, reports of
specs that no longer ask (or are gone) destroyed.
"""

from __future__ import annotations

import socket

from cosihost import ResourceDefinition, generic

NETWORK = "network"
SPECS = "HostnameSpecs.net.cosihost.dev"
APPLIED = "HostnameApplications.net.cosihost.dev"


def asked(spec) -> str | None:
    """Only a valid spec whose config says ``apply: true`` gets a report;
    the report of one that stops asking is destroyed."""
    wanted = spec.spec
    return spec.metadata.id if wanted.get("valid") and wanted.get("apply") else None


def apply_spec(rt, spec, out) -> None:
    """The transform: set the name, and report what happened."""
    out.spec = apply(spec.spec["hostname"])


def apply(hostname: str) -> dict:
    try:
        if socket.gethostname() != hostname:
            socket.sethostname(hostname)
        return {"hostname": hostname, "applied": True, "error": ""}
    except OSError as exc:
        return {"hostname": hostname, "applied": False,
                "error": f"sethostname: {exc.strerror} (it needs CAP_SYS_ADMIN)"}


HostnameApplyController = generic.transform(
    name="net.HostnameApplyController",
    input=(NETWORK, SPECS),
    output=(NETWORK, APPLIED),
    map=asked,
    transform=apply_spec,
    capabilities=["CAP_SYS_ADMIN"],   # sethostname(2)
    definitions=[
        ResourceDefinition(APPLIED, aliases=("hostnameapplied", "hostnameapplications"), default_namespace=NETWORK,
                           print_columns=(("HOSTNAME", "hostname"), ("APPLIED", "applied"), ("ERROR", "error"))),
    ],
)
