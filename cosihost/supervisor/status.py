"""The supervisor's own view, published as resources.

``ControllerStatuses.runtime.cosihost.dev`` (namespace ``runtime``, id = the
controller's name) says how each controller is doing, and
``ResourceDefinitions.meta.cosihost.dev`` (namespace ``meta``, id = the type)
says how each type is shown. Both are ordinary state, so ``cosihost get
--watch`` follows them like anything else; only the supervisor writes them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import psutil

from ..controller import Output, ResourceDefinition
from ..errors import NotFoundError
from ..state.router import NamespaceRouter
from .processes import REFUSED, Slot
from .registry import SUPERVISOR, Declaration

STATUS_TYPE = "ControllerStatuses.runtime.cosihost.dev"
STATUS_NAMESPACE = "runtime"
DEFINITION_TYPE = "ResourceDefinitions.meta.cosihost.dev"
DEFINITION_NAMESPACE = "meta"

OWN_DEFINITIONS = [
    ResourceDefinition(STATUS_TYPE, aliases=("controllerstatus", "controllerstatuses", "cs"),
                       default_namespace=STATUS_NAMESPACE,
                       print_columns=(("STATE", "state"), ("PID", "pid"), ("RESTARTS", "restarts"),
                                      ("UPTIME", "started", "timestamp"), ("LAST EXIT", "last_exit.reason"))),
    ResourceDefinition(DEFINITION_TYPE, aliases=("resourcedefinition", "resourcedefinitions", "rd"),
                       default_namespace=DEFINITION_NAMESPACE,
                       print_columns=(("ALIASES", "aliases"), ("DEFAULT NAMESPACE", "default_namespace"),
                                      ("ORPHANED BY", "orphaned_by"))),
]


def supervisor_declaration() -> Declaration:
    return Declaration(SUPERVISOR, [], [Output(STATUS_TYPE), Output(DEFINITION_TYPE)],
                       source="built in", definitions=[d.to_spec() for d in OWN_DEFINITIONS])


class StatusWriter:
    def __init__(self, state: NamespaceRouter, *, mechanism: str) -> None:
        self.state = state
        self.mechanism = mechanism
        #: Writes refused per controller for its write rate limit.
        self.refusals: dict[str, int] = {}
        #: Why controllers run as the supervisor's user (set by the server).
        self.isolation_off = ("[isolation] enabled = false" if os.geteuid() == 0
                              else "the supervisor is not root: controllers run as its user")

    def _put(self, namespace: str, type: str, id: str, spec: dict[str, Any]) -> None:
        def replace(current: dict[str, Any]) -> None:
            current.clear()
            current.update(spec)
        self.state.modify(namespace, type, id, replace, owner=SUPERVISOR)

    def _drop(self, namespace: str, type: str, id: str) -> None:
        try:
            self.state.destroy(namespace, type, id, owner=SUPERVISOR)
        except NotFoundError:
            pass

    def update(self, slot: Slot) -> None:
        self._put(STATUS_NAMESPACE, STATUS_TYPE, slot.name, self.spec(slot))

    def spec(self, slot: Slot) -> dict[str, Any]:
        """The status of a controller. ``pid`` and ``started`` (wall-clock
        seconds) are null while it has no process (backoff, stopped): a
        script must never signal a pid that is not the controller's. There is
        no uptime field: readers compute it from ``started`` when they show
        it, so it is never as old as the last refresh."""
        placement = slot.placement
        running = slot.proc is not None
        return {
            "state": slot.state,
            "pid": slot.pid if running else None,
            "restarts": slot.restarts,
            "started": slot.started_wall if running else None,
            "last_exit": slot.last_exit,
            "limits": placement.limits if placement is not None else {},
            "mechanism": placement.mechanism if placement is not None else self.mechanism,
            "enforced": dict(placement.enforced) if placement is not None else {},
            "usage": usage(slot.pid) if running else {},
            "counters": dict(slot.counters),
            "throttled": self.throttled(slot.name),
            "isolation": self.isolation(slot),
            "module": slot.module.name,
            "class": slot.cls,
            "reason": "",  # why it was refused; a running slot was not
            "inputs": [i.to_wire() for i in slot.decl.inputs] if slot.decl else [],
            "outputs": [o.to_wire() for o in slot.decl.outputs] if slot.decl else [],
            **({"queue": slot.decl.queue} if slot.decl and slot.decl.queue else {}),
        }

    def isolation(self, slot: Slot) -> dict[str, Any]:
        """The user a controller runs as, or why it runs as the supervisor's:
        mode ``user`` (a named account, with the other controllers the config
        runs as it in ``shared_with``) or ``dynamic-user`` (a uid of its own)."""
        ident = slot.identity
        if ident is None:
            return {"mode": "none", "reason": self.isolation_off}
        named = ({"user": ident["user"], "shared_with": list(ident.get("shared_with") or [])}
                 if ident.get("user") else {})
        return {"mode": "user" if named else "dynamic-user", **named, "uid": ident["uid"], "gid": ident["gid"],
                "groups": list(ident["groups"]), "no_new_privs": True,
                "capabilities": list(ident.get("capabilities") or [])}

    def throttled(self, name: str) -> int:
        """Writes of ``name`` refused for its write rate limit (set by supervision)."""
        return self.refusals.get(name, 0)

    def refused(self, name: str, source: str, why: str) -> None:
        self._put(STATUS_NAMESPACE, STATUS_TYPE, name, {
            "state": REFUSED, "pid": None, "restarts": 0, "started": None, "last_exit": None, "limits": {},
            "mechanism": self.mechanism, "enforced": {}, "usage": {}, "counters": {},
            "module": source.split(":")[0], "class": source.partition(":")[2], "reason": why,
            "inputs": [], "outputs": [],
        })

    def module_failed(self, module: Path, error: str) -> None:
        self.refused(module.name, module.name + ":", error)

    def module_cleared(self, module: Path) -> None:
        self._drop(STATUS_NAMESPACE, STATUS_TYPE, module.name)

    def removed(self, name: str) -> None:
        self._drop(STATUS_NAMESPACE, STATUS_TYPE, name)

    def definitions(self, decl: Declaration) -> None:
        for type in _defined(decl):
            spec = next(s for s in decl.definitions if isinstance(s, dict) and s.get("type") == type)
            self._put(DEFINITION_NAMESPACE, DEFINITION_TYPE, type, spec)

    def definitions_gone(self, decl: Declaration, remaining: Iterable[Declaration]) -> None:
        """A controller went away: drop the definitions nobody else declares,
        except of types that still have resources (in a persistent namespace,
        say): those stay, marked ``orphaned``, so that their resources can
        still be found by alias and listed where they are."""
        still = {t for other in remaining for t in _defined(other)}
        for type in _defined(decl) - still:
            namespaces = self.state.namespaces_of(type)
            if not namespaces:
                self._drop(DEFINITION_NAMESPACE, DEFINITION_TYPE, type)
                continue
            try:
                spec = self.state.get(DEFINITION_NAMESPACE, DEFINITION_TYPE, type).spec
            except NotFoundError:
                continue
            self._put(DEFINITION_NAMESPACE, DEFINITION_TYPE, type,
                      {**spec, "orphaned": True, "orphaned_by": decl.name, "namespaces": namespaces})


def _defined(decl: Declaration) -> set[str]:
    return {s["type"] for s in decl.definitions if isinstance(s, dict) and isinstance(s.get("type"), str)}


def usage(pid: int) -> dict[str, Any]:
    """CPU time and memory of one process, from psutil."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            cpu = proc.cpu_times()
            mem = proc.memory_info()
        return {"cpu_seconds": round(cpu.user + cpu.system, 3), "rss_bytes": mem.rss}
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return {}
