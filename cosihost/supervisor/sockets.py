"""The supervisor's sockets, made and bound in one place.

The order matters: the ZAP handler is bound before the events socket, so
no subscriber connects before the gate can be asked about it; stale socket
files of a supervisor that died are removed only once the runtime folder's
lock says none runs. The options are the wire's limits: the largest
request a peer may send, the largest subscription, a manual XPUB (every
subscription comes up to the loop to be allowed or refused) and PLAIN with
ZAP on the events socket, so each connection says which token it holds.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import zmq

from .. import wire
from ..errors import InvalidRequestError
from ..keys import server_keys
from ..settings import Settings
from . import local_access, remote_access
from .events_gate import ZAP_ENDPOINT

log = logging.getLogger("cosihost.supervisor")

@dataclasses.dataclass
class Sockets:
    router: "zmq.Socket[bytes]"
    zap: "zmq.Socket[bytes]"
    pub: "zmq.Socket[bytes]"
    remote_router: "zmq.Socket[bytes] | None" = None
    remote_pub: "zmq.Socket[bytes] | None" = None

    def close(self) -> None:
        for sock in (self.router, self.pub, self.zap, self.remote_router, self.remote_pub):
            if sock is not None:
                sock.close(linger=0)


def bind(ctx: "zmq.Context[zmq.Socket[bytes]]", settings: Settings, *,
         before_bind: Callable[["zmq.Socket[bytes]"], None] | None = None) -> Sockets:
    """The request and events sockets in the runtime folder (and the remote
    ones when ``[remote]`` is set). ``before_bind`` sees the events socket
    before anyone can connect to it (the metrics count subscribers)."""
    made: list["zmq.Socket[bytes]"] = []
    try:
        return _bind(ctx, settings, made, before_bind)
    except BaseException:
        for sock in made:  # the context cannot end while any is open
            sock.close(linger=0)
        raise


def _bind(ctx: "zmq.Context[zmq.Socket[bytes]]", settings: Settings, made: list["zmq.Socket[bytes]"],
          before_bind: Callable[["zmq.Socket[bytes]"], None] | None) -> Sockets:
    def socket(kind: int) -> "zmq.Socket[bytes]":
        sock = ctx.socket(kind)
        made.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        return sock

    rd = settings.runtime_dir
    router = socket(zmq.ROUTER)
    router.setsockopt(zmq.MAXMSGSIZE, wire.MAX_MESSAGE_BYTES)
    zap = socket(zmq.REP)  # first: no subscriber may connect before it can be asked about
    zap.bind(ZAP_ENDPOINT)
    pub = socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, settings.timing.publisher_hwm)
    pub.setsockopt(zmq.MAXMSGSIZE, wire.MAX_SUBSCRIPTION_BYTES)
    pub.setsockopt(zmq.XPUB_MANUAL, 1)  # every (un)subscription comes up to the loop
    pub.setsockopt(zmq.PLAIN_SERVER, 1)
    pub.setsockopt(zmq.ZAP_DOMAIN, wire.EVENTS_ZAP_DOMAIN)
    for name in (wire.API_SOCKET, wire.EVENTS_SOCKET):
        path = rd / name
        if path.exists():
            path.unlink()  # stale, from a supervisor that died; the lock says none runs
    if before_bind is not None:
        before_bind(pub)
    if settings.access_writers is not None:  # who each local connection is: ZAP
        router.setsockopt(zmq.ZAP_DOMAIN, local_access.ZAP_DOMAIN)
    router.bind(f"ipc://{rd / wire.API_SOCKET}")
    pub.bind(f"ipc://{rd / wire.EVENTS_SOCKET}")
    sockets = Sockets(router, zap, pub)
    if settings.remote is not None:
        sockets.remote_router, sockets.remote_pub = _bind_remote(ctx, settings)
    return sockets


def _bind_remote(ctx: "zmq.Context[zmq.Socket[bytes]]",
                 settings: Settings) -> tuple["zmq.Socket[bytes]", "zmq.Socket[bytes]"]:
    config = settings.remote
    assert config is not None
    keys = server_keys(settings.state_dir)
    try:
        router, pub = remote_access.bind(ctx, config, keys)
    except zmq.ZMQError as exc:
        raise InvalidRequestError(f"[remote] listen {config.requests} (events on port {config.port + 1}): "
                                  f"{exc}") from None
    log.info("remote access on %s and %s (CURVE; server key %s; %d client key(s))",
             config.requests, config.events, keys.public, len(config.clients))
    return router, pub
