"""Controller processes at device scale: idle cost, memory, restart time.

One supervisor, configured with ``[timing] backoff_base = 0.0`` (and a crash
loop threshold out of reach), so that a restart measures starting a process,
not the deliberate backoff of the default configuration (0.1 s, doubling).

- ``idle_cpu_pct``: CPU time of the supervisor's whole process tree
  (supervisor, zygote if any, 20 idle controllers) over 10 s, in percent of
  one core. Idle controllers still heartbeat, and the supervisor refreshes
  their status.
- ``controller_uss_mb``: median USS (memory no other process shares) of
  those idle controllers; baseline: an idle raw pyzmq process holding a REQ
  and a SUB socket. ``controller_pss_total_mb``: total PSS of 50 idle
  controllers (30 more added with ``reload``); target 6 MB each.
- ``restart_s``: SIGKILL of a controller (one input kind, one output) until
  its new process has reconciled: in its first reconcile it lists its input
  and writes its pid to a marker resource, then writes when that write was
  acknowledged; median of 20. Baseline: the wall time of
  ``python -c "import zmq, msgpack"``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from cosihost.testing import SupervisorProcess, wait_for

from .harness import NS, Processes, controller_module, cpu_seconds, median, wait_running
from .report import Figure

CONFIG = """
[timing]
backoff_base = 0.0
crash_loop_restarts = 1000000
"""
IDLE = 20
TOTAL = 50
MARKER = "BenchMarkers.bench.cosihost.dev"
MB = 1 << 20


def run(quick: bool) -> list[Figure]:
    idle_seconds = 3.0 if quick else 10.0
    restarts = 5 if quick else 20
    with Processes() as procs:
        sup = procs.supervisor(config=CONFIG, first=controller_module(idle=_idle(0, IDLE)))
        names = [f"bench.Idle{k}" for k in range(IDLE)]
        pids = wait_running(sup, names)
        figures = [_idle_cpu(sup, idle_seconds)]
        raw_uss, raw_pss = _raw_idle(procs)
        uss = [psutil.Process(pid).memory_full_info().uss / MB for pid in pids.values()]
        figures.append(Figure(
            "controller_uss_mb", median(uss), "MB", raw_uss, target=6, goal="value<=",
            note=f"median USS of {IDLE} idle controllers (max {max(uss):.1f} MB); baseline: idle raw "
                 "pyzmq process with a REQ and a SUB socket"))
        sup.write_controller("second", controller_module(idle=_idle(IDLE, TOTAL),
                                                         marker=[_marker()]))
        with sup.client(timeout=60) as client:
            client.call("reload")
        names += [f"bench.Idle{k}" for k in range(IDLE, TOTAL)]
        pids = wait_running(sup, names + ["bench.Marker"])
        pss = sum(psutil.Process(pids[name]).memory_full_info().pss for name in names) / MB
        figures.append(Figure(
            "controller_pss_total_mb", pss, "MB", raw_pss * TOTAL, target=6 * TOTAL, goal="value<=",
            note=f"total PSS of {TOTAL} idle controllers ({pss / TOTAL:.1f} MB each); baseline: "
                 f"{TOTAL} x PSS of the raw idle process; target: 6 MB each"))
        figures.append(_restart(sup, restarts))
    return figures


def _idle(start: int, stop: int) -> list[dict[str, str]]:
    return [{"cls_name": f"Idle{k}", "name": f"bench.Idle{k}", "input": "IdleInputs.bench.cosihost.dev",
             "output": f"Idle{k}s.bench.cosihost.dev"} for k in range(start, stop)]


def _marker() -> dict[str, str]:
    return {"cls_name": "Marker", "name": "bench.Marker", "type": MARKER,
            "input": "IdleInputs.bench.cosihost.dev"}


def _tree(sup: SupervisorProcess) -> list[psutil.Process]:
    root = psutil.Process(sup.pid)
    return [root, *root.children(recursive=True)]


def _idle_cpu(sup: SupervisorProcess, seconds: float) -> Figure:
    time.sleep(1.0)  # let start-up work (status writes, first heartbeats) settle
    tree = _tree(sup)
    before, t0 = cpu_seconds(tree), time.monotonic()
    time.sleep(seconds)
    used, wall = cpu_seconds(tree) - before, time.monotonic() - t0
    return Figure("idle_cpu_pct", 100 * used / wall, "%", target=1, goal="value<",
                  note=f"supervisor tree ({len(tree)} processes: {IDLE} idle controllers) over "
                       f"{wall:.0f} s, percent of one core")


def _raw_idle(procs: Processes) -> tuple[float, float]:
    """USS and PSS (MB) of an idle raw pyzmq process with two sockets."""
    proc = procs.raw("idle", procs.ipc("idle-req.sock"), procs.ipc("idle-sub.sock"), stdin=True)
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdout.readline()
    info = psutil.Process(proc.pid).memory_full_info()
    proc.stdin.close()
    proc.wait(timeout=10)
    return info.uss / MB, info.pss / MB


def _import_seconds(repeat: int) -> float:
    """Median wall time of ``python -c "import zmq, msgpack"``."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import zmq, msgpack"], check=True)
        times.append(time.perf_counter() - start)
    return median(times)


def _restart(sup: SupervisorProcess, count: int) -> Figure:
    client = sup.client()
    try:
        def marker(pid: int = 0) -> dict | None:
            spec = client.get(NS, MARKER, "marker").spec
            return spec if spec["done"] and spec["pid"] != pid else None
        current = wait_for(marker, timeout=30, message="the marker controller's first reconcile")
        times, starts = [], []
        for _ in range(count):
            old = current["pid"]
            sup.wait_status("bench.Marker", lambda s: s["state"] == "running" and s["pid"] == old)
            killed = time.monotonic_ns()
            os.kill(old, signal.SIGKILL)
            current = wait_for(lambda: marker(old), timeout=30, interval=0.01,
                               message="the marker controller to reconcile again")
            times.append((current["done"] - killed) / 1e9)
            starts.append((current["t"] - killed) / 1e9)
    finally:
        client.close()
    baseline = _import_seconds(max(5, count // 2))
    return Figure("restart_s", median(times), "s", baseline, target=1, goal="ratio<=",
                  note=f"SIGKILL until the new process's first reconcile (input synced, a write "
                       f"acknowledged), backoff_base = 0, median of {count} (max {max(times):.3f} s; "
                       f"reconcile entered after {median(starts):.3f} s); baseline: "
                       f"python -c \"import zmq, msgpack\"")
