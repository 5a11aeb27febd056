"""The supervisor's figures for Prometheus, kept by the main loop.

Counting happens where the work is done, on the loop's thread, in plain
ints, dicts and lists: no lock, nothing shared while it is counted. A
scrape runs on prometheus-client's HTTP thread, which must never read
structures the loop is changing: it *asks* the loop (a queue and a wake-up)
and the loop answers with a :class:`Snapshot`, copies taken between two of
its iterations. Between scrapes nothing is copied, so the loop pays for
metrics only per request (two clock reads and a few increments) and per
scrape. If the loop does not answer in time (it is stuck), the scrape
serves the previous snapshot and says how old it is.

The controllers' figures are the counters their own processes report with
each heartbeat (as ControllerStatuses show them); the supervisor adds only
what it knows itself: state, restarts, pid, start time.

prometheus-client is imported in :mod:`exporter`, never here: this module
is loaded only when metrics are enabled, but it stays importable without
the library.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..errors import InvalidRequestError
from ..wire import Histogram, Reply
from .processes import REFUSED
from .supervision import Supervision

#: Upper bounds (seconds) of the buckets of request latencies and loop lag.
REQUEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 5.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
Respond = Callable[[Reply], None]


class RequestStats:
    """Requests by operation and result, and their latency by operation.
    Touched only by the loop (hot path: keep it to increments)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.latency: dict[str, Histogram] = {}

    def record(self, op: str, result: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        key = (op, result)
        self.counts[key] = self.counts.get(key, 0) + 1
        hist = self.latency.get(op)
        if hist is None:
            hist = self.latency[op] = Histogram(REQUEST_BUCKETS)
        hist.observe(elapsed)

    def timed(self, op: str, started: float,
              respond_later: Callable[[str], Respond]) -> Callable[[str], Respond]:
        """``respond_later`` whose replies are counted when they are sent (a
        deferred request's latency runs until its answer)."""
        def make(rid: str) -> Respond:
            respond = respond_later(rid)

            def counted(reply: Reply) -> None:
                self.record(op, "ok" if reply.ok else reply.code or "error", started)
                respond(reply)
            return counted
        return make


@dataclasses.dataclass(frozen=True)
class ControllerFigures:
    name: str
    state: str
    restarts: int
    pid: int  # 0: no process now
    started: float | None  # wall-clock start of the current process
    counters: Mapping[str, int]
    #: The controller's histograms as its heartbeat sent them (unchecked).
    durations: Any = None
    #: Writes refused for its write rate limit (the supervisor's count, across processes).
    throttled: int = 0


@dataclasses.dataclass(frozen=True)
class Snapshot:
    taken: float  # time.monotonic()
    ready: bool
    controllers: tuple[ControllerFigures, ...]
    requests: Mapping[tuple[str, str], int]
    latency: Mapping[str, Histogram]
    events_published: int
    loop_lag: Histogram
    subscribers: int
    etcd_reached: Mapping[str, bool]


@dataclasses.dataclass
class _Ask:
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    snapshot: Snapshot | None = None


class Figures:
    """What the loop counts for metrics, and its side of the scrape hand-over."""

    def __init__(self, wake: Callable[[], None], listen: tuple[str, int]) -> None:
        self._wake = wake
        self.listen = listen
        self.requests = RequestStats()
        self.loop_lag = Histogram(LAG_BUCKETS)
        #: Connections to the events socket, counted from its monitor.
        self.subscribers = 0
        self.monitor: "zmq.Socket[bytes] | None" = None
        self._exporter: Any = None
        self._durations: dict[str, Any] = {}
        self._asks: queue.SimpleQueue[_Ask] = queue.SimpleQueue()
        self.last: Snapshot | None = None

    def serve_http(self, runtime_dir: Path) -> str:
        """Start the HTTP endpoint; the address it listens on. prometheus-client
        is imported only now."""
        try:
            from .exporter import Exporter
        except ImportError as exc:
            raise InvalidRequestError(f"metrics need prometheus-client ({exc.name} is missing): "
                                      "pip install prometheus-client") from None
        self._exporter = Exporter(self, self.listen, runtime_dir)
        address: str = self._exporter.address
        return address

    def close(self) -> None:
        if self._exporter is not None:
            self._exporter.close()
        if self.monitor is not None:
            self.monitor.close(linger=0)

    # -- the loop's side -------------------------------------------------------
    def heartbeat(self, name: str, args: dict[str, Any]) -> None:
        """Keep a controller's histograms; read (and checked) only at a scrape."""
        durations = args.get("durations")
        if durations is not None:
            self._durations[name] = durations

    def watch_subscribers(self, pub: "zmq.Socket[bytes]") -> None:
        """Monitor the events socket's connections (call before it binds);
        the loop polls :attr:`monitor`."""
        self.monitor = pub.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)

    def serve(self, events: Mapping[Any, int], sup: Supervision, *, ready: bool, published: int,
              etcd: Mapping[str, bool]) -> None:
        """After a wake-up or a monitor event: count connections, answer scrapes."""
        if self.monitor is not None and self.monitor in events:
            self._count_connections(self.monitor)
        if not self._asks.empty():
            self._answer(sup, ready=ready, published=published, etcd=etcd)

    def _count_connections(self, monitor: "zmq.Socket[bytes]", budget: int = 256) -> None:
        for _ in range(budget):
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_ACCEPTED:
                self.subscribers += 1
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self.subscribers = max(0, self.subscribers - 1)

    def _answer(self, sup: Supervision, *, ready: bool, published: int, etcd: Mapping[str, bool]) -> None:
        """Take a snapshot for every scrape waiting."""
        snap = Snapshot(
            taken=time.monotonic(), ready=ready, controllers=self._controllers(sup),
            requests=dict(self.requests.counts),
            latency={op: h.copy() for op, h in self.requests.latency.items()},
            events_published=published, loop_lag=self.loop_lag.copy(), subscribers=self.subscribers,
            etcd_reached=dict(etcd))
        self.last = snap
        while True:
            try:
                ask = self._asks.get_nowait()
            except queue.Empty:
                return
            ask.snapshot = snap
            ask.done.set()

    def _controllers(self, sup: Supervision) -> tuple[ControllerFigures, ...]:
        out = {}
        for slot in sup.slots.values():
            alive = slot.proc is not None
            out[slot.name] = ControllerFigures(
                slot.name, slot.state, slot.restarts, slot.pid if alive else 0,
                slot.started_wall if alive else None, dict(slot.counters), self._durations.get(slot.name),
                sup.status.throttled(slot.name))
        refused = [r.status_id for r in sup.refused.values()] + [m.name for m in sup.module_errors]
        for name in refused:
            out.setdefault(name, ControllerFigures(name, REFUSED, 0, 0, None, {}))
        for gone in set(self._durations) - set(sup.slots):
            del self._durations[gone]
        return tuple(out[name] for name in sorted(out))

    # -- the scrape's side (another thread) -------------------------------------
    def ask(self, timeout: float) -> Snapshot | None:
        """A fresh snapshot from the loop; the last one if it does not answer in time."""
        ask = _Ask()
        self._asks.put(ask)
        self._wake()
        if ask.done.wait(timeout):
            return ask.snapshot
        return self.last
