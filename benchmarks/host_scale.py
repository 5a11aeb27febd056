"""One big kind in a real supervisor: its memory, and a new watcher's snapshot.

- ``supervisor_bytes_per_resource``: RSS growth of the supervisor process
  per resource after creating 100,000 link statuses in one kind (over the
  wire, from several client processes); baseline: the packed size of one.
- ``bootstrap_100k_s``: a controller with that kind as its input is added
  (``reload``); seconds from its module's import to its first reconcile,
  which is registering, subscribing and syncing the kind (one ``snapshot``
  request, every item decoded). It then lists the kind to check the count.
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from cosihost import CosiError
from cosihost.testing import SupervisorProcess
from cosihost.transport import fetch_snapshot

from .harness import NS, ROOT, Processes, controller_module, env, results
from .payload import make_resources
from .report import Figure

BIG = "BigLinks.bench.cosihost.dev"
FILLERS = 4

#: A filler process: ``python -c FILL RUNTIME_DIR START COUNT``.
FILL = r"""
import sys
from cosihost import Client
from benchmarks.payload import make_resources
runtime_dir, start, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with Client(runtime_dir, timeout=30) as client:
    for at in range(start, start + count, 1000):
        for res in make_resources(min(1000, start + count - at), at, namespace="bench", type=sys.argv[4]):
            client.create(res)
"""


def run(quick: bool) -> list[Figure]:
    n = 5_000 if quick else 100_000
    with Processes() as procs:
        sup = procs.supervisor()
        return _run(procs, sup, n)


def fill(sup: SupervisorProcess, n: int, kind: str) -> float:
    """Create ``n`` link statuses in ``kind`` from FILLERS processes; seconds."""
    share = -(-n // FILLERS)
    start = time.perf_counter()
    fillers = [subprocess.Popen([sys.executable, "-c", FILL, str(sup.runtime_dir), str(k * share),
                                 str(min(share, n - k * share)), kind], cwd=ROOT, env={**sup.env, **env()})
               for k in range(FILLERS) if k * share < n]
    try:
        for proc in fillers:
            if proc.wait(timeout=600) != 0:
                raise RuntimeError(f"a filler exited with {proc.returncode}")
    finally:
        for proc in fillers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return time.perf_counter() - start


def _run(procs: Processes, sup: SupervisorProcess, n: int) -> list[Figure]:
    supervisor = psutil.Process(sup.pid)
    # Warm up: the kind exists, code paths and allocator pools are in use.
    fill(sup, FILLERS, "Warmups.bench.cosihost.dev")
    time.sleep(0.5)
    before = supervisor.memory_info().rss
    seconds = fill(sup, n, BIG)
    time.sleep(0.5)
    grown = supervisor.memory_info().rss - before
    packed = sum(len(b) for b in _packed_sample()) / 100
    figures = [Figure("supervisor_bytes_per_resource", grown / n, "bytes", packed, target=3, goal="ratio<=",
                      note=f"RSS growth of the supervisor holding {n:,} link statuses in one kind (bounded "
                           f"history included), created over the wire at {n / seconds:,.0f}/s from "
                           f"{FILLERS} clients; baseline: packed size of one")]
    figures.append(_bootstrap(sup, n))
    return figures


def _packed_sample() -> list[bytes]:
    from cosihost.resource import pack
    return [pack(r) for r in make_resources(100, 50_000, namespace=NS, type=BIG)]


def _snapshot_request(sup: SupervisorProcess) -> str:
    """How long the bare ``snapshot`` request takes (a user client, no
    subscription, items not decoded), or why it fails."""
    with sup.client() as client:
        req = client.requester(timeout=10, retries=0)
        start = time.perf_counter()
        try:
            items = len(fetch_snapshot(req, NS, BIG).items)
        except CosiError as exc:
            return f"the bare snapshot request fails too ({exc})"
        return f"the bare snapshot request takes {time.perf_counter() - start:.3f} s for {items:,} items"


def _bootstrap(sup: SupervisorProcess, n: int) -> Figure:
    name = "bench.Bootstrap"
    go = "boot"
    bare = _snapshot_request(sup)
    entry = [{"cls_name": "Bootstrap", "name": name, "kind": BIG, "go": go}]
    sup.write_controller("bootstrap", controller_module(bootstrap=entry))
    with sup.client(timeout=60) as client:
        client.call("reload")

        def failed() -> str | None:
            status = sup.statuses().get(name) or {}
            if status.get("restarts") or status.get("last_exit"):
                return f"the watcher died instead: {(status.get('last_exit') or {}).get('reason')}"
            return None
        try:
            got = results(client, [name], go, timeout=120, failed=failed)[name]
        except (RuntimeError, TimeoutError) as exc:
            return Figure("bootstrap_100k_s", None, "s", target=1, goal="value<=",
                          note=f"no snapshot of {n:,} resources: {exc}; {bare}")
    seconds = (got["reconciled"] - got["imported"]) / 1e9
    return Figure("bootstrap_100k_s", seconds, "s", target=1, goal="value<=",
                  ok=got["items"] == n,
                  note=f"new watcher controller of {n:,} resources in one kind, module import to first "
                       f"reconcile (register, subscribe, snapshot, decode); it listed {got['items']:,}; {bare}")
