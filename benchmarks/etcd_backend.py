"""Writes and events of an etcd-kept namespace, beside a bare etcd client.

One real etcd member is started for the run (fsync on, as in production;
its data dir in a fresh temporary folder), so every write below waits for
etcd's WAL to reach the disk. All figures are sequential: one write in
flight, each acknowledged before the next is issued.

Baselines, measured in this process with a plain gRPC channel and nothing
else (no retries, no CAS, no codec beyond protobuf):

- raw put rate: sequential ``KV/Put`` of one stored resource's bytes to
  distinct keys; also its p50 latency;
- raw write-to-watch latency: a ``Watch`` stream on a prefix, read in a
  thread; from just before a put to its event arriving, p50.

Figures:

- ``etcd_write_rate``: sequential ``Client.create`` through a real
  supervisor into an etcd namespace (the ZeroMQ round trip, the
  supervisor's checks, a compare-and-swap ``Txn``, the supervisor's mirror
  applying it); baseline: the raw put rate.
- ``etcd_event_latency_p50``: from just before a create to the event
  arriving at another client's ``watch_kind`` on that kind (etcd, then the
  supervisor's publish); baseline: raw write-to-watch p50.
- ``memory_write_rate_beside_etcd``: the same creates into an in-memory
  namespace of the same supervisor; baseline: the etcd write rate, so the
  ratio says how much an etcd namespace costs per write.
- ``etcd_state_write_rate``: ``EtcdState.create`` in this process, no
  supervisor: the cost of CAS, msgpack and the mirror without the ZeroMQ
  hop; baseline: the raw put rate.
- ``etcd_txn_write_rate``: writes per second from one controller in
  transactions of 64 ``rt.modify`` each into an etcd namespace (one etcd
  ``Txn`` of 64 puts per transaction); baseline: the raw put rate, as for
  ``txn_write_rate`` against single raw round trips.

Rates are the best of a few passes, each on fresh ids, after warm-up writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import queue
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import msgpack

from cosihost import Client
from cosihost.resource import Resource, pack
from cosihost.state.etcd import EtcdConfig, EtcdState
from cosihost.state.etcd.schema import Messages
from cosihost.state.events import BOOTSTRAPPED, CREATED
from cosihost.testing import SupervisorProcess
from cosihost.testing.etcdcluster import EtcdCluster

from .harness import Processes, controller_module, percentile, writers
from .host_rates import TXN, Pass as HostPass, best, host_pass
from .payload import make_spec
from .report import Figure, Skipped
from .timing import rate

#: Writers in flight at once for the concurrent figures.
WRITERS = 8
FLEET = "fleet"
MEMORY = "default"
TYPE = "Bench"
EVENT_TYPE = "Bench2"
BENCH_PREFIX = "/bench"
DIRECT_PREFIX = "/direct"
RAW_PREFIX = b"/raw/"
#: Packed size aimed at for the spec of every created resource.
SPEC_BYTES = 400
#: The figures this benchmark takes.
FIGURES = ("etcd_write_rate", "etcd_concurrent_write_rate", "etcd_event_latency_p50",
           "memory_write_rate_beside_etcd", "etcd_state_write_rate", "etcd_txn_write_rate")
#: How long one write, or the event of one write, may take before the run fails.
WAIT = 10.0


def run(quick: bool) -> list[Figure]:
    n = 300 if quick else 2_000
    repeat = 2 if quick else 3
    warmup = 50 if quick else 200
    if shutil.which("etcd") is None:
        raise Skipped(FIGURES, "etcd is not on PATH (apt-get install etcd-server)")
    with etcd_member() as endpoints:
        raw = Raw(raw_put_rate(endpoints[0], n, repeat, warmup, watched=False),
                  raw_put_rate(endpoints[0], n, repeat, warmup, watched=True),
                  raw_watch_latency(endpoints[0], n, warmup),
                  raw_concurrent_rate(endpoints[0], n // WRITERS * 2))
        host = through_supervisor(endpoints, n, repeat, warmup)
        direct = etcd_state_rate(endpoints, n, repeat, warmup)
        txn = txn_through_supervisor(endpoints, n * 4 // TXN * TXN, repeat)
    return figures(n, repeat, raw, host, direct) + [txn_figure(n * 4 // TXN * TXN, repeat, raw, txn)]


@dataclasses.dataclass
class Raw:
    """The bare gRPC baselines: puts alone, puts while watching their prefix,
    put-to-event latencies (s), and puts/s of concurrent writers."""

    put: Rates
    put_watched: Rates
    watch: list[float]
    concurrent: float


@contextlib.contextmanager
def etcd_member() -> Iterator[list[str]]:
    """One etcd member on loopback (fsync on), its data in a temporary
    folder; killed and removed afterwards, whatever happened."""
    root = Path(tempfile.mkdtemp(prefix="chb-etcd-"))
    try:
        cluster = EtcdCluster(root, size=1)
        try:
            yield list(cluster.start().endpoints)
        finally:
            cluster.cleanup()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- what is written --------------------------------------------------------------
@functools.cache
def _padding() -> str:
    spec = {**make_spec(4242), "comment": ""}
    return "x" * max(0, SPEC_BYTES - 2 - len(msgpack.packb(spec)))


def bench_spec(i: int) -> dict[str, Any]:
    """A link status padded to pack to about SPEC_BYTES."""
    return {**make_spec(i), "comment": _padding()}


def stored_blob() -> bytes:
    """One resource as an etcd namespace stores it (metadata set), for raw puts."""
    res = Resource(FLEET, TYPE, "r0000", bench_spec(4242))
    md = res.metadata
    md.version, md.owner, md.created, md.updated = 1, "", 1.7e9, 1.7e9
    return pack(res)


# -- measuring --------------------------------------------------------------------
class Pass:
    """One pass of sequential writes: its rate and each write's latency (s)."""

    def __init__(self, latencies: list[float], seconds: float) -> None:
        self.latencies = latencies
        self.rate = rate(len(latencies), seconds)


class Rates:
    """The passes of one path: the best rate, and the p50 over every write."""

    def __init__(self, passes: list[Pass]) -> None:
        self.passes = passes
        self.rate = max(p.rate for p in passes)
        self.p50_ms = percentile([x for p in passes for x in p.latencies], 50) * 1e3

    def __str__(self) -> str:
        return f"{self.rate:,.0f}/s, p50 {self.p50_ms:.2f} ms"


def sequential(write: Callable[[int], object], start: int, n: int) -> Pass:
    """``write(i)`` for i in start..start+n, one after the other."""
    latencies = []
    began = time.perf_counter()
    for i in range(start, start + n):
        t = time.perf_counter()
        write(i)
        latencies.append(time.perf_counter() - t)
    return Pass(latencies, time.perf_counter() - began)


def rates(write: Callable[[int], object], n: int, repeat: int, warmup: int) -> Rates:
    """Warm up, then ``repeat`` passes of ``n`` writes, each on fresh indexes."""
    sequential(write, 0, warmup)
    return Rates([sequential(write, warmup + k * n, n) for k in range(repeat)])


def event_latencies(write: Callable[[int], object], arrivals: "queue.Queue[tuple[Any, float]]",
                    key: Callable[[int], Any], n: int, warmup: int) -> list[float]:
    """Sequential writes, each waited for on ``arrivals`` (key, arrival time):
    the time from just before the write to its event arriving, warm-up excluded."""
    latencies = []
    for i in range(warmup + n):
        t = time.perf_counter()
        write(i)
        want, deadline = key(i), time.monotonic() + WAIT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no event for write {want!r} after {WAIT:g} s")
            try:
                got, arrived = arrivals.get(timeout=remaining)
            except queue.Empty:
                continue
            if got == want:
                break
        if i >= warmup:
            latencies.append(arrived - t)
    return latencies


# -- raw etcd ---------------------------------------------------------------------
def _target(endpoint: str) -> str:
    return endpoint.removeprefix("http://").rstrip("/")


def _put_stub(channel: grpc.Channel, m: Messages) -> Callable[..., Any]:
    return channel.unary_unary("/etcdserverpb.KV/Put", request_serializer=m.PutRequest.SerializeToString,
                               response_deserializer=m.PutResponse.FromString)


@contextlib.contextmanager
def raw_watch(channel: grpc.Channel, m: Messages, prefix: bytes) -> Iterator["queue.Queue[tuple[Any, float]]"]:
    """A Watch stream on ``prefix``, read by a thread: (key, arrival time) of each event."""
    range_end = prefix[:-1] + bytes([prefix[-1] + 1])
    stop, created = threading.Event(), threading.Event()
    arrivals: queue.Queue[tuple[Any, float]] = queue.Queue()

    def requests() -> Any:
        yield m.WatchRequest(create_request=m.WatchCreateRequest(key=prefix, range_end=range_end))
        stop.wait()

    watch = channel.stream_stream("/etcdserverpb.Watch/Watch", request_serializer=m.WatchRequest.SerializeToString,
                                  response_deserializer=m.WatchResponse.FromString)
    call = watch(requests())

    def read() -> None:
        try:
            for resp in call:
                if resp.created:
                    created.set()
                for ev in resp.events:
                    arrivals.put((ev.kv.key, time.perf_counter()))
        except grpc.RpcError:
            if not stop.is_set():
                raise

    reader = threading.Thread(target=read, name="raw-etcd-watch", daemon=True)
    reader.start()
    try:
        if not created.wait(WAIT):
            raise TimeoutError(f"etcd watch not created after {WAIT:g} s")
        yield arrivals
    finally:
        stop.set()
        call.cancel()
        reader.join(WAIT)


def raw_put_rate(endpoint: str, n: int, repeat: int, warmup: int, *, watched: bool) -> Rates:
    """Sequential puts; with ``watched``, while this process watches their
    prefix (as a client that wants others' writes as events must)."""
    m, value = Messages(), stored_blob()
    prefix = RAW_PREFIX + (b"watched/" if watched else b"put/")
    with grpc.insecure_channel(_target(endpoint)) as channel:
        put = _put_stub(channel, m)

        def write(i: int) -> None:
            put(m.PutRequest(key=prefix + b"%07d" % i, value=value), timeout=WAIT)

        with raw_watch(channel, m, prefix) if watched else contextlib.nullcontext():
            return rates(write, n, repeat, warmup)


def raw_watch_latency(endpoint: str, n: int, warmup: int) -> list[float]:
    """Seconds from just before each put to its event on a watch stream."""
    m, value = Messages(), stored_blob()
    prefix = RAW_PREFIX + b"watch/"
    with grpc.insecure_channel(_target(endpoint)) as channel:
        put = _put_stub(channel, m)
        with raw_watch(channel, m, prefix) as arrivals:
            return event_latencies(
                lambda i: put(m.PutRequest(key=prefix + b"%07d" % i, value=value), timeout=WAIT),
                arrivals, lambda i: prefix + b"%07d" % i, n, warmup)


def concurrent(make_writer: Callable[[int], Callable[[int], object]], writers: int, per_writer: int) -> float:
    """Writes per second of ``writers`` threads, each ``per_writer`` writes
    on indexes of its own; from the first start to the last finish."""
    barrier = threading.Barrier(writers + 1)
    failed: list[BaseException] = []

    def work(k: int) -> None:
        write = make_writer(k)
        barrier.wait(WAIT)
        try:
            for i in range(per_writer):
                write(k * 1_000_000 + i)
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    barrier.wait(WAIT)
    began = time.perf_counter()
    for t in threads:
        t.join(WAIT * per_writer)
    took = time.perf_counter() - began
    if failed:
        raise failed[0]
    return rate(writers * per_writer, took)


def raw_concurrent_rate(endpoint: str, per_writer: int) -> float:
    m, value = Messages(), stored_blob()
    prefix = RAW_PREFIX + b"many/"
    with grpc.insecure_channel(_target(endpoint)) as channel, raw_watch(channel, m, prefix):
        put = _put_stub(channel, m)

        def writer(_k: int) -> Callable[[int], object]:
            return lambda i: put(m.PutRequest(key=prefix + b"%09d" % i, value=value), timeout=WAIT)

        return concurrent(writer, WRITERS, per_writer)


# -- through cosihost -------------------------------------------------------------
@dataclasses.dataclass
class Host:
    """What was measured through one supervisor: creates into its etcd and
    in-memory namespaces, and create-to-event latencies (s)."""

    etcd: Rates
    memory: Rates
    events: list[float]
    concurrent: float


def namespace_config(endpoints: list[str]) -> str:
    listed = ", ".join(f'"{e}"' for e in endpoints)
    return f'[namespaces.{FLEET}]\nbackend = "etcd"\nendpoints = [{listed}]\nprefix = "{BENCH_PREFIX}"\n'


def creates(create: Callable[[Resource], object], namespace: str, type: str,
            tag: str) -> Callable[[int], object]:
    """``write(i)``: create resource ``<tag><i>`` of the kind."""
    return lambda i: create(Resource(namespace, type, f"{tag}{i:07d}", bench_spec(i)))


def watched_creates(sup: SupervisorProcess, admin: Client, n: int, warmup: int) -> list[float]:
    """Creates by ``admin``, each seen by a watch_kind of another client."""
    arrivals: queue.Queue[tuple[Any, float]] = queue.Queue()
    ready, stop = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def watch() -> None:
        try:
            with sup.client() as client:
                w = client.watch_kind(FLEET, EVENT_TYPE, bootstrap=True)
                try:
                    first = w.next(timeout=WAIT)
                    if first is None or first.kind != BOOTSTRAPPED:
                        raise RuntimeError(f"watch_kind began with {first!r}, not {BOOTSTRAPPED}")
                    ready.set()
                    while not stop.is_set():
                        ev = w.next(timeout=0.1)
                        if ev is not None and ev.kind == CREATED:
                            arrivals.put((ev.resource.metadata.id, time.perf_counter()))
                finally:
                    w.close()
        except BaseException as exc:
            failed.append(exc)
            ready.set()

    watcher = threading.Thread(target=watch, name="cosihost-watch", daemon=True)
    watcher.start()
    try:
        if not ready.wait(WAIT) or failed:
            raise RuntimeError(f"the watcher did not start: {failed[0] if failed else 'timed out'}")
        return event_latencies(creates(admin.create, FLEET, EVENT_TYPE, "e"), arrivals,
                               lambda i: f"e{i:07d}", n, warmup)
    finally:
        stop.set()
        watcher.join(WAIT)


def through_supervisor(endpoints: list[str], n: int, repeat: int, warmup: int) -> Host:
    with Processes() as procs:
        sup = procs.supervisor(config=namespace_config(endpoints))
        with sup.client(admin=True) as admin:
            etcd = rates(creates(admin.create, FLEET, TYPE, "r"), n, repeat, warmup)
            events = watched_creates(sup, admin, n, warmup)
            memory = rates(creates(admin.create, MEMORY, TYPE, "r"), n, repeat, warmup)
        clients: list[Client] = []

        def writer(_k: int) -> Callable[[int], object]:
            clients.append(sup.client(admin=True))
            return creates(clients[-1].create, FLEET, "Many", "m")

        try:
            many = concurrent(writer, WRITERS, n // WRITERS * 2)
        finally:
            for client in clients:
                client.close()
    return Host(etcd, memory, events, many)


def txn_through_supervisor(endpoints: list[str], n: int, repeat: int) -> HostPass:
    """One writer controller, ``n`` rt.modify in transactions of TXN into the etcd namespace."""
    with Processes() as procs:
        entry = writers(1, run="etcdtxn", prefix="EtcdWriter", ns=FLEET)
        sup = procs.supervisor(config=namespace_config(endpoints), bench=controller_module(writer=entry))
        with sup.client() as client:
            return best([host_pass(sup, client, "etcdtxn", [entry[0]["name"]], n, n=n, warmup=TXN, batch=TXN)
                         for _ in range(repeat)])


def etcd_state_rate(endpoints: list[str], n: int, repeat: int, warmup: int) -> Rates:
    state = EtcdState(EtcdConfig(endpoints=tuple(endpoints), prefix=DIRECT_PREFIX))
    try:
        return rates(creates(state.create, FLEET, TYPE, "r"), n, repeat, warmup)
    finally:
        state.close()


# -- figures ----------------------------------------------------------------------
def txn_figure(n: int, repeat: int, raw: Raw, txn: HostPass) -> Figure:
    return Figure("etcd_txn_write_rate", txn.rate, "writes/s", raw.put_watched.rate, target=1.0, goal="ratio>=",
                  note=f"{n:,} rt.modify from one controller into an etcd namespace in transactions of {TXN} "
                       f"(one etcd Txn each), best of {repeat}; {txn}; baseline: sequential raw gRPC KV/Put "
                       f"while watching their prefix, {raw.put_watched}")


def figures(n: int, repeat: int, raw: Raw, host: Host, direct: Rates) -> list[Figure]:
    size = len(stored_blob())
    bare = f"raw gRPC KV/Put of {size} bytes to distinct keys, best of {repeat}"
    watched = (f"{bare} while the same process watches their prefix (as cosihost does), {raw.put_watched}; "
               f"without the watch {raw.put} (ratio {host.etcd.rate / raw.put.rate:.2f})")
    raw_event_ms = percentile(raw.watch, 50) * 1e3
    event_ms = [x * 1e3 for x in host.events]
    per_writer = n // WRITERS * 2
    return [
        Figure("etcd_write_rate", host.etcd.rate, "writes/s", raw.put_watched.rate, target=0.8, goal="ratio>=",
               note=f"{n:,} sequential Client.create (~{SPEC_BYTES}-byte spec) into an etcd namespace of "
                    f"a supervisor, 1-member etcd with fsync, best of {repeat}; p50 "
                    f"{host.etcd.p50_ms:.2f} ms; baseline: {watched}"),
        Figure("etcd_concurrent_write_rate", host.concurrent, "writes/s", raw.concurrent, target=0.8,
               goal="ratio>=",
               note=f"{WRITERS} threads x {per_writer:,} Client.create each (a client each) into the etcd "
                    f"namespace; baseline: {WRITERS} threads x {per_writer:,} raw puts on one gRPC channel "
                    f"while watching their prefix, {raw.concurrent:,.0f}/s"),
        Figure("etcd_event_latency_p50", percentile(event_ms, 50), "ms", raw_event_ms, target=2.0,
               goal="ratio<=",
               note=f"{len(event_ms):,} sequential creates, each awaited at another client's watch_kind "
                    f"before the next; from before the create to the event; p99 "
                    f"{percentile(event_ms, 99):.2f} ms; baseline: raw put to a gRPC Watch event, "
                    f"p50 {raw_event_ms:.2f} ms, p99 {percentile(raw.watch, 99) * 1e3:.2f} ms"),
        Figure("memory_write_rate_beside_etcd", host.memory.rate, "writes/s", host.etcd.rate,
               note=f"{n:,} sequential Client.create into the in-memory namespace of the same "
                    f"supervisor, best of {repeat}, p50 {host.memory.p50_ms:.2f} ms; baseline: "
                    f"etcd_write_rate"),
        Figure("etcd_state_write_rate", direct.rate, "writes/s", raw.put_watched.rate,
               note=f"{n:,} sequential EtcdState.create in process, no supervisor (CAS Txn, msgpack, "
                    f"mirror), best of {repeat}, p50 {direct.p50_ms:.2f} ms; baseline: raw puts while "
                    f"watching, {raw.put_watched}"),
    ]
