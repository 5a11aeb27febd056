"""The common ground of the request verbs, so that they can live apart from
the entry point that dispatches to them.

The verbs are methods of :class:`~.api.Api`, gathered from a few mixins
(:mod:`.state_verbs`, :mod:`.sync_verbs`, :mod:`.control_verbs`), each one
concern. What they all rely on is here: what they need from the supervisor
(:class:`Host`), how a handler answers later (:data:`Respond`,
:class:`Deferred`), the attributes :class:`~.api.Api` gives them
(:class:`Verbs`), where their work runs (:meth:`Verbs._off_loop`) and how a
request names a kind or a resource.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

from ..resource import check_name
from ..state.events import Record
from ..state.router import NamespaceRouter
from ..wire import Reply
from .access import Caller
from .registry import Registry
from .remote import Answer
from .replies import InOrder

if TYPE_CHECKING:
    from .sync_verbs import SnapshotPages

#: Sends the reply of a deferred request (restart, reload) when it is ready.
Respond = Callable[[Reply], None]


class Host(Protocol):
    """What the API needs from the supervisor beyond the state."""

    registry: Registry
    ready: bool
    #: Where metrics are served (HOST:PORT), or None.
    metrics_address: str | None

    def caller(self, token: str) -> Caller | None: ...
    def register(self, args: dict[str, Any]) -> dict[str, Any]: ...
    def heartbeat(self, caller: Caller, args: dict[str, Any]) -> None: ...
    def throttle(self, caller: Caller, writes: int) -> float: ...
    def write_limited(self, name: str) -> bool: ...
    def update_inputs(self, caller: Caller, inputs: Any) -> None: ...
    def restart(self, name: str, respond: Respond) -> None: ...
    def reload(self, respond: Respond) -> None: ...
    def offload(self, work: Callable[[], Any], respond: Respond) -> None: ...
    def pipeline(self, start: Callable[[Answer], None], respond: Respond) -> None: ...
    def controllers(self) -> list[bytes]: ...
    def summary(self) -> str: ...


class Deferred(Exception):
    """Raised by a handler whose reply will come later through ``respond``."""


def key_of(args: dict[str, Any]) -> tuple[str, str, str]:
    """A request's (namespace, type, id), each checked as a name."""
    ns, typ, rid = args["namespace"], args["type"], args["id"]
    check_name("namespace", ns)
    check_name("type", typ)
    check_name("id", rid)
    return ns, typ, rid


def kind_of(args: dict[str, Any]) -> tuple[str, str]:
    """A request's (namespace, type), each checked as a name."""
    check_name("namespace", args["namespace"])
    check_name("type", args["type"])
    return args["namespace"], args["type"]


class Verbs:
    """What the verb mixins share; :class:`~.api.Api` sets it all up."""

    state: NamespaceRouter
    host: Host
    last_record: Record | None
    #: Retries answered from the reply cache (``ping`` tells).
    replayed: int
    _snapshots: SnapshotPages
    #: Off-loop writes of controllers, each controller's in the order they came.
    _in_order: InOrder
    #: The controller whose request is being handled (its token), or None.
    _controller: str | None

    def _off_loop(self, namespace: str, later: Callable[[], Respond], work: Callable[[], Any]) -> Any:
        """``work()`` now, or, where the namespace is kept elsewhere (it may
        wait on the network), on the host's pool with the answer later."""
        if not self.state.remote(namespace):
            return work()
        if self._controller is not None:
            self._in_order.submit(self._controller, work, later())
        else:
            self.host.offload(work, later())
        raise Deferred
