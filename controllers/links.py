"""Network links of this machine: LinkStatuses.net.cosihost.dev.

One resource per interface (id = interface name) in namespace ``network``,
from ``psutil.net_if_stats()`` and ``/sys/class/net``. Refreshed every few
seconds; links that disappear are destroyed. Labels ``kind`` and
``physical`` make selectors work: ``cosihost get links -l kind=loopback``.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from cosihost import Controller, NotFoundError, Output, Resource, ResourceDefinition

NAMESPACE = "network"
LINKS = "LinkStatuses.net.cosihost.dev"
SYS_NET = Path("/sys/class/net")

#: ARPHRD_* numbers of /sys/class/net/X/type, for links uevent does not name.
ARPHRD = {1: "ether", 24: "ieee1394", 32: "infiniband", 512: "ppp", 768: "ipip", 769: "tunnel6",
          772: "loopback", 776: "sit", 778: "gre", 801: "wlan", 65534: "none"}


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None


def link_kind(name: str, sysfs: Path) -> str:
    """bridge, bond, vlan, wlan... from uevent's DEVTYPE, else from the ARPHRD type."""
    for line in (_read(sysfs / "uevent") or "").splitlines():
        if line.startswith("DEVTYPE="):
            return line.split("=", 1)[1]
    if (sysfs / "wireless").exists():
        return "wlan"
    arphrd = _read(sysfs / "type")
    if arphrd is not None and arphrd.isdigit():
        return ARPHRD.get(int(arphrd), f"arphrd-{arphrd}")
    return "unknown"


def link_spec(name: str, stats) -> dict:
    sysfs = SYS_NET / name
    index = _read(sysfs / "ifindex")
    flags = getattr(stats, "flags", "") or ""
    return {
        "index": int(index) if index and index.isdigit() else None,
        "kind": link_kind(name, sysfs),
        "physical": (sysfs / "device").exists(),
        "hardware_addr": _read(sysfs / "address") or "",
        "up": bool(stats.isup),
        "oper_state": _read(sysfs / "operstate") or ("up" if stats.isup else "down"),
        "mtu": stats.mtu,
        "speed_mbps": stats.speed or None,
        "duplex": {psutil.NIC_DUPLEX_FULL: "full", psutil.NIC_DUPLEX_HALF: "half"}.get(stats.duplex, "unknown"),
        "flags": [f for f in flags.split(",") if f],
    }


class LinkStatusController(Controller):
    name = "net.LinkStatusController"
    outputs = [Output(LINKS, kind="exclusive")]
    definitions = [
        ResourceDefinition(LINKS, aliases=("linkstatus", "links", "link"), default_namespace=NAMESPACE,
                           print_columns=(("KIND", "kind"), ("HW ADDR", "hardware_addr"),
                                          ("OPER STATE", "oper_state"), ("MTU", "mtu"),
                                          ("SPEED", "speed_mbps"))),
    ]
    #: Seconds between refreshes (links have no event source here: we poll).
    period = 5.0

    def reconcile(self, rt) -> None:
        current = {name: link_spec(name, stats) for name, stats in psutil.net_if_stats().items()}
        for name, spec in current.items():
            labels = {"kind": spec["kind"], "physical": str(spec["physical"]).lower()}
            self._put(rt, Resource(NAMESPACE, LINKS, name, spec, labels=labels))
        for res in rt.list(NAMESPACE, LINKS):
            if res.metadata.id not in current and res.metadata.owner == self.name:
                if rt.teardown(NAMESPACE, LINKS, res.metadata.id):
                    rt.destroy(NAMESPACE, LINKS, res.metadata.id)
        rt.requeue(after=self.period)

    @staticmethod
    def _put(rt, want: Resource) -> None:
        """Create, or update spec and labels when they changed."""
        md = want.metadata
        try:
            cur = rt.get(md.namespace, md.type, md.id)
        except NotFoundError:
            rt.create(want)
            return
        if cur.spec != want.spec or cur.metadata.labels != md.labels:
            cur.spec, cur.metadata.labels = want.spec, md.labels
            rt.update(cur)
