"""QControllers in the harness: per-item backoff, mapped inputs, requeues,
concurrency without overlapping an item, the queue filled at start, and
the shutdown hook."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from cosihost import Input, NotFoundError, Output, QController, Requeue, Resource
from cosihost.qcontroller import MappedMetadata, Pointer
from cosihost.testing import ControllerHarness

INTS = "Ints.test.cosihost.dev"
STRS = "Strs.test.cosihost.dev"
GROUPS = "Groups.test.cosihost.dev"


class Copier(QController):
    """Copies each Int's value to a Str; ``fail`` counts failures to come
    per id; attempt times are recorded per id."""

    name = "test.Copier"
    primary = [Input("in", INTS)]
    outputs = [Output(STRS)]

    def __init__(self) -> None:
        self.fail: dict[str, int] = {}
        self.attempts: dict[str, list[float]] = {}
        self.stopped = False

    def reconcile(self, rt: Any, ptr: Pointer) -> None:  # type: ignore[override]
        self.attempts.setdefault(ptr.id, []).append(time.monotonic())
        try:
            res = rt.get(*ptr)
        except NotFoundError:
            return
        if self.fail.get(ptr.id, 0) > 0:
            self.fail[ptr.id] -= 1
            raise RuntimeError(f"{ptr.id} fails on purpose")
        rt.modify("out", STRS, ptr.id, lambda s: s.update(value=str(res.spec["value"])))

    def shutdown(self, rt: Any) -> None:
        self.stopped = True


def ints(h: ControllerHarness, n: int, prefix: str = "i", **spec: Any) -> None:
    for i in range(n):
        h.state.create(Resource("in", INTS, f"{prefix}{i}", {"value": i, **spec}))


def test_a_failing_item_is_retried_with_backoff_while_the_others_converge() -> None:
    c = Copier()
    c.fail["bad"] = 4
    with ControllerHarness(c, backoff_base=0.02, backoff_cap=1.0) as h:
        h.state.create(Resource("in", INTS, "bad", {"value": -1}))
        ints(h, 20)
        for i in range(20):   # converge while "bad" keeps failing
            h.wait_for_spec("out", STRS, f"i{i}", {"value": str(i)})
        h.wait_for_spec("out", STRS, "bad", {"value": "-1"})
        h.wait_idle()
        assert h.failures == 4 and len(h.errors) == 4
        gaps = [b - a for a, b in zip(c.attempts["bad"], c.attempts["bad"][1:])]
        assert len(gaps) == 4
        for n, gap in enumerate(gaps):      # 0.02, 0.04, 0.08, 0.16: each at least its backoff
            assert gap >= 0.02 * 2 ** n * 0.9, gaps
        assert all(len(c.attempts[f"i{i}"]) == 1 for i in range(20))  # nobody else was retried
        assert h.rt.counters.processed == 25
    assert c.stopped   # the shutdown hook ran at stop()


def test_the_queue_is_filled_with_every_primary_at_start() -> None:
    c = Copier()
    h = ControllerHarness(c)
    ints(h, 50)
    with h:
        for i in range(50):
            h.wait_for_spec("out", STRS, f"i{i}", {"value": str(i)})
        h.wait_idle()
    assert sorted(c.attempts) == sorted(f"i{i}" for i in range(50))


class Grouped(QController):
    """Each Int belongs to a group (spec.group); a Group's change requeues
    the Ints of that group, which copy the group's factor times their value."""

    name = "test.Grouped"
    primary = [Input("in", INTS)]
    mapped = [Input("groups", GROUPS)]
    outputs = [Output(STRS)]

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.mapped_mds: list[MappedMetadata] = []

    def reconcile(self, rt: Any, ptr: Pointer) -> None:  # type: ignore[override]
        self.seen[ptr.id] += 1
        res = rt.get(*ptr)
        try:
            factor = rt.get("groups", GROUPS, res.spec["group"]).spec["factor"]
        except NotFoundError:
            factor = 0
        rt.modify("out", STRS, ptr.id, lambda s: s.update(value=str(res.spec["value"] * factor)))

    def map_input(self, rt: Any, md: MappedMetadata) -> list[Pointer]:
        self.mapped_mds.append(md)
        return [Pointer("in", INTS, r.metadata.id) for r in rt.list("in", INTS)
                if r.spec["group"] == md.id]


def test_a_mapped_change_requeues_exactly_the_mapped_items() -> None:
    c = Grouped()
    with ControllerHarness(c) as h:
        h.state.create(Resource("groups", GROUPS, "a", {"factor": 1}, labels={"tier": "one"}))
        h.state.create(Resource("groups", GROUPS, "b", {"factor": 1}))
        ints(h, 5, prefix="a", group="a")
        ints(h, 5, prefix="b", group="b")
        h.wait_for_spec("out", STRS, "a4", {"value": "4"})
        h.wait_for_spec("out", STRS, "b4", {"value": "4"})
        h.wait_idle()
        before = dict(c.seen)
        h.state.update(_with(h.state.get("groups", GROUPS, "a"), factor=10))
        h.wait_for_spec("out", STRS, "a4", {"value": "40"})
        h.wait_idle()
        again = {k: c.seen[k] - before.get(k, 0) for k in c.seen}
        assert again == {**{f"a{i}": 1 for i in range(5)}, **{f"b{i}": 0 for i in range(5)}}
        assert h.get("out", STRS, "b4").spec == {"value": "4"}
        md = c.mapped_mds[-1]
        assert (md.namespace, md.type, md.id, md.phase, md.labels, md.finalizers_empty) == \
            ("groups", GROUPS, "a", "running", {"tier": "one"}, True)
        counters = h.rt.counters
        assert counters.mapped_in >= 3 and counters.mapped_out >= 15


def _with(res: Resource, **spec: Any) -> Resource:
    res.spec.update(spec)
    return res


class Requeuer(QController):
    name = "test.Requeuer"
    primary = [Input("in", INTS)]
    outputs = [Output(STRS)]

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def reconcile(self, rt: Any, ptr: Pointer) -> None:  # type: ignore[override]
        self.calls[ptr.id] += 1
        if self.calls[ptr.id] == 1 and ptr.id == "later":
            raise Requeue(0.05)
        if self.calls[ptr.id] == 1 and ptr.id == "err":
            raise Requeue(0.05, ValueError("not yet"))
        rt.modify("out", STRS, ptr.id, lambda s: s.update(value="done"))


def test_requeue_with_and_without_an_error() -> None:
    c = Requeuer()
    with ControllerHarness(c) as h:
        for rid in ("later", "err", "now"):
            h.state.create(Resource("in", INTS, rid, {"value": 0}))
        for rid in ("later", "err", "now"):
            h.wait_for_spec("out", STRS, rid, {"value": "done"})
        h.wait_idle()
        counters = h.rt.counters
        assert (counters.requeues, counters.crashes) == (2, 1)   # only the one with an error crashed
        assert [str(e) for e in h.errors] == ["not yet"]
        assert c.calls == {"later": 2, "err": 2, "now": 1}
        assert counters.queue_length == 0


class Slow(QController):
    """Sleeps in each reconcile (as if waiting on a device); records how
    many reconciles overlap, and whether one item ever overlapped itself."""

    name = "test.Slow"
    primary = [Input("in", INTS)]
    outputs = [Output(STRS)]
    concurrency = 4

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.overlaps: list[str] = []
        self.most = 0

    def reconcile(self, rt: Any, ptr: Pointer) -> None:  # type: ignore[override]
        with self.lock:
            if ptr.id in self.running:
                self.overlaps.append(ptr.id)
            self.running.add(ptr.id)
            self.most = max(self.most, len(self.running))
        try:
            value = rt.get(*ptr).spec["value"]   # an rt call from a worker thread
            time.sleep(0.01)
            rt.modify("out", STRS, ptr.id, lambda s: s.update(value=str(value)))
        finally:
            with self.lock:
                self.running.discard(ptr.id)


def test_concurrent_reconciles_never_run_the_same_item_twice_at_once() -> None:
    c = Slow()
    with ControllerHarness(c) as h:
        ints(h, 8)
        for round in range(1, 6):   # keep changing every item while it is being reconciled
            for i in range(8):
                h.state.update(_with(h.state.get("in", INTS, f"i{i}"), value=i * 100 + round))
        for i in range(8):
            h.wait_for_spec("out", STRS, f"i{i}", {"value": str(i * 100 + 5)})
        h.wait_idle()
    assert c.overlaps == []
    assert c.most > 1   # it did run several at once


def test_graph_probes_and_draws_queue_and_generic_controllers(tmp_path: Any) -> None:
    """Modules declaring a QController and a generic one, probed in a child
    process as the supervisor does, drawn by ``cosihost graph``."""
    import subprocess
    import sys

    from cosihost.testing.conformance import Q_INT_TO_STR
    (tmp_path / "q.py").write_text(Q_INT_TO_STR.format(src="ints", dst="strs"))
    (tmp_path / "t.py").write_text(
        "from cosihost import generic\n"
        "Copy = generic.transform(name='test.Copy', input=('ints', 'Ints.test.cosihost.dev'),\n"
        "                         output=('copies', 'Sentences.test.cosihost.dev'),\n"
        "                         transform=lambda rt, i, o: o.spec.update(i.spec), input_finalizers=True)\n")
    done = subprocess.run([sys.executable, "-m", "cosihost", "graph", "--controllers", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    dot = done.stdout
    assert 'label="QIntToStrController [queue x4]"' in dot
    assert 'label="primary strong (ints)"' in dot and 'label="mapped destroy-ready (strs)"' in dot
    assert 'label="test.Copy"' in dot and 'label="strong (ints)"' in dot
    assert 'label="destroy-ready (copies)"' in dot


class Paired(QController):
    """Threaded reconciles writing two outputs in one transaction; an item
    marked ``half`` fails between them, so neither may appear."""

    name = "test.Paired"
    primary = [Input("in", INTS)]
    outputs = [Output(STRS)]
    concurrency = 3

    def reconcile(self, rt: Any, ptr: Pointer) -> None:  # type: ignore[override]
        spec = rt.get(*ptr).spec
        with rt.transaction():
            rt.modify("out", STRS, f"{ptr.id}-a", lambda s: s.update(value=spec["value"]))
            if spec.get("half"):
                raise Requeue(60, error=RuntimeError("fails between the halves"))
            rt.modify("out", STRS, f"{ptr.id}-b", lambda s: s.update(value=spec["value"]))


def test_a_threaded_reconcile_writes_in_a_transaction() -> None:
    with ControllerHarness(Paired()) as h:
        ints(h, 4)
        ints(h, 2, prefix="h", half=True)
        for i in range(4):
            h.wait_for_spec("out", STRS, f"i{i}-b", {"value": i})
        h.wait_for(lambda: len(h.errors) >= 2, message="both half items to fail once")
        ids = {r.metadata.id for r in h.state.list("out", STRS)}
    assert ids == {f"i{i}-{half}" for i in range(4) for half in "ab"}
