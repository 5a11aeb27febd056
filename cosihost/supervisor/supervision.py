"""The supervision policy: what happens to a controller's process, from start to death.

This module decides; the main loop (``server``) only carries messages and
signals to it. It keeps one :class:`Slot` per controller name, hands out
tokens at registration, restarts dead processes with exponential backoff,
kills hung ones, and answers restart and reload requests once their work is
done. Which declarations become slots is decided apart, in :mod:`.admission`
(a mixin of :class:`Supervision`). Its view is published as
``ControllerStatuses`` resources in the ``runtime`` namespace.
"""

from __future__ import annotations

import logging
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import AccessDeniedError, InvalidRequestError
from ..settings import Settings
from .. import wire
from ..wire import Reply
from . import processes
from .access import Caller
from .admission import Admission, Refusal, scan_changes
from .limits import PLACEMENT_FAILED_EXIT, Limiter
from .processes import BACKOFF, CRASH_LOOP, REFUSED, RUNNING, STARTING, STOPPED, Slot
from ..worker.identity import IDENTITY_FAILED_EXIT
from . import orphans, ratelimit
from .registry import Declaration, Registry
from .revocation import Grants
from .access import check_subscribe
from .status import StatusWriter
from .zygote import Zygote

log = logging.getLogger("cosihost.supervisor")
Respond = Callable[[Reply], None]


class Supervision(Admission):
    def __init__(self, settings: Settings, registry: Registry, status: StatusWriter,
                 limiter: Limiter) -> None:
        self.settings = settings
        self.timing = settings.timing
        self.registry = registry
        self.status = status
        self.limiter = limiter
        self.slots: dict[str, Slot] = {}
        #: Write rate limits by controller name (see ratelimit).
        self.buckets: dict[str, ratelimit.TokenBucket] = {}
        self.module_errors: dict[Path, tuple[str, str]] = {}
        self.refused: dict[str, Refusal] = {}
        self.tokens: dict[str, str] = {}
        #: Event subscriptions granted to controllers, and those revoked.
        self.grants = Grants()
        self.stopping = False
        self._next_refresh = 0.0
        self.zygote: Zygote | None = None
        #: A removed controller's outputs that finalizers held ([controllers] removed_outputs = "destroy").
        self.orphans = orphans.Orphans(status.state, active=lambda name: name in self.slots)

    # -- leaving ---------------------------------------------------------------
    def remove(self, name: str) -> None:
        slot = self.slots.get(name)
        if slot is None:
            return
        slot.state = STOPPED
        self.registry.remove(name)
        if slot.alive():
            processes.stop(slot, reason="removed")
        else:
            self._forget(slot)

    def _forget(self, slot: Slot) -> None:
        self.slots.pop(slot.name, None)
        self.buckets.pop(slot.name, None)
        if self.settings.isolation is not None:
            self.settings.isolation.release(slot.name)
        self.status.removed(slot.name)
        if slot.decl is not None:
            if self.settings.removed_outputs == orphans.DESTROY:
                self.orphans.destroy_outputs(slot.decl)
            self.status.definitions_gone(slot.decl, self.registry.all())
        if self.refused and not self.stopping:  # its name or outputs may be what a refusal waited for
            self._admit_refused(scan_changes(), probed=set())

    # -- processes -------------------------------------------------------------
    def _start(self, slot: Slot) -> None:
        assert slot.decl is not None
        slot.decl.inputs = list(slot.declared_inputs)  # update_inputs lasts one process
        try:
            self._launch(slot)
        except (OSError, subprocess.SubprocessError, InvalidRequestError) as exc:
            self._start_failed(slot, exc)
            return
        slot.next_start = None
        log.info("started %s (pid %d)", slot.name, slot.pid)
        self.status.update(slot)

    def _launch(self, slot: Slot) -> None:
        assert slot.decl is not None
        limits, _bucket = ratelimit.split(slot.name, {**slot.decl.limits, **self.settings.limits.get(slot.name, {})})
        slot.placement = self.limiter.prepare(slot.name, limits)
        iso = self.settings.isolation
        runtime_dir = iso.reach(self.settings.runtime_dir) if iso is not None else self.settings.runtime_dir
        config = processes.worker_config(slot, runtime_dir=runtime_dir, timing=self.timing)
        slot.identity = iso.assign(slot.name, slot.decl) if iso is not None else None
        setup = {**slot.placement.setup, "identity": slot.identity}
        proc: Any = None  # a zygote child, or a Popen
        zygote = self._zygote()
        if zygote is not None:
            try:
                proc = zygote.spawn(config, setup)
            except OSError as exc:
                log.warning("zygote spawn of %s failed (%s); starting it cold", slot.name, exc)
        if proc is None:
            # The identity is taken after exec, in the worker: the interpreter
            # may live where the controller's user cannot reach.
            proc = processes.spawn_cold({**config, "identity": slot.identity},
                                        preexec=self.limiter.preexec(slot.placement), pass_fds=self._pass_fds())
        processes.started(slot, proc)
        self.limiter.place(slot.placement, slot.pid)

    def _start_failed(self, slot: Slot, exc: Exception) -> None:
        """No process came of it (cgroup, fork or exec failed): back off, try again."""
        if slot.placement is not None:
            self.limiter.release(slot.placement)
        slot.proc = None
        slot.last_exit = {"code": None, "signal": None, "reason": f"could not start: {exc}", "at": time.time()}
        now = time.monotonic()
        slot.next_start = now + processes.next_delay(slot, self.timing, now)
        log.error("could not start %s: %s", slot.name, exc)
        self.status.update(slot)

    def _zygote(self) -> Zygote | None:
        """The fork server, (re)started on demand; None when disabled."""
        if not self.timing.zygote:
            return None
        if self.zygote is None or not self.zygote.alive():
            if self.zygote is not None:
                self.zygote.close()
            self.zygote = Zygote(pass_fds=self._pass_fds())
        return self.zygote

    def _pass_fds(self) -> tuple[int, ...]:
        """What every controller process inherits: the runtime folder's descriptor under isolation."""
        return self.settings.isolation.pass_fds if self.settings.isolation is not None else ()

    def reap(self) -> None:
        """Judge every process that has exited since the last look."""
        now = time.monotonic()
        for slot in list(self.slots.values()):
            if slot.proc is None:
                continue
            code = slot.proc.poll()
            if code is not None:
                self._exited(slot, code, now)

    def _exited(self, slot: Slot, code: int, now: float) -> None:
        oom = slot.placement is not None and self.limiter.oom_killed(slot.placement)
        if slot.kill_reason:
            reason = slot.kill_reason
        elif oom:
            reason = "memory limit"
        elif code == PLACEMENT_FAILED_EXIT:
            reason = "could not enter its limits"
        elif code == IDENTITY_FAILED_EXIT and slot.identity is not None:
            reason = "could not take its identity (user, capabilities)"
        else:
            reason = processes.describe_exit(code)
        slot.last_exit = {
            "code": code if code >= 0 else None,
            "signal": processes.describe_exit(code).removeprefix("killed by ") if code < 0 else None,
            "reason": reason, "at": time.time(),
        }
        if slot.placement is not None:
            self.limiter.release(slot.placement)
        self.tokens.pop(slot.token, None)
        self.grants.forget(slot.token)
        log.log(logging.INFO if slot.kill_reason else logging.WARNING,
                "%s (pid %d) ended: %s", slot.name, slot.pid, reason)
        slot.proc, slot.token = None, ""
        if slot.state == STOPPED:
            if self.stopping:
                self.status.update(slot)
            else:
                self._forget(slot)
            return
        slot.restarts += 1
        if slot.kill_reason in ("restart",):
            self._start(slot)
            return
        delay = processes.next_delay(slot, self.timing, now)
        slot.next_start = now + delay
        log.warning("restarting %s in %.1f s%s", slot.name, delay,
                    " (crash loop)" if slot.state == CRASH_LOOP else "")
        self.status.update(slot)

    def tick(self) -> float:
        """Start due processes, kill hung ones, escalate slow stops; returns
        the seconds until the next thing is due."""
        now = time.monotonic()
        wake = now + self.timing.heartbeat
        for slot in list(self.slots.values()):
            if slot.next_start is not None and not slot.alive() and not self.stopping:
                if now >= slot.next_start:
                    self._start(slot)
                else:
                    wake = min(wake, slot.next_start)
            if slot.alive() and slot.state in (STARTING, RUNNING) and \
                    now - slot.last_seen > self.timing.hung_after:
                log.error("%s stopped answering for %.0f s: killing it", slot.name, now - slot.last_seen)
                processes.kill(slot, reason="hung")
        revoke_at = self._enforce_revocations(now)
        if revoke_at is not None:
            wake = min(wake, revoke_at)
        self.refresh()
        return max(0.0, min(wake, self._next_refresh) - now)

    def refresh(self) -> None:
        """Republish every live controller's status (usage, counters)."""
        now = time.monotonic()
        if now < self._next_refresh:
            return
        self._next_refresh = now + self.timing.usage_every
        for slot in self.slots.values():
            if slot.alive():
                self.status.update(slot)

    def kill_stragglers(self) -> None:
        for slot in self.slots.values():
            processes.kill(slot, reason=slot.kill_reason or "did not stop in time")

    def stop_all(self) -> None:
        self.stopping = True
        for slot in self.slots.values():
            slot.state = STOPPED
            processes.stop(slot, reason="supervisor stopping")

    def any_alive(self) -> bool:
        return any(slot.alive() for slot in self.slots.values())

    # -- requests from controllers ---------------------------------------------
    def caller(self, token: str) -> Caller | None:
        name = self.tokens.get(token)
        slot = self.slots.get(name) if name else None
        if slot is None or slot.decl is None:
            return None
        slot.last_seen = time.monotonic()
        return Caller(name=slot.name, decl=slot.decl)

    def register(self, args: dict[str, Any]) -> dict[str, Any]:
        name, secret = args["name"], args["secret"]
        slot = self.slots.get(name) if isinstance(name, str) else None
        if slot is None or not slot.secret or not isinstance(secret, str) or \
                not secrets.compare_digest(secret, slot.secret) or not slot.alive():
            raise AccessDeniedError(f"registration of {name!r} refused: unknown controller or wrong secret")
        decl = Declaration.from_wire(args, source=f"{slot.module.name}:{slot.cls}")
        assert slot.decl is not None
        if not decl.same_shape(slot.decl):
            raise AccessDeniedError(f"{name} registered a declaration that differs from its module's")
        self.tokens.pop(slot.token, None)
        slot.token = secrets.token_hex(16)
        slot.secret = ""  # one registration per process
        self.tokens[slot.token] = name
        slot.last_seen = time.monotonic()
        log.info("%s registered", name)
        return {"token": slot.token, "epoch": self.status.state.epoch}

    def throttle(self, caller: Caller, writes: int) -> float:
        """0.0 when the controller may make ``writes`` writes now; else how long to wait."""
        bucket = self.buckets.get(caller.name)
        if bucket is None:
            return 0.0
        wait = bucket.take(writes)
        if wait:
            self.status.refusals[caller.name] = bucket.refused
        return wait

    def heartbeat(self, caller: Caller, args: dict[str, Any]) -> None:
        slot = self.slots[caller.name]
        counters = args.get("counters")
        if isinstance(counters, dict):
            slot.counters = {k: v for k, v in counters.items() if isinstance(k, str) and isinstance(v, int)}
        # Waiting for an input that cannot be served yet (etcd not reached)
        # counts: the controller is up and does what it can.
        attempts = (slot.counters.get("reconciles", 0) + slot.counters.get("crashes", 0)
                    + slot.counters.get("waiting", 0))
        if attempts and not slot.attempted:
            slot.attempted = True
            slot.state = RUNNING
            self.status.update(slot)
            for respond in slot.waiters:
                respond(Reply(True, result={"name": slot.name, "pid": slot.pid}))
            slot.waiters.clear()

    def update_inputs(self, caller: Caller, inputs: Any) -> None:
        slot = self.slots[caller.name]
        assert slot.decl is not None
        if not isinstance(inputs, list):
            raise InvalidRequestError("inputs must be a list")
        data = {"name": slot.name, "inputs": inputs, "outputs": [o.to_wire() for o in slot.decl.outputs]}
        decl = Declaration.from_wire(data, source=slot.decl.source)
        if decl.inputs != slot.decl.inputs:
            slot.decl.inputs = decl.inputs
            self.status.update(slot)
            self._revoke(caller)

    def _revoke(self, caller: Caller) -> None:
        """The kinds the controller may no longer read: further subscriptions
        are refused (the read rule sees the new inputs); those it holds must be
        given up within ``revoke_within`` seconds (see :mod:`revocation`)."""
        slot = self.slots[caller.name]

        def allowed(topic: bytes) -> bool:
            try:
                check_subscribe(caller, topic)
            except AccessDeniedError:
                return False
            return True

        for topic in self.grants.shrink(slot.token, allowed, within=self.timing.revoke_within):
            log.info("%s must unsubscribe from %r within %g s: its inputs no longer name it",
                     slot.name, topic, self.timing.revoke_within)

    def _enforce_revocations(self, now: float) -> float | None:
        """Restart every controller that kept a revoked subscription past its
        deadline; returns when the next deadline is due."""
        for revocation in self.grants.overdue(now):
            name = self.tokens.get(revocation.token)
            slot = self.slots.get(name) if name else None
            if slot is None or not slot.alive():
                continue
            namespace, type = wire.parse_topic(revocation.topic)  # only kinds' topics are granted
            kind = f"{namespace}/{type}"
            reason = f"kept its subscription to {kind} after its inputs shrank"
            log.error("%s %s: restarting it", slot.name, reason)
            processes.kill(slot, reason=reason)
        return self.grants.next_deadline()

    # -- requests from people --------------------------------------------------
    def restart(self, name: str, respond: Respond | None) -> None:
        slot = self.slots.get(name)
        if slot is None or slot.decl is None or slot.state in (REFUSED, STOPPED):
            if respond is not None:
                known = ", ".join(sorted(self.slots)) or "none"
                respond(Reply(False, code="not-found", message=f"no running controller {name!r} (known: {known})"))
            return
        if respond is not None:
            slot.waiters.append(respond)
        slot.attempted = False
        if slot.alive():
            processes.stop(slot, reason="restart")
        else:
            self._start(slot)

    def controllers_due(self) -> bool:
        return all(s.attempted or s.state in (REFUSED, CRASH_LOOP, STOPPED, BACKOFF)
                   for s in self.slots.values())

    def summary(self) -> str:
        """One line for STATUS= and the log, e.g. "3/4 controllers running, 1 refused"."""
        states = [s.state for s in self.slots.values()]
        running = states.count(RUNNING)
        text = f"{running}/{len(states)} controllers running"
        failing = sum(1 for s in self.slots.values() if s.state == RUNNING and s.counters.get("failures"))
        if failing:
            text += f" ({failing} failing to reconcile)"
        waiting = sum(1 for s in self.slots.values() if s.state == RUNNING and s.counters.get("waiting"))
        if waiting:
            text += f" ({waiting} waiting for inputs)"
        for state in (STARTING, BACKOFF, CRASH_LOOP, REFUSED):
            if states.count(state):
                text += f", {states.count(state)} {state}"
        if self.refused:
            text += f", {len(self.refused)} refused"
        if self.module_errors:
            text += f", {len(self.module_errors)} module(s) failed"
        return text

