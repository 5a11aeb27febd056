"""The single-threaded life of one controller process.

Register with the secret the supervisor handed over, sync the input kinds,
then loop: apply every pending frame of events to the cache (and wait for
the rest of a transaction that spans several kinds it reads), reconcile
once when an input changed (coalescing everything that arrived meanwhile)
or a requeue fell due, and send a heartbeat while idle. A heartbeat is sent only from this loop, so a
reconcile that never returns stops them, and the supervisor can tell.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import zmq

from .. import wire
from ..controller import Controller, Input, Output
from ..errors import UnavailableError
from ..pipeline import Pipeline
from ..transport import Requester, Subscriber, endpoint
from .cache import Cache, Kind
from .runtime import ControllerRuntime
from .writes import InFlight
from .schedule import scheduler_for

log = logging.getLogger("cosihost.worker")

#: Seconds a controller waits for the rest of a turn's frames (they were sent
#: right after the one it has) before it fills the kinds from history instead.
SETTLE = 0.05


@dataclasses.dataclass
class WorkerSettings:
    name: str
    runtime_dir: str
    secret: str
    heartbeat: float = 1.0
    backoff_base: float = 0.1
    backoff_cap: float = 30.0
    request_timeout: float = 5.0
    subscriber_hwm: int = 100_000


class WorkerLoop:
    def __init__(self, controller: Controller, settings: WorkerSettings) -> None:
        self.controller = controller
        self.settings = settings
        self.reported = -1
        self.suspects: set[Kind] = set()
        #: Input kinds not synced yet: no reconcile until they are.
        self.unsynced: set[Kind] = set()
        self.sched: Any = None  # a Scheduler, or a QScheduler for a QController

    def run(self) -> None:
        ctx = zmq.Context()
        try:
            self._run(ctx)
        finally:
            if self.sched is not None:
                self.sched.close()  # the shutdown hook, while the sockets still work
            ctx.destroy(linger=0)

    def _run(self, ctx: "zmq.Context[zmq.Socket[bytes]]") -> None:
        s = self.settings
        cls = type(self.controller)
        decl = cls.declaration()
        req = Pipeline(ctx, endpoint(s.runtime_dir, wire.API_SOCKET), timeout=s.request_timeout)
        reg = req.call("register", name=s.name, secret=s.secret, inputs=decl["inputs"],
                       outputs=decl["outputs"], pid=os.getpid(), definitions=decl["definitions"])
        req.token = reg["token"]
        # After registration: the events socket knows this process by its token.
        sub = Subscriber(ctx, endpoint(s.runtime_dir, wire.EVENTS_SOCKET), token=req.token,
                         hwm=s.subscriber_hwm)
        self.cache = Cache(req, sub, lambda *change: self.sched.on_change(*change))
        # A controller under a write rate limit writes one by one: pipelined, its
        # writes would reach the limit all at once and be refused (see writes.py).
        flight = InFlight(req, self.cache) if reg.get("pipelined") else None
        self.rt = ControllerRuntime(s.name, req, self.cache, in_flight=flight,
                                    inputs=[Input.from_wire(i) for i in decl["inputs"]],
                                    outputs=[Output.from_wire(o) for o in decl["outputs"]])
        self.sched = scheduler_for(self.controller, self.rt, backoff_base=s.backoff_base,
                                   backoff_cap=s.backoff_cap)
        kinds = list(dict.fromkeys((i.namespace, i.type) for i in self.rt.inputs))
        for kind in kinds:
            self._sync(kind)
        log.info("registered; %d input kind(s) synced", len(kinds) - len(self.unsynced))
        next_beat = 0.0
        while True:
            now = time.monotonic()
            if self.sched.due(now) and not self.unsynced:
                self.sched.reconcile_once()
                now = time.monotonic()
            if now >= next_beat or (self.reported <= 0 < self.sched.attempts()):
                for kind in sorted(self.unsynced):
                    self._sync(kind)
                self._heartbeat(req)
                next_beat = time.monotonic() + s.heartbeat
            wake = next_beat if self.unsynced else min(next_beat, self.sched.wake_at())
            self._drain(sub, sub.recv(max(0.0, wake - time.monotonic())))

    def _drain(self, sub: Subscriber, item: Any) -> None:
        """Apply every frame pending, then, while a frame said another kind
        held here changed in the same turn and its frame has not come yet,
        wait for it (up to :data:`SETTLE` s, then fill it from history): the
        reconcile that follows sees whole transactions only."""
        settle_by = None
        while True:
            while item is not None:
                self.cache.apply(*item)
                item = sub.recv(0)
            if not self.cache.incomplete():
                return
            now = time.monotonic()
            settle_by = now + SETTLE if settle_by is None else settle_by
            if now >= settle_by:
                self.cache.complete()
                return
            item = sub.recv(settle_by - now)

    def _sync(self, kind: Kind) -> None:
        """Sync an input kind; one that cannot be served yet (its etcd not
        reached, say) is tried again at each heartbeat, and the controller
        waits for it before reconciling."""
        try:
            self.cache.ensure(*kind)
        except UnavailableError as exc:
            if kind not in self.unsynced:
                log.warning("input %s/%s cannot be synced yet (%s); trying again at each heartbeat",
                            *kind, exc)
            self.unsynced.add(kind)
            return
        if kind in self.unsynced:
            self.unsynced.discard(kind)
            log.info("input %s/%s synced", *kind)
            self.sched.dirty = True

    def _heartbeat(self, req: Requester) -> None:
        kinds = [[ns, t, kc.seq] for (ns, t), kc in self.cache.kinds.items()]
        counters = dict(self.rt.counters.as_dict(), resyncs=self.cache.resyncs, resent=req.resent,
                        events=self.cache.events, failures=self.sched.failures,
                        waiting=len(self.unsynced), pending=int(self.sched.dirty))
        durations = {"reconcile_seconds": self.sched.durations.to_wire()}
        try:
            reply: dict[str, Any] = req.call("heartbeat", counters=counters, durations=durations, kinds=kinds)
        except UnavailableError as exc:  # the supervisor is slow or paused: try at the next beat
            log.warning("heartbeat: %s", exc)
            return
        self.reported = self.sched.attempts()
        heads = [(ns, t, seq) for ns, t, seq in reply.get("heads", [])]
        self.suspects = self.cache.check_heads(heads, self.suspects)
