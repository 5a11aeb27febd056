"""The supervisor process: its loop, signals, and what it hosts for the Api.

One thread owns the state, the ROUTER socket (requests) and the XPUB socket
(events); nothing else touches them, so no lock is needed around state
writes and events leave in exactly the order they happened. Signals and the
probe threads only wake the loop through a socketpair; the decisions are
made in :mod:`supervision`.

Who may read which events is decided in :mod:`events_gate`; requests are
read and answered in :mod:`requests`; the runtime folder (its lock, the
admin token, the sockets' group) is :mod:`rundir`'s; the sockets are made in
:mod:`sockets`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import secrets
import signal
import socket
import threading
import time
from typing import Any, Callable

import zmq

from .. import wire
from ..errors import InvalidRequestError
from ..frames import send_frames
from ..state import InMemoryState, SqliteStore
from ..state.router import NamespaceRouter, group_by_config, matches
from ..settings import Settings
from ..state.events import Record
from ..wire import Reply
from . import limits as limits_mod
from . import processes, rundir, sockets
from .api import Api
from .events_gate import EventsGate
from .metrics import Figures
from .outbox import EventOutbox
from .requests import RequestServer, drain
from .registry import Registry
from .remote import Answer, RemoteWrites
from .sdnotify import Notifier
from .status import STATUS_NAMESPACE, StatusWriter, supervisor_declaration
from .supervision import Supervision

log = logging.getLogger("cosihost.supervisor")


class Supervisor:
    def __init__(self, settings: Settings, *, limiter: limits_mod.Limiter | None = None,
                 notifier: Notifier | None = None) -> None:
        self.settings = settings
        iso = settings.isolation
        #: Why controllers run as the supervisor's user although [isolation] is on (then off).
        self._isolation_off = iso.why_not() if iso else None
        self._isolation_asked = bool(iso and iso.asked)
        if self._isolation_off:
            settings.isolation = None
        self.limiter = limiter or limits_mod.choose()
        self.notifier = notifier or Notifier.from_env()
        self._probe_results: queue.SimpleQueue[list[processes.ProbeResult]] = queue.SimpleQueue()
        self._pending_reload: list[Callable[[Reply], None]] = []
        self._scan_waiters: list[Callable[[Reply], None]] = []  # answered when the running scan ends
        self._scan_stopped: list[str] = []
        self._reloading = self._rescan = False
        self._signals: list[int] = []
        self.ready = False
        self._etcd: list[Any] = []
        #: Each etcd namespace (as configured) and the state that keeps it.
        self._etcd_namespaces: dict[str, Any] = {}
        #: Events published so far (always counted: one increment).
        self.published = 0
        #: This loop turn's events, sent as one frame per kind before the loop waits.
        self.outbox = EventOutbox()
        #: What the loop counts for metrics; None when they are not served.
        self.metrics = Figures(self._wake, settings.metrics_listen) if settings.metrics_listen else None
        self.metrics_address: str | None = None

    # -- setup -----------------------------------------------------------------
    def _prepare_dirs(self) -> None:
        rd = self.settings.runtime_dir
        rd.mkdir(parents=True, exist_ok=True, mode=0o750)
        os.chmod(rd, 0o750)
        self._locks = [rundir.lock_dir(rd, "serving")]
        if self.settings.persistent_namespaces:
            self._locks.append(rundir.lock_dir(self.settings.state_dir, "keeping its state in"))
        self.admin_token = secrets.token_hex(16)
        rundir.write_admin_token(rd, self.admin_token)

    def _build_state(self) -> None:
        store = None
        if self.settings.persistent_namespaces:
            store = SqliteStore.in_dir(self.settings.state_dir, namespaces=self.settings.persistent_namespaces)
        local = InMemoryState(store=store, history=self.settings.history, on_event=self._on_event)
        self.remote = RemoteWrites(self._wake)
        self.state = NamespaceRouter(local, self._remote_namespaces())
        self.registry = Registry()
        self.registry.accept(supervisor_declaration())
        self.status = StatusWriter(self.state, mechanism=self.limiter.mechanism)
        if self._isolation_off:
            self.status.isolation_off = self._isolation_off
            log.log(logging.WARNING if self._isolation_asked else logging.INFO, "isolation: %s", self._isolation_off)
        self.supervision = Supervision(self.settings, self.registry, self.status, self.limiter)
        self.gate = EventsGate(pub=self.pub, zap=self.zap, settings=self.settings, supervision=self.supervision,
                               admin_token=self.admin_token)
        self.api = Api(self.state, self, admin_token=self.admin_token)
        self.requests = RequestServer(self.api, self.router, identify_local=self.settings.access_writers is not None,
                                      flush_events=self._flush_events)
        if self.metrics is not None:
            self.api.stats = self.metrics.requests
            self.metrics_address = self.metrics.serve_http(self.settings.runtime_dir)
        self.status.definitions(supervisor_declaration())

    def _remote_namespaces(self) -> dict[str, Any]:
        """The etcd namespaces of the config, connected and mirrored (their
        writes and events go through :class:`RemoteWrites`)."""
        if not self.settings.etcd_namespaces:
            return {}
        try:
            from ..state.etcd import EtcdState
        except ImportError as exc:
            raise InvalidRequestError(f"etcd namespaces need gRPC and protobuf ({exc.name} is missing): "
                                      "pip install 'cosihost[etcd]'") from None
        if any(matches(name, STATUS_NAMESPACE) for name in self.settings.etcd_namespaces):
            raise InvalidRequestError(f"config: namespace {STATUS_NAMESPACE!r} is this host's own; "
                                      "it cannot be kept in etcd")
        out: dict[str, Any] = {}
        for config, names in group_by_config(self.settings.etcd_namespaces):
            # A device may boot before its network: etcd namespaces then answer
            # "not reached yet" while everything else runs, until etcd is up.
            st = EtcdState(config, namespaces=names, history=self.settings.history,
                           on_event=self.remote.on_event, on_changes_done=self.remote.on_changes_done, wait=False)
            self._etcd.append(st)
            out.update(dict.fromkeys(names, st))
            self._etcd_namespaces.update(dict.fromkeys(names, st))
            log.info("namespaces %s kept in etcd at %s (%s)", ", ".join(sorted(names)),
                     ", ".join(config.endpoints), f"revision {st.applied}" if st.ready else st.not_ready)
        return out

    def _bind(self) -> None:
        self.ctx = zmq.Context()
        watch = self.metrics.watch_subscribers if self.metrics is not None else None
        # Before anything can fail: _close closes what was made.
        self.sockets = sockets.bind(self.ctx, self.settings, before_bind=watch)
        self.router, self.zap, self.pub = self.sockets.router, self.sockets.zap, self.sockets.pub
        self.remote_router, self.remote_pub = self.sockets.remote_router, self.sockets.remote_pub
        rd = self.settings.runtime_dir
        iso = self.settings.isolation
        group = iso.group if iso is not None else self.settings.access_group
        self._socket_group = group
        if group is not None:  # controllers under their own uids reach the sockets through it
            rundir.share_with_group(rd, group)
        if iso is not None:
            iso.open_runtime_dir(rd)

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, lambda num, _frame: self._signals.append(num))

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:
            pass

    # -- state hook and Api host -------------------------------------------------
    def _on_event(self, namespace: str, type: str, record: Record) -> None:
        self.api.saw(namespace, type, record)
        self._publish(namespace, type, record)

    def _publish(self, namespace: str, type: str, record: Record) -> None:
        """Into this turn's outbox: sent by :meth:`_flush_events` before the loop waits."""
        self.outbox.add(namespace, type, record)
        self.published += 1
        if self.supervision.orphans.watching:
            self.supervision.orphans.saw(namespace, type, record)

    def _flush_events(self) -> None:
        if self.outbox:
            self.outbox.flush(self.state.epoch, self._send_published)

    def _send_published(self, frames: list[bytes]) -> None:
        send_frames(self.pub, frames)
        if self.remote_pub is not None:
            send_frames(self.remote_pub, frames)

    def offload(self, work: Callable[[], Any], respond: Callable[[Reply], None]) -> None:
        self.remote.submit(work, respond)

    def pipeline(self, start: Callable[[Answer], None], respond: Callable[[Reply], None]) -> None:
        self.remote.pipeline(start, respond)

    def publish_probe(self, topic: bytes, nonce: str) -> None:
        self.gate.serve_subscriptions()  # those that came before the probe request: applied first
        self._flush_events()  # events stay in the order of their changes, the probe after them
        self._send_published([topic, wire.encode_probe(nonce)])

    # -- who reads the events ----------------------------------------------------
    def caller(self, token: str) -> Any:
        return self.supervision.caller(token)

    def register(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.supervision.register(args)

    def throttle(self, caller: Any, writes: int) -> float:
        return self.supervision.throttle(caller, writes)

    def write_limited(self, name: str) -> bool:
        return name in self.supervision.buckets

    def heartbeat(self, caller: Any, args: dict[str, Any]) -> None:
        self.supervision.heartbeat(caller, args)
        if self.metrics is not None:
            self.metrics.heartbeat(caller.name, args)
        self._check_ready()

    def update_inputs(self, caller: Any, inputs: Any) -> None:
        self.supervision.update_inputs(caller, inputs)

    def restart(self, name: str, respond: Callable[[Reply], None]) -> None:
        self.supervision.restart(name, respond)

    def reload(self, respond: Callable[[Reply], None]) -> None:
        if self.supervision.stopping:
            respond(Reply(False, code="unavailable", message="the supervisor is stopping"))
            return
        self._pending_reload.append(respond)
        self._start_scan()

    def summary(self) -> str:
        return self.supervision.summary()

    def controllers(self) -> list[bytes]:
        from .status import STATUS_NAMESPACE, STATUS_TYPE
        return self.state.snapshot(STATUS_NAMESPACE, STATUS_TYPE)[1]

    # -- scanning ------------------------------------------------------------------
    def _start_scan(self) -> None:
        """Scan the controllers folder; the reloads asked for so far are
        answered when this scan ends. A scan asked for during another runs
        after it: the folder may have changed since that one looked."""
        if self._reloading:
            self._rescan = True
            return
        self._reloading = True
        self._rescan = False
        self._scan_waiters, self._pending_reload = self._pending_reload, []
        if self.ready:
            self.notifier.reloading()
            self.ready = False
        sup = self.supervision
        modules = processes.discover(*self.settings.controller_folders())
        known = sup.known_digests()
        self._scan_stopped = sup.drop_missing(modules)
        todo = [m for m in modules if known.get(m) != processes.module_digest(m)]
        timeout = self.settings.timing.probe_timeout

        def work() -> None:
            with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
                results = list(pool.map(lambda m: processes.probe(m, timeout=timeout), todo))
            self._probe_results.put(results)
            self._wake()

        threading.Thread(target=work, name="probe", daemon=True).start()

    def _finish_scan(self, results: list[processes.ProbeResult]) -> None:
        summary = self.supervision.apply_probes(results, stopped=self._scan_stopped)
        self._reloading = False
        self._scanned = True
        done = {k: v for k, v in summary.items() if v and k != "reasons"}
        log.info("controllers scanned: %s", done or "nothing changed")
        for respond in self._scan_waiters:
            respond(Reply(True, result=summary))
        self._scan_waiters = []
        if self.supervision.stopping:
            for respond in self._pending_reload:
                respond(Reply(False, code="unavailable", message="the supervisor is stopping"))
            self._pending_reload.clear()
        elif self._rescan:
            self._start_scan()
        self._check_ready()  # READY again once the new controllers have reconciled

    def _check_ready(self) -> None:
        if (not self.ready and not self._reloading and getattr(self, "_scanned", False)
                and self.supervision.controllers_due()):
            self.ready = True
            log.info("ready: %s", self.supervision.summary())
            self.notifier.ready(self.supervision.summary())

    # -- the loop ------------------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the process exit code."""
        self._prepare_dirs()
        try:
            self._bind()
            self._install_signals()
            self._build_state()
            log.info("serving %s (epoch %s)", self.settings.runtime_dir, self.state.epoch)
            folder = self.settings.controllers_dir
            if folder is not None and not folder.is_dir():
                log.warning("controllers folder %s does not exist: no controllers from it until it does "
                            "and `cosihost reload`", folder)
            self._start_scan()
            self._loop()
            self._shutdown()
        finally:
            self._close()
        return 0

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.zap, zmq.POLLIN)
        poller.register(self.pub, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        for sock in (self.remote_router, self.remote_pub):
            if sock is not None:
                poller.register(sock, zmq.POLLIN)
        if self.metrics is not None and self.metrics.monitor is not None:
            poller.register(self.metrics.monitor, zmq.POLLIN)
        stop_deadline: float | None = None
        zygote_fd = -1
        next_house = 0.0
        while True:
            zygote = self.supervision.zygote
            if zygote is not None and zygote_fd >= 0 and not zygote.alive() and zygote.fileno() >= 0:
                zygote.pump()  # died between two looks: read its last words and its end
                self.supervision.reap()
                next_house = 0.0
            fd = zygote.fileno() if zygote is not None and zygote.alive() else -1
            if fd != zygote_fd:
                if zygote_fd >= 0:
                    poller.unregister(zygote_fd)
                if fd >= 0:
                    poller.register(fd, zmq.POLLIN)
                zygote_fd = fd
            now = time.monotonic()
            if now >= next_house:  # timers: starts due, hung controllers, status refresh
                if next_house and self.metrics is not None:  # a timer (0.0: a forced round)
                    self.metrics.loop_lag.observe(now - next_house)
                next_house = now + self.supervision.tick()
                if self.ready:
                    self.notifier.status(self.supervision.summary())
            wait = max(0.0, next_house - now)
            if self.supervision.stopping:
                wait = min(wait, 0.1)  # escalate to SIGKILL on time
            ping_in = self.notifier.watchdog()
            if ping_in is not None:
                wait = min(wait, ping_in)
            self._flush_events()  # what this turn changed, before waiting
            events = dict(poller.poll(int(wait * 1000) + 1))
            # Processes end with a signal (SIGCHLD on the wake-up fd) or a word
            # from the zygote; only then is there anything to reap.
            woke = self._wake_r.fileno() in events or self._wake_r in events
            if woke:
                self._drain_wakeups()
                self.remote.drain(self._publish)
            if self.metrics is not None and (woke or self.metrics.monitor in events):
                self.metrics.serve(events, self.supervision, ready=self.ready, published=self.published,
                                   etcd={ns: st.ready for ns, st in self._etcd_namespaces.items()})
            if zygote_fd >= 0 and zygote_fd in events and zygote is not None:
                zygote.pump()
                woke = True
            if self.zap in events:
                self.gate.serve_zap()
            if self.pub in events:
                self.gate.serve_subscriptions()  # before requests: a probe then finds them applied
            if self.router in events:
                self.requests.serve()
            if self.remote_router is not None and self.remote_router in events:
                self.requests.serve_remote(self.remote_router)
            if self.remote_pub is not None and self.remote_pub in events:
                drain(self.remote_pub)  # remote roles read everything: subscriptions apply themselves
            self._flush_events()  # the requests' events leave before the housekeeping
            self.supervision.orphans.destroy_released()
            if woke or self.supervision.stopping:
                self.supervision.reap()
                next_house = 0.0  # a restart may be due at once; statuses changed
            self._check_ready()
            self._handle_signals()
            while not self._probe_results.empty():
                self._finish_scan(self._probe_results.get())
            if self.supervision.stopping:
                if not self.supervision.any_alive():
                    return
                if stop_deadline is None:
                    stop_deadline = time.monotonic() + self.settings.timing.stop_timeout
                elif time.monotonic() > stop_deadline:
                    self.supervision.kill_stragglers()

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT) and not self.supervision.stopping:
                log.info("stopping on %s", signal.Signals(sig).name)
                self.notifier.stopping()
                self.supervision.stop_all()
            elif sig == signal.SIGHUP and not self.supervision.stopping:
                log.info("reloading on SIGHUP")
                rundir.reshare(self.settings.runtime_dir, self._socket_group)
                self._start_scan()

    def _shutdown(self) -> None:
        for slot in self.supervision.slots.values():
            if slot.alive() and slot.proc is not None:
                slot.proc.kill()
                slot.proc.wait()
        self.supervision.reap()  # release the limits of the last ones to go
        if self.supervision.zygote is not None:
            self.supervision.zygote.close()
        log.info("stopped")

    def _close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()  # before the context ends: it holds a socket
        signal.set_wakeup_fd(-1)
        self.notifier.close()
        self.limiter.close()
        if getattr(self, "sockets", None) is not None:
            self.sockets.close()
        if getattr(self, "ctx", None) is not None:
            self.ctx.term()
        rundir.remove_endpoints(self.settings.runtime_dir)
        if getattr(self, "remote", None) is not None:
            self.remote.close()
        for st in self._etcd:
            st.close()
        store = getattr(getattr(getattr(self, "state", None), "local", None), "_store", None)
        if store is not None:
            store.close()

