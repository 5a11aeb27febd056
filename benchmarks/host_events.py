"""Change events through a real supervisor, beside raw ZeroMQ PUB/SUB.

- ``event_latency_p99``: a writer controller modifies a link status 2,000
  times a second; a watcher controller (another process, the link status
  kind as its input) notes when each write is first seen in its reconcile.
  Latency: from the write being issued (``rt.modify`` called) to the watcher
  seeing it, so it spans the request, the acknowledged write and the event.
  Baseline: raw PUB to SUB one way, same event frame, same rate.
- ``fanout_rate``: one writer modifies at full speed, 16 watcher controllers
  each see every change; events per second reaching the slowest watcher
  (first write issued to last write seen). Lost: a watcher that never saw
  the last write or had to resync its cache (counters in ControllerStatuses);
  must be 0. Baseline: raw PUB to 16 SUB processes, HWM=0, as fast as
  possible, slowest subscriber.
- ``fanout_txn_rate``: the same, with the writer writing in transactions
  of 64 (its last write each time is the one watchers read): a loop turn
  then carries many changes, so this is what the batched event path moves
  when the writer's round trip does not bound it. No target; same baseline.

A watcher's reconcile coalesces what arrived meanwhile, so it may skip
writes; the figures say how many it saw one by one.
"""

from __future__ import annotations


from .harness import (CpuMeter, Processes, controller_module, link_type, ns_array, percentile,
                      results, trigger, watchers, writers)
from .report import Figure

RATE = 2_000
FANOUT = 16
#: Writes per transaction of the writer of ``fanout_txn_rate``.
TXN = 64


def run(quick: bool) -> list[Figure]:
    latency_n = 2_000 if quick else 20_000
    fanout_n = 1_000 if quick else 10_000
    raw_fanout_n = 20_000 if quick else 100_000
    return [event_latency(latency_n), *fanout(fanout_n, raw_fanout_n),
            *fanout(fanout_n * 4, raw_fanout_n, batch=TXN)]


def _raw_pubsub(procs: Processes, subs: int, n: int, period_ns: int) -> tuple[dict, list[dict]]:
    addr, sync = procs.ipc("pub.sock"), procs.ipc("sync.sock")
    pub = procs.raw("pub", addr, sync, subs, n, period_ns)
    subscribers = [procs.raw("sub", addr, sync, n) for _ in range(subs)]
    timeout = 60 + n / 1000
    got = [procs.result(s, timeout=timeout) for s in subscribers]
    return procs.result(pub, timeout=timeout), got


def event_latency(n: int) -> Figure:
    period = 1_000_000_000 // RATE
    with Processes() as procs:
        _, (raw,) = _raw_pubsub(procs, 1, n, period)
        raw_us = [x / 1e3 for x in raw["latencies"]]
        link = link_type("Latency")
        entry = writers(1, run="latency", link=lambda k: link)
        watch = watchers(1, link=link)
        sup = procs.supervisor(bench=controller_module(writer=entry, watcher=watch))
        wname, vname = entry[0]["name"], watch[0]["name"]
        with sup.client() as client:
            go = trigger(client, "latency", n=n, warmup=200, period_ns=period)
            got = results(client, [wname, vname], go, timeout=60 + 2 * n / RATE)
        issued, acked = ns_array(got[wname]["issued"]), ns_array(got[wname]["acked"])
        seqs, times = ns_array(got[vname]["seqs"]), ns_array(got[vname]["times"])
    lat_us = [(t - issued[s]) / 1e3 for s, t in zip(seqs, times)]
    after_ack_us = [(t - acked[s]) / 1e3 for s, t in zip(seqs, times)]
    write_us = [(a - i) / 1e3 for i, a in zip(issued, acked)]
    achieved = n / ((issued[-1] - issued[0]) / 1e9) if n > 1 else 0.0
    p99, raw_p99 = percentile(lat_us, 99), percentile(raw_us, 99)
    return Figure(
        "event_latency_p99", p99, "us", raw_p99, target=2, goal="ratio<=",
        note=f"{n:,} writes at {achieved:,.0f}/s, {len(seqs):,} seen one by one by the watcher; "
             f"p50 {percentile(lat_us, 50):.0f} us; write round trip p50 "
             f"{percentile(write_us, 50):.0f} p99 {percentile(write_us, 99):.0f} us; after the ack "
             f"p50 {percentile(after_ack_us, 50):.0f} p99 {percentile(after_ack_us, 99):.0f} us; "
             f"baseline: raw PUB->SUB one way, p50 {percentile(raw_us, 50):.0f} us",
        samples={"cosihost (write issued to watcher's reconcile)": lat_us,
                 "raw ZeroMQ PUB->SUB (one way)": raw_us})


def fanout(n: int, raw_n: int, *, batch: int = 0) -> list[Figure]:
    """``fanout_rate`` (and ``fanout_lost``); with ``batch``, ``fanout_txn_rate``
    (and ``fanout_txn_lost``): the writer writes in transactions of ``batch``,
    so what it can issue no longer bounds what the watchers can receive."""
    name = "fanout_txn" if batch else "fanout"
    with Processes() as procs:
        pub, subs = _raw_pubsub(procs, FANOUT, raw_n, 0)
        raw_rate = min(s["received"] / ((s["last"] - pub["start"]) / 1e9) for s in subs)
        raw_lost = sum(s["lost"] for s in subs)
        link = link_type("Fanout")
        entry = writers(1, run=name, link=lambda k: link)
        watch = watchers(FANOUT, link=link)
        sup = procs.supervisor(bench=controller_module(writer=entry, watcher=watch))
        wname = entry[0]["name"]
        names = [w["name"] for w in watch]
        with sup.client() as client:
            meter = CpuMeter([sup.pid]).start()
            go = trigger(client, name, n=n, warmup=200, batch=batch)
            try:
                got = results(client, [wname, *names], go, timeout=60 + n / 200)
                missing = 0
            except TimeoutError:
                got, missing = {}, len(names)
            sup_us = meter.stop() / n * 1e6
            statuses = sup.statuses()
    resyncs = sum(statuses[name]["counters"].get("resyncs", 0) for name in names)
    lost = missing + resyncs
    if got:
        issued = ns_array(got[wname]["issued"])
        start = issued[0]
        written = n / ((ns_array(got[wname]["acked"])[-1] - start) / 1e9)
        rates = [n / ((ns_array(got[w]["times"])[-1] - start) / 1e9) for w in names]
        one_by_one = min(len(ns_array(got[w]["seqs"])) for w in names)
        slowest: float | None = min(rates)
        watcher_us = sum(got[w]["cpu_ns"] for w in names) / len(names) / n / 1e3
        writer_us = got[wname]["cpu_ns"] / n / 1e3
    else:
        written, slowest, one_by_one, watcher_us, writer_us = 0.0, None, 0, 0.0, 0.0
    raw_sub_us = sum(s["cpu_ns"] for s in subs) / len(subs) / raw_n / 1e3
    return [
        Figure(f"{name}_rate", slowest, "events/s", raw_rate, target=None if batch else 0.7, goal="" if batch else "ratio>=",
               ok=lost == 0,
               note=f"{n:,} writes{f' in transactions of {batch}' if batch else ''} (writer at {written:,.0f}/s) "
                    f"to {FANOUT} watcher controllers, "
                    f"slowest watcher, first issue to last seen; {one_by_one:,} seen one by one "
                    f"(the rest coalesced); CPU per event: {watcher_us:.0f} us in each watcher, "
                    f"supervisor {sup_us:.0f} us, writer {writer_us:.0f} us; baseline: raw "
                    f"PUB->{FANOUT} SUB, HWM=0, {raw_n:,} events, slowest subscriber, {raw_lost} lost, "
                    f"{raw_sub_us:.0f} us CPU per event in each subscriber"),
        Figure(f"{name}_lost", lost, "events", target=0, goal="value<=", ok=lost == 0 and raw_lost == 0,
               note=f"watchers that never saw the last write ({missing}) plus cache resyncs ({resyncs})"),
    ]
