"""Pipelined writes: a controller's writes go without waiting one by one,
and are acknowledged before its reconcile returns.

A writer controller, on each new goal, makes many ``rt.modify`` calls over
a few items in one reconcile. Every write counts itself into the item's
spec (``n``) and names the process and step that made it, so the
supervisor's history and the stored versions show whether each write landed
once, in order. "Acknowledged" is what the controller's reconcile saw
returned: after ``rt.flush()`` it appends the round to a file.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from cosihost import Client, Resource
from cosihost.resource import unpack
from cosihost.state import SqliteStore
from cosihost.testing import SupervisorProcess, process_gone, wait_for

GOAL = "Goals.test.cosihost.dev"
ITEM = "Items.test.cosihost.dev"
REPORT = "Reports.test.cosihost.dev"
NAME = "test.Batcher"

FAST = """
[timing]
heartbeat = 0.1
backoff_base = 0.02
backoff_cap = 0.1
request_timeout = {timeout}

[namespaces.durable]
persistent = true

[namespaces.goals]
persistent = true
"""

BATCHER = f'''
import os
from cosihost import Controller, Input, Output, NotFoundError

class Batcher(Controller):
    name = "{NAME}"
    inputs = [Input("goals", "{GOAL}", id="go")]
    outputs = [Output("{ITEM}"), Output("{REPORT}")]

    def reconcile(self, rt):
        try:
            goal = rt.get("goals", "{GOAL}", "go").spec
        except NotFoundError:
            return
        ns, rnd, n, k = goal["ns"], goal["round"], goal["n"], goal["k"]
        try:
            if rt.get(ns, "{REPORT}", "report").spec["round"] == rnd:
                return  # done already (in an earlier life)
        except NotFoundError:
            pass
        pid, returned = os.getpid(), {{}}
        for step in range(n):
            def fn(s, step=step):
                s.update(round=rnd, pid=pid, step=step, n=s.get("n", 0) + 1)
            returned[f"i{{step % k}}"] = rt.modify(ns, "{ITEM}", f"i{{step % k}}", fn)
        # Read-your-writes: the cache shows every write of this reconcile at once.
        seen = {{r.metadata.id: [r.metadata.version, r.spec["step"]] for r in rt.list(ns, "{ITEM}")}}
        predicted = {{i: [r.metadata.version, r.spec["step"]] for i, r in returned.items()}}
        rt.modify(ns, "{REPORT}", "report", lambda s: s.update(round=rnd, seen=seen, predicted=predicted))
        rt.flush()
        with open(goal["acked"], "a") as fh:
            fh.write(f"{{rnd}}\\n")
'''

RACER = f'''
from cosihost import Client, Controller, Input, Output, Resource, NotFoundError

class Racer(Controller):
    """Creates "x" and nine others; on its first try, a user creates "x"
    first, so its cache cannot know: the create is refused late."""
    name = "test.Racer"
    inputs = [Input("goals", "{GOAL}", id="go")]
    outputs = [Output("{ITEM}", kind="shared"), Output("{REPORT}")]
    attempts = 0

    def reconcile(self, rt):
        try:
            goal = rt.get("goals", "{GOAL}", "go").spec
        except NotFoundError:
            return
        self.attempts += 1
        rt.list("race", "{ITEM}")  # synced now: what happens next reaches the cache after this round
        if self.attempts == 1:
            with Client(goal["runtime_dir"]) as user:
                user.create(Resource("race", "{ITEM}", "x", {{"by": "user"}}))
        for i in range(9):
            rt.modify("race", "{ITEM}", f"a{{i}}", lambda s, i=i: s.update(i=i))
        ids = {{r.metadata.id for r in rt.list("race", "{ITEM}")}}
        if "x" in ids and rt.get("race", "{ITEM}", "x").metadata.owner != self.name:
            rt.modify("race", "{REPORT}", "report", lambda s: s.update(attempts=self.attempts))
            return
        rt.create(Resource("race", "{ITEM}", "x", {{"by": "controller"}}))
'''


def _config(timeout: float = 5.0) -> str:
    return FAST.format(timeout=timeout)


def _drop(sup: SupervisorProcess) -> Path:
    """A folder the controller can write in whatever user it runs as (as root
    it runs as one of its own: [isolation] is on by default), like /tmp."""
    drop = sup.base / "drop"
    drop.mkdir(exist_ok=True)
    os.chmod(drop, 0o1777)
    return drop


def _goal(c: Client, sup: SupervisorProcess, **spec: Any) -> None:
    spec.setdefault("acked", str(_drop(sup) / "acked"))
    try:
        cur = c.get("goals", GOAL, "go")
        cur.spec = spec
        c.update(cur)
    except Exception:
        c.create(Resource("goals", GOAL, "go", spec))


def _acked(sup: SupervisorProcess) -> list[int]:
    path = _drop(sup) / "acked"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def _history(c: Client, ns: str) -> dict[str, list[Any]]:
    """Each item's stored versions, oldest first, from the supervisor's history."""
    reply = c.call("since", namespace=ns, type=ITEM, seq=0)
    out: dict[str, list[Any]] = {}
    for _seq, _kind, rid, blob, *_rest in reply["records"]:
        res = unpack(blob)
        out.setdefault(rid, []).append((res.metadata.version, res.spec))
    return out


def _check_each_write_once(history: dict[str, list[Any]]) -> None:
    """Versions 1, 2, 3 ... each once, every write counted once (n == version),
    and each process's steps in the order it made them."""
    for rid, versions in history.items():
        assert [v for v, _ in versions] == list(range(1, len(versions) + 1)), rid
        assert all(spec["n"] == v for v, spec in versions), rid
        made = [(spec["pid"], spec["round"], spec["step"]) for _, spec in versions]
        assert len(set(made)) == len(made), f"{rid}: a write applied twice"
        for pid in {p for p, _, _ in made}:
            steps = [(r, s) for p, r, s in made if p == pid]
            assert steps == sorted(steps), f"{rid}: writes of {pid} out of order"


def _counters(sup: SupervisorProcess) -> dict[str, int]:
    counters: dict[str, int] = sup.statuses()[NAME]["counters"]
    return counters


def test_many_writes_in_flight_land_once_in_order_and_are_read_back(supervisor_factory) -> None:
    sup = supervisor_factory(config=_config(), controllers={"batcher": BATCHER})
    n, k = 600, 6  # far more than the 64 a pipeline keeps in flight
    with sup.client() as c:
        _goal(c, sup, ns="items", round=1, n=n, k=k)
        wait_for(lambda: _acked(sup) == [1], timeout=30, message="round 1 acknowledged")
        history = _history(c, "items")
        stored = {r.metadata.id: r for r in c.list("items", ITEM)}
        report = c.get("items", REPORT, "report").spec
    assert sorted(stored) == [f"i{j}" for j in range(k)]
    _check_each_write_once(history)
    for rid, res in stored.items():
        steps = [spec["step"] for _, spec in history[rid]]
        assert steps == list(range(int(rid[1:]), n, k))      # all landed, in the order made
        assert res.metadata.version == n // k
        # What the reconcile read back and what rt.modify returned, before
        # any reply was needed, is what the supervisor stored.
        assert report["seen"][rid] == [res.metadata.version, res.spec["step"]]
        assert report["predicted"][rid] == [res.metadata.version, res.spec["step"]]
    assert _counters(sup).get("crashes", 0) == 0


def test_a_write_refused_late_fails_the_reconcile_which_retries_and_converges(supervisor_factory) -> None:
    sup = supervisor_factory(config=_config(), controllers={"racer": RACER})
    with sup.client() as c:
        c.create(Resource("goals", GOAL, "go", {"runtime_dir": str(sup.runtime_dir)}))
        report = wait_for(lambda: c.get("race", REPORT, "report").spec, timeout=20,
                          message="the racer's report")
        x = c.get("race", ITEM, "x")
        others = {r.metadata.id: r for r in c.list("race", ITEM) if r.metadata.id != "x"}
    assert report["attempts"] == 2                   # failed once (late conflict), then converged
    assert x.spec == {"by": "user"} and x.metadata.owner == "" and x.metadata.version == 1
    assert sorted(others) == [f"a{i}" for i in range(9)]
    assert all(r.metadata.version == 1 for r in others.values())  # the retry found them written
    status = sup.wait_status("test.Racer", lambda s: s["counters"].get("crashes", 0) >= 1)
    assert status["counters"]["crashes"] == 1 and status["state"] == "running"


def _midway(c: Client, sup: SupervisorProcess, ns: str, n: int, k: int) -> int:
    """Round 1 written and acknowledged, then round 2 started: the writer's
    pid once it is mid-batch (the first write of round 2 landed)."""
    _goal(c, sup, ns=ns, round=1, n=n, k=k)
    wait_for(lambda: _acked(sup) == [1], timeout=30, message="round 1 acknowledged")
    pid = sup.controller_pid(NAME)
    _goal(c, sup, ns=ns, round=2, n=n, k=k)
    wait_for(lambda: c.get(ns, ITEM, "i0").spec["round"] == 2, timeout=20,
             interval=0.001, message="round 2 started")
    return pid


def test_sigkill_of_the_writer_mid_batch_loses_no_acknowledged_write(supervisor_factory) -> None:
    sup = supervisor_factory(config=_config(), controllers={"batcher": BATCHER})
    n, k = 3000, 5
    with sup.client() as c:
        pid = _midway(c, sup, "items", n, k)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: process_gone(pid), message="the writer gone")
        assert _acked(sup) == [1]  # killed before its reconcile returned
        # Every acknowledged write is there: round 1 finished on every item.
        assert all(r.spec["round"] >= 1 and r.spec["n"] >= n // k for r in c.list("items", ITEM))
        wait_for(lambda: _acked(sup) == [1, 2], timeout=30, message="round 2 acknowledged by the next life")
        history = _history(c, "items")
        final = {r.metadata.id: r for r in c.list("items", ITEM)}
    _check_each_write_once(history)
    assert len({spec["pid"] for v in history.values() for _, spec in v}) == 2  # two lives wrote
    for rid, res in final.items():
        assert res.spec["round"] == 2 and res.spec["step"] == max(range(int(rid[1:]), n, k))


def _socket_inodes(pid: int) -> set[str]:
    fds = Path(f"/proc/{pid}/fd")
    out = set()
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


def test_a_paused_supervisor_gets_every_write_in_flight_again_and_applies_each_once(supervisor_factory) -> None:
    """SIGSTOP the supervisor mid-batch: the writer hears nothing, reopens
    its socket and resends every unanswered write with its id. After
    SIGCONT the supervisor sees both copies of each; each applies once, and
    the resends get the first answers (no conflict fails the reconcile)."""
    sup = supervisor_factory(config=_config(timeout=0.3), controllers={"batcher": BATCHER})
    n, k = 3000, 5
    with sup.client(timeout=10) as c:
        pid = sup.controller_pid(NAME)
        _goal(c, sup, ns="items", round=1, n=n, k=k)
        wait_for(lambda: c.get("items", ITEM, "i0").spec["n"] >= 2, timeout=20, interval=0.001,
                 message="the batch started")
        before = _socket_inodes(pid)
        os.kill(sup.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: _socket_inodes(pid) - before, timeout=10, interval=0.01,
                     message="the writer's new request socket (Lazy Pirate)")
        finally:
            os.kill(sup.pid, signal.SIGCONT)
        wait_for(lambda: _acked(sup) == [1], timeout=30, message="round 1 acknowledged")
        history = _history(c, "items")
        replayed = c.call("ping")["replayed"]
    _check_each_write_once(history)
    assert {rid: len(v) for rid, v in history.items()} == {f"i{j}": n // k for j in range(k)}
    counters = sup.wait_status(NAME, lambda s: s["counters"].get("resent", 0) > 0)["counters"]
    assert counters.get("crashes", 0) == 0
    assert replayed > 0


def test_supervisor_sigkill_with_writes_in_flight_keeps_what_was_acknowledged(supervisor_factory) -> None:
    """The supervisor dies mid-batch (its controllers die with it); what a
    reconcile saw acknowledged is on disk, and the next supervisor's writer
    finishes the round without any write counted twice."""
    sup = supervisor_factory(config=_config(), controllers={"batcher": BATCHER})
    n, k = 3000, 5
    with sup.client() as c:
        pid = _midway(c, sup, "durable", n, k)
    assert sup.proc is not None
    os.kill(sup.pid, signal.SIGKILL)
    sup.proc.wait()
    wait_for(lambda: process_gone(pid), message="the writer gone with its supervisor")
    assert _acked(sup) == [1]
    store = SqliteStore.in_dir(sup.state_dir, namespaces=["durable"])
    try:
        kept = [unpack(blob) for blob in store.load()]
    finally:
        store.close()
    items = [r for r in kept if r.metadata.type == ITEM]
    assert len(items) == k
    for res in items:  # round 1 acknowledged: all of it on disk; versions count writes once
        assert res.spec["round"] >= 1 and res.spec["n"] >= n // k
        assert res.metadata.version == res.spec["n"]
    sup.start()
    with sup.client() as c:
        wait_for(lambda: _acked(sup) == [1, 2], timeout=30, message="round 2 acknowledged after the restart")
        final = c.list("durable", ITEM)
    for res in final:
        assert res.spec["round"] == 2 and res.metadata.version == res.spec["n"]
        assert res.spec["step"] == max(range(int(res.metadata.id[1:]), n, k))


@pytest.fixture(autouse=True)
def _linux_proc() -> None:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs Linux /proc (fd links) to see a controller's sockets")


JOB = "Jobs.test.cosihost.dev"
QRACER = f'''
from cosihost import Client, NotFoundError, Output, Resource
from cosihost.qcontroller import QController
from cosihost import Input

class QRacer(QController):
    """Each job writes ten items; job "race" is beaten to its item "x" by a
    user on its first try, so only that job fails and is retried."""
    name = "test.QRacer"
    primary = [Input("jobs", "{JOB}")]
    outputs = [Output("{ITEM}", kind="shared"), Output("{REPORT}")]
    concurrency = {{concurrency}}
    attempts = {{{{}}}}

    def reconcile(self, rt, ptr):
        try:
            job = rt.get(ptr.namespace, ptr.type, ptr.id)
        except NotFoundError:
            return
        me = job.metadata.id
        tries = self.attempts[me] = self.attempts.get(me, 0) + 1
        rt.list("qrace", "{ITEM}")  # synced: the user's write reaches the cache after this round
        if me == "race" and tries == 1:
            with Client(job.spec["runtime_dir"]) as user:
                user.create(Resource("qrace", "{ITEM}", "x", {{{{"by": "user"}}}}))
            # Refused: at the call when the cache saw the user's write (in a thread
            # the loop may apply it meanwhile), else when the reply comes.
            rt.create(Resource("qrace", "{ITEM}", "x", {{{{"by": "controller"}}}}))
        for i in range(10):
            rt.modify("qrace", "{ITEM}", f"{{{{me}}}}-{{{{i}}}}", lambda s, i=i: s.update(i=i))
        rt.modify("qrace", "{REPORT}", me, lambda s: s.update(tries=tries))
'''


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_late_refusal_fails_only_the_queue_item_that_made_it(supervisor_factory, concurrency: int) -> None:
    """Without threads each item's writes are acknowledged when its reconcile
    returns; in threads each write waits for its reply. Either way the refusal
    lands in the item that caused it."""
    sup = supervisor_factory(config=_config(), controllers={"qracer": QRACER.format(concurrency=concurrency)})
    jobs = ["a", "b", "race", "c"]
    with sup.client() as c:
        for job in jobs:
            c.create(Resource("jobs", JOB, job, {"runtime_dir": str(sup.runtime_dir)}))
        # (Without threads, the report of race's failed try was written too:
        # writes after a refused one still go. Its retry writes tries=2.)
        wait_for(lambda: {x.metadata.id: x.spec["tries"] for x in c.list("qrace", REPORT)}
                 == {"a": 1, "b": 1, "race": 2, "c": 1}, timeout=20, message="every job's report")
        x = c.get("qrace", ITEM, "x")
        items = {r.metadata.id for r in c.list("qrace", ITEM)}
    assert x.spec == {"by": "user"} and x.metadata.version == 1
    assert items == {"x"} | {f"{job}-{i}" for job in jobs for i in range(10)}
    status = sup.wait_status("test.QRacer", lambda s: s["counters"].get("crashes", 0) >= 1)
    assert status["counters"]["crashes"] == 1
