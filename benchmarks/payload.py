"""The payload every benchmark moves: a link status of about 300 bytes packed.

Kept free of cosihost imports beyond the resource model, so controller
modules written by the benchmarks can import it cheaply.
"""

from __future__ import annotations

from cosihost.resource import Resource, pack

NS = "network"
TYPE = "LinkStatuses.net.cosihost.dev"


def make_spec(i: int) -> dict:
    """A link status as a controller would publish it: about 300 bytes packed."""
    return {
        "name": f"eth{i}", "index": i, "type": "ether",
        "hardwareAddr": "52:54:00:%02x:%02x:%02x" % (i >> 16 & 255, i >> 8 & 255, i & 255),
        "mtu": 1500, "operationalState": "up", "driver": "virtio_net",
        "busPath": f"0000:{i >> 8 & 255:02x}:{i & 255:02x}.0",
        "flags": ["UP", "BROADCAST", "RUNNING", "MULTICAST", "LOWER_UP"],
        "addresses": [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/16",
                      f"2001:db8::{i:x}/64", f"fe80::5054:ff:fe{i & 0xffff:04x}/64"],
        "queueDisc": "fq_codel", "txQueueLen": 1000, "speedMbit": 10000, "duplex": "full",
        "counter": 0,
    }


def make_resources(n: int, start: int = 0, *, namespace: str = NS, type: str = TYPE) -> list[Resource]:
    return [Resource(namespace, type, f"link-{i:07d}", make_spec(i), labels={"kind": "ether"})
            for i in range(start, start + n)]


def sample_blob() -> bytes:
    """One stored link status as the supervisor holds and sends it (metadata
    as the store sets it), for the raw ZeroMQ baselines."""
    res = make_resources(1, 4242)[0]
    md = res.metadata
    md.version, md.owner, md.created, md.updated = 17, "net.LinkStatusController", 1.7e9, 1.7e9
    return pack(res)
