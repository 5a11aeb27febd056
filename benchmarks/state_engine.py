"""The in-process state engine (InMemoryState): rates, big kinds, memory, watchers.

Figures (the same names with ``--quick``, which uses smaller counts; the
count is in each figure's note):

- ``state.create``, ``state.get``, ``state.update``, ``state.modify``: ops/s
  on one kind, against the codec floor (a pack plus an unpack of the same
  resource, which every write pays at least once) or, for get, a bare unpack;
- ``state.list``: seconds to list every resource of a kind, against bare
  unpacking of the same blobs; ``state.bootstrap``: seconds for a
  ``watch_kind(bootstrap=True)`` to deliver every item and ``bootstrapped``,
  against ``state.list``;
- ``state.memory_per_resource`` (tracemalloc: bytes the state holds per
  resource) and ``state.rss_per_resource`` (RSS growth of a fresh process),
  both against the packed size of one resource;
- ``state.watch16.delivery`` (events/s reaching the slowest of 16 watcher
  threads while one writer modifies at full speed), ``state.watch16.write_rate``
  (the writer's modify/s meanwhile; baseline: modify/s with no watcher) and
  ``state.watch16.lost`` (events some watcher missed or got out of order,
  including overruns: must be 0);
- ``state.create_persistent``: create/s in a SQLite-backed persistent
  namespace (a durable commit per write), against in-memory create/s.
"""

from __future__ import annotations

import gc
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

from cosihost.resource import Resource, pack, unpack
from cosihost.state import BOOTSTRAPPED, ERROR, InMemoryState, SqliteStore

from .payload import NS, TYPE, make_resources, make_spec
from .report import Figure
from .timing import best_of, each, rate, timed

OWNER = "net.LinkStatusController"
WATCHERS = 16


def _bump(spec: dict) -> None:
    spec["counter"] += 1


def run(quick: bool) -> list[Figure]:
    n = 5_000 if quick else 100_000
    events = 2_000 if quick else 10_000
    persistent_n = 200 if quick else 2_000

    resources = make_resources(n)
    # The inputs are the benchmark's, not the engine's: keep them out of the
    # garbage collector's way so that they do not slow the figures down.
    gc.collect()
    gc.freeze()
    try:
        return _run(n, events, persistent_n, 3, resources)
    finally:
        gc.unfreeze()


def _run(n: int, events: int, persistent_n: int, repeat: int,
         resources: list[Resource]) -> list[Figure]:
    figures: list[Figure] = []
    of_n = f"{n:,} resources in one kind"

    # The codec floor: what one pack + unpack of such a resource costs.
    sample = resources[: min(n, 20_000)]
    codec = rate(len(sample), best_of(repeat, lambda: each(sample, lambda r: unpack(pack(r)))))
    blobs = [pack(r) for r in sample]
    bare_unpack = rate(len(blobs), best_of(repeat, lambda: each(blobs, unpack)))

    # Each figure is the best of `repeat` passes (the least disturbed one).
    def fill() -> InMemoryState:
        fresh = InMemoryState()
        for r in resources:
            fresh.create(r, owner=OWNER)
        return fresh

    create_s = min(_timed_fill(fill) for _ in range(repeat))
    state = fill()
    create = rate(n, create_s)
    figures.append(Figure("state.create", create, "ops/s", codec,
                          note=f"{n:,} creates, best of {repeat}; baseline: pack+unpack/s"))

    ids = [r.metadata.id for r in resources]
    shuffled = random.Random(1).sample(ids, len(ids))
    get = rate(n, best_of(repeat, lambda: each(shuffled, lambda rid: state.get(NS, TYPE, rid))))
    figures.append(Figure("state.get", get, "ops/s", bare_unpack,
                          note=f"{n:,} gets in random order, best of {repeat}; baseline: unpack/s"))

    update_s = []
    for _ in range(repeat):
        current = [state.get(NS, TYPE, rid) for rid in shuffled]
        for res in current:
            res.spec["counter"] += 1
        gc.freeze()  # like the inputs: the benchmark's objects, not the engine's
        update_s.append(timed(lambda: each(current, lambda r: state.update(r, owner=OWNER))))
        del current
    update = rate(n, min(update_s))
    figures.append(Figure("state.update", update, "ops/s", codec,
                          note=f"{n:,} updates at the read version, best of {repeat}; "
                               "baseline: pack+unpack/s"))

    modify = rate(n, best_of(repeat, lambda: each(
        shuffled, lambda rid: state.modify(NS, TYPE, rid, _bump, owner=OWNER))))
    figures.append(Figure("state.modify", modify, "ops/s", codec,
                          note=f"{n:,} read-modify-writes, best of {repeat}; baseline: pack+unpack/s"))

    _, snapshot = state.snapshot(NS, TYPE)
    decode_all = best_of(repeat, lambda: [unpack(b) for b in snapshot])
    listed: list[int] = []
    list_s = best_of(repeat, lambda: listed.append(len(state.list(NS, TYPE))))
    if set(listed) != {n}:
        raise AssertionError(f"list returned {listed} items, expected {n}")
    figures.append(Figure("state.list", list_s, "s", decode_all,
                          note=f"list of {of_n}, best of {repeat}; baseline: unpacking them"))

    def bootstrap() -> None:
        count = 0
        with state.watch_kind(NS, TYPE, bootstrap=True) as watch:
            for event in watch:
                if event.kind == BOOTSTRAPPED:
                    break
                count += 1
        if count != n:
            raise AssertionError(f"bootstrap delivered {count} items, expected {n}")

    figures.append(Figure("state.bootstrap", best_of(repeat, bootstrap), "s", list_s,
                          note=f"watch_kind bootstrap of {of_n}, best of {repeat}; baseline: state.list"))
    # The baseline for memory: the packed size of one stored resource.
    packed = sum(len(b) for b in snapshot) / n
    del state, snapshot, shuffled
    gc.collect()

    figures.append(_memory_per_resource(resources, packed))
    figures.append(_rss_per_resource(n, packed))

    figures.extend(_watch_delivery(events, modify))
    figures.append(_persistent_create(persistent_n, create))
    return figures


def _timed_fill(fill) -> float:
    """Seconds to fill a fresh state; the state is freed before returning."""
    start = time.perf_counter()
    state = fill()
    seconds = time.perf_counter() - start
    del state
    gc.collect()
    return seconds


def _memory_per_resource(resources: list[Resource], packed: float) -> Figure:
    """Bytes that a state holding ``resources`` has allocated, per resource."""
    n = len(resources)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        state = InMemoryState()
        for res in resources:
            state.create(res, owner=OWNER)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del state
    return Figure("state.memory_per_resource", held / n, "bytes", packed,
                  note=f"tracemalloc, {n:,} resources incl. bounded history; baseline: packed size")


_RSS_CHILD = r"""
import gc, json, psutil, sys
from benchmarks.state_engine import OWNER, make_resources
from cosihost.state import InMemoryState
n = int(sys.argv[1])
proc = psutil.Process()
state = InMemoryState()
for res in make_resources(1):  # warm up code paths and caches, in another kind
    res.metadata.type = "Warmups.bench.cosihost.dev"
    state.create(res, owner=OWNER)
gc.collect()
before = proc.memory_info().rss
for start in range(0, n, 1000):  # build in batches: measure the state, not the input
    for res in make_resources(min(1000, n - start), start):
        state.create(res, owner=OWNER)
gc.collect()
print(json.dumps((proc.memory_info().rss - before) / n))
"""


def _rss_per_resource(n: int, packed: float) -> Figure:
    """RSS growth per resource of a fresh process that creates ``n`` resources."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(n)], cwd=root, check=True,
                         capture_output=True, text=True, timeout=300)
    return Figure("state.rss_per_resource", json.loads(out.stdout), "bytes", packed,
                  note=f"RSS growth of a fresh process holding {n:,}; baseline: packed size")


def _watch_delivery(events: int, modify_rate: float) -> list[Figure]:
    """One writer modifies at full speed; 16 threads each watch the kind."""
    state = InMemoryState()
    ids = [f"link-{i:03d}" for i in range(100)]
    for i, rid in enumerate(ids):
        state.create(Resource(NS, TYPE, rid, make_spec(i)), owner=OWNER)
    first_seq, _ = state.snapshot(NS, TYPE)
    watches = [state.watch_kind(NS, TYPE) for _ in range(WATCHERS)]
    received = [0] * WATCHERS
    lost = [0] * WATCHERS
    finished = [0.0] * WATCHERS
    start = threading.Barrier(WATCHERS + 1)

    def watcher(k: int) -> None:
        expect = first_seq + 1
        start.wait()
        while received[k] < events:
            event = watches[k].next(timeout=30)
            if event is None or event.kind == ERROR:
                break  # timeout, or overrun: what is missing counts as lost
            seq = int(event.bookmark.rpartition(":")[2])
            if seq != expect:
                lost[k] += abs(seq - expect)
            expect = seq + 1
            received[k] += 1
        finished[k] = time.perf_counter()
        lost[k] += events - received[k]

    threads = [threading.Thread(target=watcher, args=(k,), daemon=True) for k in range(WATCHERS)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for i in range(events):
        state.modify(NS, TYPE, ids[i % len(ids)], _bump, owner=OWNER)
    written = time.perf_counter() - t0
    for t in threads:
        t.join(timeout=60)
    for w in watches:
        w.close()
    if any(t.is_alive() for t in threads):
        raise RuntimeError("a watcher thread did not finish")
    slowest = max(finished) - t0
    total_lost = sum(lost)
    return [
        Figure("state.watch16.delivery", rate(events, slowest), "events/s", modify_rate,
               note=f"{events:,} events to each of {WATCHERS} watchers, slowest watcher; "
                    "baseline: modify/s, no watchers"),
        Figure("state.watch16.write_rate", rate(events, written), "ops/s", modify_rate,
               note=f"modify/s with {WATCHERS} watchers; baseline: modify/s, no watchers"),
        Figure("state.watch16.lost", total_lost, "events", None, None, 0, goal="value<=",
               note=f"missed or out of order, summed over {WATCHERS} watchers",
               ok=total_lost == 0),
    ]


def _persistent_create(n: int, memory_rate: float) -> Figure:
    with tempfile.TemporaryDirectory(prefix="cosihost-bench-") as tmp:
        store = SqliteStore.in_dir(tmp, namespaces=[NS])
        try:
            state = InMemoryState(store=store)
            resources = make_resources(n)
            seconds = timed(lambda: each(resources, lambda r: state.create(r, owner=OWNER)))
        finally:
            store.close()
    return Figure("state.create_persistent", rate(n, seconds), "ops/s", memory_rate,
                  note=f"{n:,} creates, SQLite WAL synchronous=FULL in {tempfile.gettempdir()}; "
                       "baseline: in-memory create/s")
