"""Hostname: what the machine is called, and a config -> spec chain.

``net.HostnameStatusController`` reports the system's hostname
(HostnameStatuses, id ``hostname``, namespace ``network``) from
``os.uname()``, ``/proc/sys/kernel/domainname`` and ``/etc/hostname``.

``net.HostnameSpecController`` is the config-driven half. A user applies a
HostnameConfigs resource (namespace ``config``)::

    metadata: {type: hostnameconfig, id: hostname}
    spec: {hostname: edge-7.example.org}

and the controller derives a HostnameSpecs resource with the same id: the
name split into hostname and domain, checked (RFC 1123), and whether the
machine already carries it. It never changes the machine's hostname
itself: with ``apply: true`` in the config, ``net.HostnameApplyController``
(hostname_apply.py) does.

It is a ``cosihost.generic.transform``: the config is a STRONG input, so
the controller puts its finalizer on every config it derived something
from. When the user deletes the config (``cosihost delete hostnameconfig
hostname``), the config goes to ``tearing-down``; the controller destroys
the derived spec, then removes its finalizer, and only then can the config
be destroyed. A spec whose config is gone is destroyed too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cosihost import Controller, Input, NotFoundError, Output, ResourceDefinition, generic

NETWORK = "network"
CONFIG = "config"
STATUSES = "HostnameStatuses.net.cosihost.dev"
CONFIGS = "HostnameConfigs.net.cosihost.dev"
SPECS = "HostnameSpecs.net.cosihost.dev"
LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE)


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def system_hostname() -> dict:
    nodename = os.uname().nodename
    domain = _read("/proc/sys/kernel/domainname")
    domain = "" if domain == "(none)" else domain
    return {
        "hostname": nodename,
        "domainname": domain,
        "fqdn": f"{nodename}.{domain}" if domain else nodename,
        "static_hostname": _read("/etc/hostname"),
    }


class HostnameStatusController(Controller):
    name = "net.HostnameStatusController"
    outputs = [Output(STATUSES, kind="exclusive")]
    definitions = [
        ResourceDefinition(STATUSES, aliases=("hostnamestatus", "hostname"), default_namespace=NETWORK,
                           print_columns=(("HOSTNAME", "hostname"), ("DOMAINNAME", "domainname"),
                                          ("STATIC", "static_hostname"))),
    ]
    period = 10.0

    def reconcile(self, rt) -> None:
        status = system_hostname()
        rt.modify(NETWORK, STATUSES, "hostname", lambda spec: spec.update(status))
        rt.requeue(after=self.period)


def derive(config: dict, system: dict) -> dict:
    """The spec a config asks for: hostname and domain, checked."""
    name = config.get("hostname") if isinstance(config, dict) else None
    if not isinstance(name, str) or not name:
        return {"valid": False, "error": "spec.hostname must be a non-empty string"}
    name = name.rstrip(".").lower()
    host, _, domain = name.partition(".")
    if domain and isinstance(config.get("domainname"), str):
        return {"valid": False, "error": "give the domain either in hostname or in domainname, not both"}
    domain = domain or str(config.get("domainname") or "").lower()
    fqdn = f"{host}.{domain}" if domain else host
    bad = [label for label in fqdn.split(".") if not LABEL.match(label)]
    if bad or len(fqdn) > 253:
        return {"valid": False, "error": f"not a valid hostname: {fqdn!r} (RFC 1123)"}
    return {
        "valid": True, "hostname": host, "domainname": domain, "fqdn": fqdn,
        "in_sync": system.get("hostname") == host and system.get("domainname", "") == domain,
        "apply": config.get("apply") is True,   # hostname_apply.py sets it on the machine only if asked
    }


def spec_from_config(rt, config, out) -> None:
    """The transform: the HostnameSpecs resource one HostnameConfigs resource asks for."""
    try:
        system = rt.get(NETWORK, STATUSES, "hostname").spec
    except NotFoundError:
        system = {}
    out.spec = derive(config.spec, system)


# One spec per config, the config held by a finalizer until its spec is
# destroyed, specs without a config destroyed: all of it is generic.transform.
HostnameSpecController = generic.transform(
    name="net.HostnameSpecController",
    input=(CONFIG, CONFIGS),
    output=(NETWORK, SPECS),
    transform=spec_from_config,
    input_finalizers=True,
    extra_inputs=[Input(NETWORK, STATUSES, kind="weak")],   # re-derive in_sync when the system changes
    definitions=[
        ResourceDefinition(CONFIGS, aliases=("hostnameconfig", "hostnameconfigs"), default_namespace=CONFIG,
                           print_columns=(("HOSTNAME", "hostname"),)),
        ResourceDefinition(SPECS, aliases=("hostnamespec", "hostnamespecs"), default_namespace=NETWORK,
                           print_columns=(("HOSTNAME", "hostname"), ("DOMAINNAME", "domainname"),
                                          ("VALID", "valid"), ("IN SYNC", "in_sync"), ("ERROR", "error"))),
    ],
)
