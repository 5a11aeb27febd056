"""Write rates through a real supervisor, beside raw ZeroMQ request/reply.

- ``write_rate``: sequential ``rt.modify`` round trips per second from one
  controller process (one link status, ~430 bytes packed); baseline: a raw
  REQ/REP round trip of the same request and reply between two processes
  over ipc, msgpack-decoded on both sides.
- ``txn_write_rate``: writes per second from one controller in
  transactions of 64 ``rt.modify`` each (64 link statuses); baseline: the
  same raw REQ/REP round trips of single writes as ``write_rate``.
- ``aggregate_write_rate``: writes per second of 16 writer controllers
  started together, each modifying a link status of its own output type;
  baseline: raw DEALER/ROUTER with 64 requests in flight.

Each figure is the best of a few passes, cosihost and raw alike. The notes
give the CPU time per write of the server side (the supervisor process, or
the raw server) and of the clients (the writer controllers' measured part,
or the raw client): with 2 cores, their sum bounds the aggregate rate.
"""

from __future__ import annotations

import time
from typing import Any

from cosihost import Client
from cosihost.testing import SupervisorProcess

from .harness import CpuMeter, Processes, controller_module, ns_array, results, trigger, writers
from .report import Figure

WRITERS = 16
INFLIGHT = 64
#: Writes per transaction in ``txn_write_rate``.
TXN = 64


def run(quick: bool) -> list[Figure]:
    n = 2_000 if quick else 20_000
    per_writer = 300 if quick else 2_000
    repeat = 2 if quick else 3
    return [write_rate(n, repeat), txn_write_rate(n, repeat), aggregate_write_rate(per_writer, repeat)]


class Pass:
    """One measured pass: its rate and the CPU time per operation (us) of
    the server side (supervisor, or the raw server) and of the clients."""

    def __init__(self, ops: int, seconds: float, server_cpu: float, client_cpu: float) -> None:
        self.rate = ops / seconds
        self.server_us = server_cpu / ops * 1e6
        self.client_us = client_cpu / ops * 1e6

    def __str__(self) -> str:
        return f"CPU per write: server {self.server_us:.0f} us, client(s) {self.client_us:.0f} us"


def best(passes: list[Pass]) -> Pass:
    return max(passes, key=lambda p: p.rate)


def raw_pass(procs: Processes, server: str, client: str, n: int, *extra: int) -> Pass:
    """A raw client role against a raw server role."""
    addr = procs.ipc(f"{server}.sock")
    srv = procs.raw(server, addr)
    try:
        meter = CpuMeter([srv.pid]).start()
        out = procs.result(procs.raw(client, addr, n, *extra))
        server_cpu = meter.stop()
    finally:
        srv.kill()
    return Pass(n, (out["end"] - out["start"]) / 1e9, server_cpu, out["cpu_ns"] / 1e9)


def host_pass(sup: SupervisorProcess, client: Client, run: str, names: list[str], ops: int,
              **spec: Any) -> Pass:
    """Trigger a run of writer controllers; first issue to last ack."""
    meter = CpuMeter([sup.pid]).start()
    go = trigger(client, run, **spec)
    got = results(client, names, go, timeout=60 + ops / 300)
    server_cpu = meter.stop()
    start = min(ns_array(r["issued"])[0] for r in got.values())
    end = max(ns_array(r["acked"])[-1] for r in got.values())
    return Pass(ops, (end - start) / 1e9, server_cpu, sum(r["cpu_ns"] for r in got.values()) / 1e9)


def one_writer(n: int, repeat: int, *, batch: int = 0) -> tuple[Pass, Pass]:
    """One writer controller (in transactions of ``batch``, if given) and raw REQ/REP."""
    run = "txn" if batch else "single"
    with Processes() as procs:
        raw = best([raw_pass(procs, "rep", "req", n) for _ in range(repeat)])
        entry = writers(1, run=run)
        sup = procs.supervisor(bench=controller_module(writer=entry))
        with sup.client() as client:
            host = best([host_pass(sup, client, run, [entry[0]["name"]], n, n=n, warmup=200, batch=batch)
                         for _ in range(repeat)])
    return host, raw


def write_rate(n: int, repeat: int) -> Figure:
    host, raw = one_writer(n, repeat)
    return Figure("write_rate", host.rate, "writes/s", raw.rate, target=0.75, goal="ratio>=",
                  note=f"{n:,} sequential rt.modify of one resource from one controller, best of "
                       f"{repeat}; {host}; baseline: raw REQ/REP round trips (same request and reply "
                       f"frames, msgpack both sides), {raw}")


def txn_write_rate(n: int, repeat: int) -> Figure:
    n = n // TXN * TXN
    host, raw = one_writer(n, repeat, batch=TXN)
    return Figure("txn_write_rate", host.rate, "writes/s", raw.rate, target=1.0, goal="ratio>=",
                  note=f"{n:,} rt.modify from one controller in transactions of {TXN} resources, best of "
                       f"{repeat}; {host}; baseline: raw REQ/REP round trips of single writes, {raw}")


def aggregate_write_rate(per_writer: int, repeat: int) -> Figure:
    total = WRITERS * per_writer
    with Processes() as procs:
        raw = best([raw_pass(procs, "router", "dealer", total * 2, INFLIGHT) for _ in range(repeat)])
        entries = writers(WRITERS, run="aggregate")
        sup = procs.supervisor(bench=controller_module(writer=entries))
        names = [e["name"] for e in entries]
        with sup.client() as client:
            # All start at one instant (monotonic time is shared), after their warm-up.
            host = best([host_pass(sup, client, "aggregate", names, total, n=per_writer, warmup=50,
                                   start_at_ns=time.monotonic_ns() + 1_000_000_000)
                         for _ in range(repeat)])
    return Figure("aggregate_write_rate", host.rate, "writes/s", raw.rate, target=0.6, goal="ratio>=",
                  note=f"{WRITERS} writer controllers x {per_writer:,} rt.modify, each on an output "
                       f"type of its own, first issue to last ack, best of {repeat}; {host}; baseline: "
                       f"raw DEALER/ROUTER, {INFLIGHT} in flight, {raw}")
