"""Serving the supervisor's figures over HTTP in Prometheus' text format.

Imported only when ``[metrics] listen`` (or ``--metrics-listen``) is set, so
nothing else pays for prometheus-client. The registry is the supervisor's
own (never the library's global one), holding a collector that turns a
:class:`~.metrics.Snapshot` into metric families at scrape time: the HTTP
thread builds families from copies the loop handed over and touches no
supervisor state; psutil reads of the controllers' CPU and memory happen
here too, off the loop. docs/metrics.md lists every name below.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

from ..errors import InvalidRequestError
from ..wire import Histogram, WireError
from .metrics import ControllerFigures, Figures, Snapshot
from .processes import BACKOFF, CRASH_LOOP, REFUSED, RUNNING, STARTING, STOPPED
from .status import usage

log = logging.getLogger("cosihost.supervisor")

#: Where a supervisor writes the address it serves metrics on (HOST:PORT).
ADDRESS_FILE = "metrics.addr"
#: How long a scrape waits for the loop's snapshot before serving the last one.
SCRAPE_WAIT = 2.0
STATES = (STARTING, RUNNING, BACKOFF, CRASH_LOOP, STOPPED, REFUSED)

#: The counters a controller's heartbeat reports, exported as:
#: counter key -> (metric name, counter or gauge, help).
CONTROLLER_FIGURES: dict[str, tuple[str, str, str]] = {
    "reconciles": ("cosihost_controller_reconciles", "counter", "Reconciles that returned."),
    "crashes": ("cosihost_controller_reconcile_errors", "counter", "Reconciles that raised."),
    "reads": ("cosihost_controller_reads", "counter", "Reads (get, list) from the controller's cache."),
    "writes": ("cosihost_controller_writes", "counter", "Writes sent to the supervisor."),
    "events": ("cosihost_controller_events_received", "counter",
               "Published events received for the kinds the controller caches."),
    "resyncs": ("cosihost_controller_cache_resyncs", "counter",
                "Kinds the controller's cache took a fresh snapshot of."),
    "wakeups": ("cosihost_controller_wakeups", "counter", "Input changes that made the controller dirty."),
    "resent": ("cosihost_controller_requests_resent", "counter",
               "Requests sent again after a reply did not come in time."),
    "failures": ("cosihost_controller_failing_reconciles", "gauge", "Reconciles failed in a row now."),
    "waiting": ("cosihost_controller_waiting_inputs", "gauge", "Input kinds that cannot be synced yet."),
    "pending": ("cosihost_controller_pending", "gauge",
                "1 while changes wait for a reconcile (dirty, e.g. in backoff), at the last heartbeat."),
    # queue controllers (cosihost.QController) only:
    "queue_length": ("cosihost_controller_queue_length", "gauge", "Items queued or being reconciled."),
    "processed": ("cosihost_controller_items_processed", "counter", "Queue items reconciled (any outcome)."),
    "requeues": ("cosihost_controller_requeues", "counter", "Queue items put back (Requeue or failure)."),
    "mapped_in": ("cosihost_controller_mapped_in", "counter", "Events of mapped inputs given to map_input."),
    "mapped_out": ("cosihost_controller_mapped_out", "counter", "Queue items map_input returned."),
    "busy_ms": ("cosihost_controller_busy_milliseconds", "counter", "Time spent in reconciles of queue items."),
}


def _buckets(hist: Histogram) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip(hist.bounds, hist.counts):
        total += count
        out.append((floatToGoString(bound), total))  # type: ignore[no-untyped-call]
    out.append(("+Inf", total + hist.counts[-1]))
    return out


class SnapshotCollector:
    """Metric families from the loop's snapshot, built at each scrape."""

    def __init__(self, figures: Figures) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        snap = self.figures.ask(SCRAPE_WAIT)
        if snap is None:  # the loop has not answered once yet
            return
        yield from _supervisor(snap)
        yield from _controllers(snap.controllers)


def _supervisor(snap: Snapshot) -> Iterator[Metric]:
    requests = CounterMetricFamily("cosihost_supervisor_requests", "Requests answered, by operation and result "
                                   "(ok, an error code, or replayed from the reply cache).",
                                   labels=["op", "result"])
    for (op, result), count in sorted(snap.requests.items()):
        requests.add_metric([op, result], count)
    yield requests
    latency = HistogramMetricFamily("cosihost_supervisor_request_duration_seconds",
                                    "From the loop reading a request to sending its answer, by operation.", labels=["op"])
    for op, hist in sorted(snap.latency.items()):
        latency.add_metric([op], _buckets(hist), hist.sum)
    yield latency
    yield CounterMetricFamily("cosihost_supervisor_events_published", "Change events published.",
                              value=snap.events_published)
    lag = HistogramMetricFamily("cosihost_supervisor_loop_lag_seconds",
                                "How late the main loop ran its timers (starts, hang checks, status refresh).")
    lag.add_metric([], _buckets(snap.loop_lag), snap.loop_lag.sum)
    yield lag
    yield GaugeMetricFamily("cosihost_supervisor_subscribers", "Connections to the events socket.",
                            value=snap.subscribers)
    yield GaugeMetricFamily("cosihost_supervisor_ready", "1 once every controller has reconciled once.",
                            value=1 if snap.ready else 0)
    yield GaugeMetricFamily("cosihost_supervisor_figures_age_seconds", "Age of the figures served: near 0 "
                            f"unless the main loop did not answer the scrape within {SCRAPE_WAIT:g} s.",
                            value=max(0.0, time.monotonic() - snap.taken))
    reached = GaugeMetricFamily("cosihost_etcd_namespace_reached",
                                "1 when the etcd namespace (as configured) has been read and is followed.",
                                labels=["namespace"])
    for namespace, ok in sorted(snap.etcd_reached.items()):
        reached.add_metric([namespace], 1 if ok else 0)
    yield reached


def _controllers(controllers: tuple[ControllerFigures, ...]) -> Iterator[Metric]:
    state = GaugeMetricFamily("cosihost_controller_state", "1 for the controller's current state, 0 for "
                              "the others.", labels=["controller", "state"])
    restarts = CounterMetricFamily("cosihost_controller_restarts", "Processes of the controller that ended "
                                   "and were started again.", labels=["controller"])
    throttled = CounterMetricFamily("cosihost_controller_throttled_writes", "Writes refused for the "
                                    "controller's write rate limit (it waits and sends them again).",
                                    labels=["controller"])
    started = GaugeMetricFamily("cosihost_controller_start_time_seconds", "When the controller's current "
                                "process started (Unix time); its counters start from 0 then.",
                                labels=["controller"])
    families = {key: (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
        name, doc, labels=["controller"]) for key, (name, kind, doc) in CONTROLLER_FIGURES.items()}
    durations = HistogramMetricFamily("cosihost_controller_reconcile_duration_seconds",
                                      "How long reconciles took (failed ones too).", labels=["controller"])
    cpu = CounterMetricFamily("cosihost_controller_cpu_seconds", "CPU time (user and system) of the "
                              "controller's current process.", labels=["controller"])
    memory = GaugeMetricFamily("cosihost_controller_memory_rss_bytes", "Resident memory of the controller's "
                               "current process.", labels=["controller"])
    for c in controllers:
        for name in STATES:
            state.add_metric([c.name, name], 1 if c.state == name else 0)
        if c.state == REFUSED:
            continue
        restarts.add_metric([c.name], c.restarts)
        throttled.add_metric([c.name], c.throttled)
        if c.started is not None:
            started.add_metric([c.name], c.started)
        for key, family in families.items():
            if key in c.counters:
                family.add_metric([c.name], c.counters[key])
        hist = _histogram(c)
        if hist is not None:
            durations.add_metric([c.name], _buckets(hist), hist.sum)
        used = usage(c.pid) if c.pid else {}
        if used:
            cpu.add_metric([c.name], used["cpu_seconds"])
            memory.add_metric([c.name], used["rss_bytes"])
    yield from (state, restarts, throttled, started, *families.values(), durations, cpu, memory)


def _histogram(c: ControllerFigures) -> Histogram | None:
    """The reconcile durations a controller sent, if well formed."""
    if not isinstance(c.durations, dict) or "reconcile_seconds" not in c.durations:
        return None
    try:
        return Histogram.from_wire(c.durations["reconcile_seconds"])
    except WireError as exc:
        log.debug("%s sent reconcile durations that are not a histogram: %s", c.name, exc)
        return None


class Exporter:
    """The HTTP endpoint; ``address`` is where it listens (also written to
    ``<runtime dir>/metrics.addr``, for port 0)."""

    def __init__(self, figures: Figures, listen: tuple[str, int], runtime_dir: Path) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(figures))
        ProcessCollector(namespace="cosihost_supervisor", registry=self.registry)
        host, port = listen
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise InvalidRequestError(f"metrics: cannot listen on {_format(host, port)}: "
                                      f"{exc.strerror or exc}") from None
        bound = self._server.server_address
        self.address = _format(str(bound[0]), int(bound[1]))
        self._file = runtime_dir / ADDRESS_FILE
        tmp = self._file.with_suffix(".tmp")
        tmp.write_text(self.address + "\n")
        os.replace(tmp, self._file)
        log.info("serving metrics at http://%s/metrics", self.address)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        try:
            self._file.unlink()
        except FileNotFoundError:
            pass


def _format(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
