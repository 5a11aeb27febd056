"""Persistent namespaces: what survives a restart, and what survives a crash.

A state is ``InMemoryState(store=SqliteStore.in_dir(dir, namespaces=[...]))``.
The crash test runs a real writer process, kills it with SIGKILL at a random
point and checks that every write it acknowledged is in the database.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cosihost.errors import ConflictError, NotFoundError, UnavailableError
from cosihost.resource import PHASE_TEARING_DOWN, Resource
from cosihost.state import InMemoryState, SqliteStore
from cosihost.state import persist

PNS = "persistent-ns"
PNS2 = "persistent-too"
VOLATILE = "volatile-ns"
T = "Widgets.test.cosihost.dev"
T2 = "Gadgets.test.cosihost.dev"


def open_state(state_dir: Path, namespaces=(PNS, PNS2)) -> InMemoryState:
    return InMemoryState(store=SqliteStore.in_dir(state_dir, namespaces=namespaces))


def close_state(state: InMemoryState) -> None:
    state._store.close()


def db_path(state_dir: Path) -> Path:
    return state_dir / "state.sqlite3"


def everything(state: InMemoryState, kinds) -> dict:
    return {(ns, typ): state.list(ns, typ) for ns, typ in kinds}


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


# -- restart ----------------------------------------------------------------

def populate(state: InMemoryState) -> None:
    """Resources in every shape the metadata can take."""
    for ns in (PNS, PNS2, VOLATILE):
        plain = state.create(Resource(ns, T, "plain", {"n": 1, "blob": b"\x00\xff", "list": [1.5, None]}))
        assert plain.metadata.version == 1
        state.create(Resource(ns, T, "owned", {"a": "b"}, labels={"app": "web", "gen": "3"},
                              annotations={"note": "über", "empty": ""}), owner="ctl.Owner")
        # several versions
        for i in range(5):
            state.modify(ns, T, "counted", lambda spec, i=i: spec.update(count=i), owner="ctl.Owner")
        # finalizers, ordered
        state.create(Resource(ns, T2, "finalized", ["spec", "is", "a", "list"]))
        state.add_finalizer(ns, T2, "finalized", "z.last", "a.first", "m.middle")
        state.remove_finalizer(ns, T2, "finalized", "a.first")
        # tearing down, with a finalizer still pending
        state.create(Resource(ns, T2, "dying", None), owner="ctl.Other")
        state.add_finalizer(ns, T2, "dying", "keep")
        assert state.teardown(ns, T2, "dying", owner="ctl.Other") is False
        # tearing down, no finalizers
        state.create(Resource(ns, T2, "dead", "a string spec"))
        assert state.teardown(ns, T2, "dead") is True
        # updated through update() with labels changed
        cur = state.get(ns, T, "plain")
        cur.metadata.labels = {"tier": "db"}
        cur.spec = {"n": 2}
        state.update(cur)
        # destroyed: must stay gone
        state.create(Resource(ns, T, "gone", {}))
        state.destroy(ns, T, "gone")


KINDS = [(ns, typ) for ns in (PNS, PNS2, VOLATILE) for typ in (T, T2)]


def test_reopen_restores_every_field_of_persistent_namespaces(state_dir: Path) -> None:
    state = open_state(state_dir)
    populate(state)
    before = everything(state, KINDS)
    close_state(state)

    reopened = open_state(state_dir)
    try:
        after = everything(reopened, KINDS)
        for ns in (PNS, PNS2):
            for typ in (T, T2):
                assert after[(ns, typ)] == before[(ns, typ)]
                assert after[(ns, typ)], "the fixture should have put something here"
        # spot-check fields explicitly (equality above covers them, this documents them)
        owned = reopened.get(PNS, T, "owned")
        assert owned.metadata.owner == "ctl.Owner"
        assert owned.metadata.labels == {"app": "web", "gen": "3"}
        assert owned.metadata.annotations == {"note": "über", "empty": ""}
        assert owned.metadata.created == before[(PNS, T)][1].metadata.created
        counted = reopened.get(PNS, T, "counted")
        assert counted.metadata.version == 5 and counted.spec == {"count": 4}
        assert counted.metadata.updated >= counted.metadata.created > 0
        plain = reopened.get(PNS, T, "plain")
        assert plain.metadata.version == 2 and plain.metadata.labels == {"tier": "db"}
        fin = reopened.get(PNS, T2, "finalized")
        assert fin.metadata.finalizers == ["z.last", "m.middle"]
        assert fin.spec == ["spec", "is", "a", "list"]
        dying = reopened.get(PNS, T2, "dying")
        assert dying.metadata.phase == PHASE_TEARING_DOWN and dying.metadata.finalizers == ["keep"]
        assert reopened.get(PNS, T2, "dead").metadata.phase == PHASE_TEARING_DOWN
        with pytest.raises(NotFoundError):
            reopened.get(PNS, T, "gone")
        # non-persistent namespaces come back empty
        assert reopened.list(VOLATILE, T) == [] and reopened.list(VOLATILE, T2) == []
        # the restored state keeps working: versions continue, conflicts still hold
        with pytest.raises(ConflictError):
            reopened.destroy(PNS, T2, "dying", owner="ctl.Other")
        nxt = reopened.modify(PNS, T, "counted", lambda s: s.update(count=99), owner="ctl.Owner")
        assert nxt.metadata.version == 6
        stale = reopened.get(PNS, T, "plain")
        stale.metadata.version = 1
        with pytest.raises(ConflictError):
            reopened.update(stale)
    finally:
        close_state(reopened)


def test_destroy_and_teardown_are_durable(state_dir: Path) -> None:
    state = open_state(state_dir)
    for i in range(20):
        state.create(Resource(PNS, T, f"r{i:02}", {"i": i}))
    for i in range(0, 20, 2):
        state.destroy(PNS, T, f"r{i:02}")
    state.teardown(PNS, T, "r01")
    state.add_finalizer(PNS, T, "r03", "f")
    state.teardown(PNS, T, "r03")
    state.remove_finalizer(PNS, T, "r03", "f")
    state.destroy(PNS, T, "r03")
    close_state(state)

    state = open_state(state_dir)
    try:
        ids = [r.metadata.id for r in state.list(PNS, T)]
        assert ids == [f"r{i:02}" for i in range(1, 20, 2) if i != 3]
        assert state.get(PNS, T, "r01").metadata.phase == PHASE_TEARING_DOWN
        # a destroyed id can be created again, from version 1
        assert state.create(Resource(PNS, T, "r00", {})).metadata.version == 1
    finally:
        close_state(state)
    state = open_state(state_dir)
    try:
        assert state.get(PNS, T, "r00").metadata.version == 1
    finally:
        close_state(state)


def test_only_declared_namespaces_are_loaded(state_dir: Path) -> None:
    state = open_state(state_dir, namespaces=[PNS, PNS2])
    state.create(Resource(PNS, T, "a", {}))
    state.create(Resource(PNS2, T, "b", {}))
    close_state(state)

    # PNS2 no longer persistent: its rows must not come back (they would be
    # stale, since its writes no longer reach the store) ...
    state = open_state(state_dir, namespaces=[PNS])
    try:
        assert [r.metadata.id for r in state.list(PNS, T)] == ["a"]
        assert state.list(PNS2, T) == []
        state.create(Resource(PNS2, T, "volatile-now", {}))
    finally:
        close_state(state)
    # ... but they are not thrown away either.
    state = open_state(state_dir, namespaces=[PNS, PNS2])
    try:
        assert [r.metadata.id for r in state.list(PNS2, T)] == ["b"]
    finally:
        close_state(state)


def test_concurrent_writers_all_land(state_dir: Path) -> None:
    state = open_state(state_dir)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(25):
                state.modify(PNS, T, f"w{w}-{i % 5}", lambda s: s.update(n=s.get("n", 0) + 1))
                state.modify(PNS, T, "shared", lambda s: s.update(n=s.get("n", 0) + 1))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    before = state.list(PNS, T)
    close_state(state)
    state = open_state(state_dir)
    try:
        assert state.list(PNS, T) == before
        assert state.get(PNS, T, "shared").spec == {"n": 100}
        assert state.get(PNS, T, "shared").metadata.version == 100
    finally:
        close_state(state)


def test_database_file_is_private_and_in_wal_mode(state_dir: Path) -> None:
    state = open_state(state_dir)
    state.create(Resource(PNS, T, "x", {"secret": "s"}))
    try:
        assert stat.S_IMODE(os.stat(db_path(state_dir)).st_mode) == 0o600
        with sqlite3.connect(db_path(state_dir)) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert state._store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        close_state(state)


# -- store failures -----------------------------------------------------------

def _write_attempts(state: InMemoryState):
    """Every write verb, each aimed at a resource where it would change something."""
    yield "create", lambda: state.create(Resource(PNS, T, "new", {"x": 1}))
    yield "update", lambda: state.update(state.get(PNS, T, "a"))
    yield "modify", lambda: state.modify(PNS, T, "a", lambda s: s.update(n=2))
    yield "modify-create", lambda: state.modify(PNS, T, "missing", lambda s: s.update(n=1))
    yield "destroy", lambda: state.destroy(PNS, T, "b")
    yield "teardown", lambda: state.teardown(PNS, T, "a")
    yield "add_finalizer", lambda: state.add_finalizer(PNS, T, "a", "new-fin")
    yield "remove_finalizer", lambda: state.remove_finalizer(PNS, T, "c", "fin")


def _failing_store_case(state_dir: Path, break_store, fix_store=None) -> None:
    state = open_state(state_dir)
    state.create(Resource(PNS, T, "a", {"n": 1}))
    state.create(Resource(PNS, T, "b", {"n": 1}))
    state.create(Resource(PNS, T, "c", {"n": 1}))
    state.add_finalizer(PNS, T, "c", "fin")
    before = state.list(PNS, T)
    seq_before, _ = state.snapshot(PNS, T)
    watch = state.watch_kind(PNS, T)
    try:
        break_store(state._store)
        for verb, attempt in _write_attempts(state):
            with pytest.raises(UnavailableError) as info:
                attempt()
            assert str(db_path(state_dir)) in str(info.value), verb
            assert state.list(PNS, T) == before, f"{verb} changed memory although the store failed"
            assert state.snapshot(PNS, T)[0] == seq_before, f"{verb} recorded an event"
        assert watch.next(timeout=0.05) is None
        # volatile namespaces do not depend on the store
        state.create(Resource(VOLATILE, T, "fine", {}))
        if fix_store is None:
            return
        fix_store(state._store)
        state.modify(PNS, T, "a", lambda s: s.update(n=2))
        ev = watch.next(timeout=5)
        assert ev is not None and ev.kind == "updated" and ev.resource.metadata.version == 2
        after = state.list(PNS, T)
    finally:
        watch.close()
        close_state(state)
    reopened = open_state(state_dir)
    try:
        assert reopened.list(PNS, T) == after
    finally:
        close_state(reopened)


def test_read_only_store_fails_writes_and_leaves_memory_unchanged(state_dir: Path) -> None:
    # query_only makes SQLite itself refuse the write ("attempt to write a
    # readonly database"), the same path a read-only or full disk takes.
    _failing_store_case(
        state_dir,
        lambda store: store._db.execute("PRAGMA query_only=1"),
        lambda store: store._db.execute("PRAGMA query_only=0"),
    )


def test_closed_store_fails_writes_and_leaves_memory_unchanged(state_dir: Path) -> None:
    _failing_store_case(state_dir, lambda store: store.close())


def test_locked_database_fails_writes_with_a_clear_error(state_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(persist, "BUSY_TIMEOUT_MS", 50)
    holder: list[sqlite3.Connection] = []

    def lock(store) -> None:
        conn = sqlite3.connect(store.path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        holder.append(conn)

    def unlock(store) -> None:
        holder.pop().rollback()

    try:
        _failing_store_case(state_dir, lock, unlock)
    finally:
        for conn in holder:
            conn.close()


def test_corrupt_database_is_refused_with_a_clear_error(state_dir: Path) -> None:
    state_dir.mkdir(parents=True)
    db_path(state_dir).write_bytes(b"this is not a database" * 500)
    with pytest.raises(UnavailableError) as info:
        SqliteStore.in_dir(state_dir, namespaces=[PNS])
    assert str(db_path(state_dir)) in str(info.value)


def test_damaged_pages_are_reported_on_load(state_dir: Path) -> None:
    state = open_state(state_dir)
    for i in range(300):
        state.create(Resource(PNS, T, f"r{i:04}", {"pad": "x" * 300}))
    close_state(state)
    data = bytearray(db_path(state_dir).read_bytes())
    page = int.from_bytes(data[16:18], "big")
    assert len(data) > 6 * page
    for p in range(2, len(data) // page):  # every page but the header page
        data[p * page:(p + 1) * page] = bytes([0xA5]) * page
    db_path(state_dir).write_bytes(bytes(data))
    with pytest.raises(UnavailableError) as info:
        open_state(state_dir)
    assert str(db_path(state_dir)) in str(info.value)


def test_unusable_path_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "dir-not-file").mkdir()
    with pytest.raises(UnavailableError) as info:
        SqliteStore(tmp_path / "dir-not-file", namespaces=[PNS])
    assert str(tmp_path / "dir-not-file") in str(info.value)


# -- crash --------------------------------------------------------------------

# The writer announces every write before it starts ("begin") and after it
# returned ("ack"), so the test knows exactly which writes were acknowledged
# and which single write may have been in flight when the kill landed.
WRITER = r"""
import json, random, sys
from cosihost.errors import NotFoundError
from cosihost.resource import Resource
from cosihost.state import InMemoryState, SqliteStore

state_dir, ns, typ, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rng = random.Random(seed)
state = InMemoryState(store=SqliteStore.in_dir(state_dir, namespaces=[ns]))
out = sys.stdout

def say(**kw):
    out.write(json.dumps(kw) + "\n")
    out.flush()

say(op="ready")
def bump(spec):
    spec["n"] = spec.get("n", 0) + 1
    spec["pad"] = "p" * rng.randint(50, 400)

while True:
    rid = "r%02d" % rng.randrange(40)
    try:
        cur = state.get(ns, typ, rid)
    except NotFoundError:
        cur = None
    roll = rng.random()
    if cur is None and roll < 0.5:
        say(op="begin", verb="create", id=rid)
        res = state.create(Resource(ns, typ, rid, {"n": 1, "pad": "c" * 200},
                                    labels={"seed": str(seed)}), owner="crash.Writer")
    elif cur is not None and roll < 0.15:
        say(op="begin", verb="destroy", id=rid)
        state.destroy(ns, typ, rid, owner="crash.Writer")
        say(op="ack", verb="destroy", id=rid)
        continue
    else:
        say(op="begin", verb="modify", id=rid)
        res = state.modify(ns, typ, rid, bump, owner="crash.Writer")
    say(op="ack", verb="put", id=rid, version=res.metadata.version, n=res.spec["n"])
"""


class LineReader:
    """Reads a child's stdout line by line with a deadline (no sleeping)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.fd = proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.fd, selectors.EVENT_READ)
        self.buf = b""
        self.eof = False

    def _fill(self, timeout: float) -> None:
        if self.sel.select(timeout):
            chunk = os.read(self.fd, 65536)
            if chunk:
                self.buf += chunk
            else:
                self.eof = True

    def readline(self, deadline: float) -> dict | None:
        while b"\n" not in self.buf:
            if self.eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"child produced no line in time (exit code {self.proc.poll()}): "
                    f"{self.proc.stderr.read() if self.proc.poll() is not None else ''}")
            self._fill(remaining)
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def rest(self, deadline: float) -> list[dict]:
        """Every complete line until EOF (the child is dead: EOF comes)."""
        lines = []
        while (line := self.readline(deadline)) is not None:
            lines.append(line)
        return lines

    def close(self) -> None:
        self.sel.close()


@pytest.fixture
def spawn():
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", WRITER, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


def _apply(model: dict, line: dict) -> None:
    if line["verb"] == "destroy":
        model.pop(line["id"], None)
    else:
        model[line["id"]] = (line["version"], line["n"])


@pytest.mark.timeout(90)
def test_acknowledged_writes_survive_sigkill(state_dir: Path, spawn) -> None:
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    rounds, total_acks = 10, 0
    budget = time.monotonic() + 40
    # What the database holds, as the test last verified it: id -> (version, n)
    model: dict[str, tuple[int, int]] = {}
    for rnd in range(rounds):
        proc = spawn(str(state_dir), PNS, T, str(seed + rnd))
        reader = LineReader(proc)
        try:
            assert reader.readline(time.monotonic() + 20) == {"op": "ready"}
            target = rng.randint(5, 400)
            acked = 0
            lines: list[dict] = []
            while acked < target:
                line = reader.readline(time.monotonic() + 10)
                assert line is not None, proc.stderr.read()
                lines.append(line)
                acked += line["op"] == "ack"
            # land the kill anywhere inside the next write or between two writes
            spin_until = time.perf_counter() + rng.random() * 0.005
            while time.perf_counter() < spin_until:
                pass
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
            lines += reader.rest(time.monotonic() + 10)
        finally:
            reader.close()

        # Replay what the child said: acknowledged writes define the model;
        # a trailing "begin" with no "ack" is the one write that may or may
        # not have landed.
        in_flight = None
        for line in lines:
            if line["op"] == "begin":
                in_flight = line
            elif line["op"] == "ack":
                assert in_flight is not None and in_flight["id"] == line["id"]
                _apply(model, line)
                in_flight = None
                total_acks += 1

        with sqlite3.connect(db_path(state_dir)) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        state = open_state(state_dir, namespaces=[PNS])
        try:
            found = {r.metadata.id: r for r in state.list(PNS, T)}
        finally:
            close_state(state)
        for rid in set(model) | set(found):
            want, got = model.get(rid), found.get(rid)
            if in_flight is not None and rid == in_flight["id"]:
                if in_flight["verb"] == "destroy":
                    # either not yet destroyed, or destroyed
                    assert got is None or (got.metadata.version, got.spec["n"]) == want
                elif want is None:
                    # a create (or modify-create): absent, or there at version 1
                    assert got is None or got.metadata.version == 1
                else:
                    assert got is not None, f"round {rnd} seed {seed}: acknowledged {rid} lost"
                    assert got.metadata.version in (want[0], want[0] + 1)
                continue
            assert got is not None or want is None, f"round {rnd} seed {seed}: acknowledged {rid} lost"
            assert want is not None or got is None, (
                f"round {rnd} seed {seed}: {rid} present but its creation was never begun")
            if want is not None:
                assert (got.metadata.version, got.spec["n"]) == want, (
                    f"round {rnd} seed {seed}: {rid} at {got.metadata.version}, acknowledged {want}")
                assert got.metadata.owner == "crash.Writer"
        # the database is the truth for the next round (it also carries the
        # in-flight write if it landed)
        model = {rid: (r.metadata.version, r.spec["n"]) for rid, r in found.items()}
        if time.monotonic() > budget:
            break
    assert total_acks > 0


def test_a_transaction_is_one_durable_commit(state_dir: Path) -> None:
    state = open_state(state_dir)
    state.create(Resource(PNS, T, "old", {}))
    with state.transaction():
        for i in range(10):
            state.create(Resource(PNS, T, f"t{i}", {"i": i}))
        state.create(Resource(VOLATILE, T, "v", {}))
        state.destroy(PNS, T, "old")
    with pytest.raises(ConflictError):
        with state.transaction():
            state.create(Resource(PNS, T, "never", {}))
            state.create(Resource(PNS, T, "t0", {}))          # exists: the whole transaction fails
    close_state(state)

    state = open_state(state_dir)
    try:
        assert [r.metadata.id for r in state.list(PNS, T)] == [f"t{i}" for i in range(10)]
        assert state.list(VOLATILE, T) == []                    # not persistent: gone with the process
    finally:
        close_state(state)
