"""IP addresses of this machine: AddressStatuses.net.cosihost.dev.

One resource per address (id ``link/address/prefix``, like ``lo/127.0.0.1/8``)
in namespace ``network``, from ``psutil.net_if_addrs()``. The controller
also watches LinkStatuses (a weak input): a link going up or down wakes it
at once, and each address says whether its link is up.
"""

from __future__ import annotations

import ipaddress
import socket

import psutil

from cosihost import Controller, Input, Output, ResourceDefinition

NAMESPACE = "network"
LINKS = "LinkStatuses.net.cosihost.dev"
ADDRESSES = "AddressStatuses.net.cosihost.dev"
FAMILIES = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}


def scope(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if ip.is_loopback:
        return "host"
    if ip.is_link_local:
        return "link"
    return "global"


def addresses() -> dict[str, dict]:
    """Every IPv4/IPv6 address, by id."""
    found = {}
    for link, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            family = FAMILIES.get(a.family)
            if family is None:
                continue  # link-layer addresses are in LinkStatuses
            address = a.address.split("%", 1)[0]  # fe80::1%eth0
            try:
                net = ipaddress.ip_interface(f"{address}/{a.netmask}" if a.netmask else address)
            except ValueError:
                continue
            found[f"{link}/{net.ip}/{net.network.prefixlen}"] = {
                "link": link, "address": str(net.ip), "prefix_len": net.network.prefixlen,
                "cidr": str(net.with_prefixlen), "family": family, "scope": scope(net.ip),
                "broadcast": a.broadcast,
            }
    return found


class AddressStatusController(Controller):
    name = "net.AddressStatusController"
    inputs = [Input(NAMESPACE, LINKS, kind="weak")]
    outputs = [Output(ADDRESSES, kind="exclusive")]
    definitions = [
        ResourceDefinition(ADDRESSES, aliases=("addressstatus", "addresses", "address", "addr"),
                           default_namespace=NAMESPACE,
                           print_columns=(("ADDRESS", "cidr"), ("LINK", "link"), ("FAMILY", "family"),
                                          ("SCOPE", "scope"), ("LINK UP", "link_up"))),
    ]
    period = 5.0

    def reconcile(self, rt) -> None:
        up = {r.metadata.id: r.spec.get("up") for r in rt.list(NAMESPACE, LINKS)}
        rt.start_tracking_outputs()
        for rid, spec in addresses().items():
            spec["link_up"] = up.get(spec["link"])
            rt.modify(NAMESPACE, ADDRESSES, rid, lambda s, spec=spec: _replace(s, spec))
        rt.cleanup_outputs()  # addresses that went away
        rt.requeue(after=self.period)


def _replace(current: dict, new: dict) -> None:
    current.clear()
    current.update(new)
