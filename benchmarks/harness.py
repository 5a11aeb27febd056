"""What the host benchmarks share: their processes, their controllers, their runs.

:class:`Processes` starts every process a benchmark needs (raw ZeroMQ
baseline roles from :mod:`benchmarks.raw`, supervisors with benchmark
controllers) and kills all of them on exit, whatever happened.

The controllers are real controller modules (:data:`CONTROLLER_MODULE`), run
by a real supervisor. A benchmark starts a run by writing a ``BenchRuns``
resource (a fresh ``go`` token, the count, the pace); the controllers take
their timestamps themselves (``time.monotonic_ns()``, comparable across
processes on one machine) and report them in a ``BenchResults`` resource
named ``<controller>.<go>``, which the benchmark reads.

Writers and watchers also report the CPU time they used (``cpu_ns``), so a
figure can say which process a rate is bound by. Set
``COSIHOST_BENCH_PROFILE=DIR`` to have writers and watchers run their
measured part under cProfile and dump ``DIR/<controller>.prof``, and each
supervisor run its whole life under cProfile (``DIR/supervisor-<n>.prof``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from pathlib import Path
from typing import Any, Callable, Iterable

import psutil

from cosihost import Client, NotFoundError
from cosihost.testing import SupervisorProcess, wait_for

ROOT = Path(__file__).resolve().parent.parent
NS = "bench"
RUN = "BenchRuns.bench.cosihost.dev"
RESULT = "BenchResults.bench.cosihost.dev"

#: A controller module. ``CONFIG`` (prepended by :func:`controller_module`)
#: says which controllers it defines: {"writer": [{...}], "watcher": [...], ...}.
CONTROLLER_MODULE = '''
import os
import time
from array import array

from cosihost import Controller, Input, Output, NotFoundError

NS = "bench"
RUN = "BenchRuns.bench.cosihost.dev"
RESULT = "BenchResults.bench.cosihost.dev"
IMPORTED = time.monotonic_ns()
PROFILE = os.environ.get("COSIHOST_BENCH_PROFILE")


def _run(rt, rid):
    try:
        return rt.get(NS, RUN, rid).spec
    except NotFoundError:
        return None


def _report(rt, name, go, **fields):
    def put(spec):
        spec.update(fields)
    rt.modify(NS, RESULT, f"{name}.{go}", put)


def _profiled(name, fn):
    if not PROFILE:
        return fn()
    import cProfile
    prof = cProfile.Profile()
    try:
        return prof.runcall(fn)
    finally:
        prof.dump_stats(os.path.join(PROFILE, f"{name}.prof"))


def _named(cls, cls_name, name):
    cls.__name__ = cls.__qualname__ = cls_name
    cls.name = name
    return cls


def writer(cls_name, name, link, run, index, ns=NS):
    """On each new run: ``warmup`` writes, then ``n`` sequential rt.modify of
    one resource (paced every ``period_ns`` if given, from ``start_at_ns``
    if given), recording when each was issued and acknowledged; or, with
    ``batch``, the ``n`` writes in transactions of ``batch`` resources each.
    The resources are in namespace ``ns`` (an etcd one, say)."""
    from benchmarks.payload import make_spec
    base = make_spec(index)

    class Writer(Controller):
        inputs = [Input(NS, RUN, id=run)]
        outputs = [Output(link), Output(RESULT, kind="shared")]
        go = None

        def reconcile(self, rt):
            spec = _run(rt, run)
            if spec is None or spec["go"] == self.go:
                return
            self.go = go = spec["go"]
            n, period, last = spec["n"], spec.get("period_ns", 0), spec["n"] - 1

            batch = spec.get("batch", 0)

            def write(seq, t, rid="link"):
                def fn(s):
                    if not s:
                        s.update(base)
                    s.update(seq=seq, t=t, go=go, last=last)
                rt.modify(ns, link, rid, fn)

            for i in range(spec.get("warmup", 0)):
                write(-1 - i, 0)
            start = spec.get("start_at_ns") or time.monotonic_ns()
            while time.monotonic_ns() < start:
                time.sleep(max(0, start - time.monotonic_ns()) / 1e9)
            issued, acked = array("q"), array("q")
            cpu = time.process_time_ns()

            def batched():
                for first in range(0, n, batch):
                    t = time.monotonic_ns()
                    count = min(batch, n - first)
                    with rt.transaction():  # its last write is "link", which watchers read
                        for j in range(count):
                            write(first + j, t, "link" if j == count - 1 else f"link{j}")
                    done = time.monotonic_ns()
                    issued.extend([t] * count)
                    acked.extend([done] * count)

            def measured():
                if batch:
                    return batched()
                for seq in range(n):
                    if period:
                        wait = start + seq * period - time.monotonic_ns()
                        if wait > 0:
                            time.sleep(wait / 1e9)
                    t = time.monotonic_ns()
                    write(seq, t)
                    if period:  # paced: wait for the reply, so "acked" is the acknowledgement
                        rt.flush()
                    issued.append(t)
                    acked.append(time.monotonic_ns())
                # Pipelined writes are acknowledged when the reconcile returns;
                # waiting here makes the last "acked" the last acknowledgement.
                rt.flush()
                acked[-1] = time.monotonic_ns()

            _profiled(self.name, measured)
            cpu = time.process_time_ns() - cpu
            _report(rt, self.name, go, issued=issued.tobytes(), acked=acked.tobytes(), cpu_ns=cpu)

    return _named(Writer, cls_name, name)


def watcher(cls_name, name, link):
    """Records when each write of a Writer's resource is first seen in reconcile."""

    class Watcher(Controller):
        inputs = [Input(NS, link)]
        outputs = [Output(RESULT, kind="shared")]
        go = None
        prof = None

        def reconcile(self, rt):
            now = time.monotonic_ns()
            try:
                spec = rt.get(NS, link, "link").spec
            except NotFoundError:
                return
            seq = spec["seq"]
            if seq < 0:
                return
            if spec["go"] != self.go:
                self.go = spec["go"]
                self.seqs, self.times = array("q"), array("q")
                self.cpu = time.process_time_ns()
                if PROFILE and self.prof is None:
                    import cProfile
                    self.prof = cProfile.Profile()
                    self.prof.enable()
            if self.seqs and self.seqs[-1] == seq:
                return
            self.seqs.append(seq)
            self.times.append(now)
            if seq == spec["last"]:
                if self.prof is not None:
                    self.prof.disable()
                    self.prof.dump_stats(os.path.join(PROFILE, f"{self.name}.prof"))
                    self.prof = None
                _report(rt, self.name, self.go, seqs=self.seqs.tobytes(), times=self.times.tobytes(),
                        cpu_ns=time.process_time_ns() - self.cpu)

    return _named(Watcher, cls_name, name)


def marker(cls_name, name, type, input):
    """A typical controller (one input kind) that, in each first reconcile
    after a start, writes its pid and start time, then when that write was
    acknowledged (``done``)."""

    class Marker(Controller):
        inputs = [Input(NS, input)]
        outputs = [Output(type)]
        started = False

        def reconcile(self, rt):
            if self.started:
                return
            self.started = True
            t = time.monotonic_ns()
            rt.list(NS, input)
            rt.modify(NS, type, "marker", lambda s: s.update(pid=os.getpid(), t=t, done=0))
            rt.flush()  # "done" is when that write was acknowledged, as before writes were pipelined
            done = time.monotonic_ns()
            rt.modify(NS, type, "marker", lambda s: s.update(done=done))

    return _named(Marker, cls_name, name)


def idle(cls_name, name, input, output):
    """A typical controller with nothing to do: one input kind, one status it keeps."""

    class Idle(Controller):
        inputs = [Input(NS, input)]
        outputs = [Output(output)]

        def reconcile(self, rt):
            count = len(rt.list(NS, input))
            rt.modify(NS, output, "status", lambda s: s.update(inputs=count))

    return _named(Idle, cls_name, name)


def bootstrap(cls_name, name, kind, go):
    """Reports how long after its import the first reconcile came: register,
    subscribe and the snapshot of its input kind."""

    class Bootstrap(Controller):
        inputs = [Input(NS, kind)]
        outputs = [Output(RESULT, kind="shared")]
        done = False

        def reconcile(self, rt):
            if self.done:
                return
            t = time.monotonic_ns()
            items = len(rt.list(NS, kind))
            _report(rt, self.name, go, imported=IMPORTED, reconciled=t, items=items, pid=os.getpid())
            self.done = True

    return _named(Bootstrap, cls_name, name)


FACTORIES = {"writer": writer, "watcher": watcher, "marker": marker, "idle": idle,
             "bootstrap": bootstrap}
for _kind, _entries in CONFIG.items():
    for _entry in _entries:
        _cls = FACTORIES[_kind](**_entry)
        globals()[_cls.__name__] = _cls
'''


def controller_module(**config: list[dict[str, Any]]) -> str:
    """The source of a controller module defining the controllers in ``config``."""
    return f"CONFIG = {config!r}\n" + CONTROLLER_MODULE


def link_type(tag: str) -> str:
    return f"Links{tag}.bench.cosihost.dev"


def writers(count: int, *, run: str, prefix: str = "Writer", link: Callable[[int], str] | None = None,
            ns: str | None = None) -> list[dict[str, Any]]:
    """``count`` writer entries, each with an output type of its own (in
    namespace ``ns``, if not the benchmarks' own)."""
    link = link or (lambda k: link_type(f"{prefix}{k}"))
    where = {} if ns is None else {"ns": ns}
    return [{"cls_name": f"{prefix}{k}", "name": f"bench.{prefix}{k}", "link": link(k), "run": run,
             "index": k, **where} for k in range(count)]


def watchers(count: int, *, link: str, prefix: str = "Watcher") -> list[dict[str, Any]]:
    return [{"cls_name": f"{prefix}{k}", "name": f"bench.{prefix}{k}", "link": link}
            for k in range(count)]


def env() -> dict[str, str]:
    """The environment of every process the benchmarks start. An existing
    PYTHONPATH comes first: to measure a changed copy of cosihost without
    touching this tree, run ``python -m benchmarks`` from the folder holding
    the copy, with ``PYTHONPATH=<that folder>:<this repository>``."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": (path + os.pathsep if path else "") + str(ROOT),
            "COSIHOST_LOG_LEVEL": os.environ.get("COSIHOST_LOG_LEVEL", "ERROR")}


class Processes:
    """Every process one benchmark starts; ``close()`` kills what is left."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="chb-"))
        self._procs: list[subprocess.Popen[bytes]] = []
        self._sups: list[SupervisorProcess] = []

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ipc(self, name: str) -> str:
        return f"ipc://{self.tmp / name}"

    def raw(self, role: str, *args: object, stdin: bool = False) -> subprocess.Popen[bytes]:
        """Start a :mod:`benchmarks.raw` role."""
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.raw", role, *map(str, args)],
                                cwd=ROOT, env={**os.environ, **env()}, stdout=subprocess.PIPE,
                                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                start_new_session=True)
        self._procs.append(proc)
        return proc

    @staticmethod
    def result(proc: subprocess.Popen[bytes], timeout: float = 120.0) -> dict[str, Any]:
        """The JSON line a raw client prints when it is done."""
        out, _ = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"raw baseline {proc.args[3:]} exited with {proc.returncode}")  # type: ignore[index]
        return json.loads(out.decode().splitlines()[-1])

    def supervisor(self, *, config: str | None = None, start: bool = True,
                   **modules: str) -> SupervisorProcess:
        """A supervisor with the given controller modules (name -> source)."""
        sup = SupervisorProcess(controllers=modules, config=config, env=env(), wrapper=_profiler())
        self._sups.append(sup)
        if start:
            sup.start(timeout=60)
        return sup

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
            for stream in (proc.stdout, proc.stdin):
                if stream is not None:
                    stream.close()
        self._procs.clear()
        for sup in self._sups:
            sup.cleanup()
        self._sups.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _profiler() -> list[str]:
    """With COSIHOST_BENCH_PROFILE, the supervisor runs under cProfile and
    dumps its stats to ``supervisor-<n>.prof`` there when it stops."""
    folder = os.environ.get("COSIHOST_BENCH_PROFILE")
    if not folder:
        return []
    out = os.path.join(folder, f"supervisor-{time.monotonic_ns()}.prof")
    # The supervisor's command is [python, -m, cosihost, ...]: run that module under cProfile.
    return ["sh", "-c", 'out=$0; py=$1; shift 2; exec "$py" -m cProfile -o "$out" -m "$@"', out]


def trigger(client: Client, run: str, **spec: Any) -> str:
    """Start a run: a fresh ``go`` token in the ``BenchRuns`` resource ``run``."""
    go = uuid.uuid4().hex[:12]

    def put(s: dict[str, Any]) -> None:
        s.clear()
        s.update(spec, go=go)
    client.modify(NS, RUN, run, put)
    return go


def results(client: Client, names: Iterable[str], go: str, *, timeout: float,
            failed: Callable[[], str | None] = lambda: None) -> dict[str, dict[str, Any]]:
    """The ``BenchResults`` of ``names`` for run ``go``, once all are in.
    Asks about one name at a time, ten times a second, so that waiting adds
    next to no load; ``failed`` may say why waiting longer is pointless."""
    pending = list(names)
    got: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while pending:
        try:
            got[pending[0]] = client.get(NS, RESULT, f"{pending[0]}.{go}").spec
            pending.pop(0)
            continue
        except NotFoundError:
            pass
        why = failed()
        if why:
            raise RuntimeError(why)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no result from {', '.join(pending)} after {timeout:g} s")
        time.sleep(0.1)
    return got


def ns_array(blob: bytes) -> array:
    values = array("q")
    values.frombytes(blob)
    return values


def wait_running(sup: SupervisorProcess, names: Iterable[str], *, timeout: float = 60.0) -> dict[str, int]:
    """Wait until each controller runs and has reconciled; their pids."""
    names = list(names)

    def check() -> dict[str, int] | None:
        statuses = sup.statuses()
        pids = {}
        for name in names:
            s = statuses.get(name)
            if s is None or s["state"] != "running" or not s.get("pid"):
                return None
            pids[name] = s["pid"]
        return pids
    return wait_for(check, timeout=timeout, interval=0.1, message=f"{len(names)} controllers running")


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Iterable[float]) -> float:
    return statistics.median(values)


class CpuMeter:
    """CPU seconds some running processes use between ``start()`` and ``stop()``."""

    def __init__(self, pids: Iterable[int]) -> None:
        self.procs = [psutil.Process(pid) for pid in pids]
        self.before = 0.0

    def start(self) -> "CpuMeter":
        self.before = cpu_seconds(self.procs)
        return self

    def stop(self) -> float:
        return cpu_seconds(self.procs) - self.before


def cpu_seconds(procs: Iterable[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total
