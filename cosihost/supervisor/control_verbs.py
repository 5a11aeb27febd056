"""The host verbs: a controller's life and the operator's control of the
supervisor.

A controller registers, sends heartbeats, updates its inputs and asks where
its outputs live; an operator pings, lists the controllers, restarts one or
reloads the configuration (those two answer later, when done). None of these
touch resources, so they live apart from the state verbs. A mixin of
:class:`~.api.Api`.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from .. import wire
from ..errors import AccessDeniedError, InvalidRequestError
from . import access
from .access import Caller
from .status import STATUS_NAMESPACE, STATUS_TYPE
from .verbs import Deferred, Respond, Verbs


class ControlVerbs(Verbs):
    """register, update_inputs, owned_kinds, heartbeat, ping, controllers, restart, reload."""

    def op_register(self, caller: Caller, args: dict[str, Any], _r: Any) -> dict[str, Any]:
        """The controller's token; ``pipelined``: whether it may keep several
        writes in flight (not under a write rate limit, which would refuse them)."""
        registered = self.host.register(args)
        return {**registered, "pipelined": not self.host.write_limited(args["name"])}

    def op_update_inputs(self, caller: Caller, args: dict[str, Any], _r: Any) -> None:
        if caller.decl is None:
            raise AccessDeniedError("only controllers have inputs")
        self.host.update_inputs(caller, args["inputs"])

    def op_owned_kinds(self, caller: Caller, args: dict[str, Any], _r: Any) -> list[list[str]]:
        """Where the calling controller owns outputs, in any namespace, so that
        its first cleanup after a restart sees what its last life wrote."""
        if caller.decl is None:
            raise AccessDeniedError("only controllers own outputs")
        types = {o.type for o in caller.decl.outputs}
        return [list(kind) for kind in self.state.owned_kinds(caller.decl.name, types)]

    def op_heartbeat(self, caller: Caller, args: dict[str, Any], _r: Any) -> dict[str, Any]:
        if caller.decl is None:
            raise AccessDeniedError("only controllers send heartbeats")
        kinds = args.get("kinds") or []
        if not isinstance(kinds, list):
            raise InvalidRequestError("heartbeat: kinds must be a list of [namespace, type, seq]")
        self.host.heartbeat(caller, args)
        heads = []
        for entry in kinds:
            if isinstance(entry, list) and len(entry) == 3:
                ns, typ = entry[0], entry[1]
                if isinstance(ns, str) and isinstance(typ, str) and caller.decl.reads(ns, typ):
                    heads.append([ns, typ, self.state.head(ns, typ)])
        return {"heads": heads}

    def op_ping(self, caller: Caller, args: dict[str, Any], _r: Any) -> dict[str, Any]:
        return {"epoch": self.state.epoch, "protocol": wire.PROTOCOL, "caller": caller.describe(),
                "ready": self.host.ready, "pid": os.getpid(), "replayed": self.replayed,
                "summary": self.host.summary(), "metrics": self.host.metrics_address}

    def op_controllers(self, caller: Caller, args: dict[str, Any], _r: Any) -> list[bytes]:
        access.check_read(caller, STATUS_NAMESPACE, STATUS_TYPE)
        return self.host.controllers()

    def op_restart(self, caller: Caller, args: dict[str, Any], later: Callable[[], Respond]) -> None:
        if caller.decl is not None:
            raise AccessDeniedError("controllers cannot restart controllers")
        name = args["name"]
        if not isinstance(name, str):
            raise InvalidRequestError("name must be a string")
        self.host.restart(name, later())
        raise Deferred

    def op_reload(self, caller: Caller, args: dict[str, Any], later: Callable[[], Respond]) -> None:
        if caller.decl is not None:
            raise AccessDeniedError("controllers cannot reload the supervisor")
        self.host.reload(later())
        raise Deferred
