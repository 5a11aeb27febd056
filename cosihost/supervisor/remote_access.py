"""Remote access: the state API over TCP, for CURVE keys with a role.

Local clients are trusted as far as the runtime directory lets them in;
a remote one is known only by the public key it proved during the CURVE
handshake, which the supervisor's ZAP handler looks up in ``[remote]``.
An unknown key, or a peer that does not speak CURVE at all, never gets a
connection. Each request is then checked against the key's role before
the usual rules apply: read (reads and watches), write (the writes a
local user may make), admin (anything, restarts and reloads included).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import zmq

from .. import wire
from ..errors import AccessDeniedError
from ..keys import KeyPair
from ..settings import RemoteAccess
from .access import ADMIN, USER, Caller

ZAP_DOMAIN = b"cosihost.remote"
#: What the ZAP handler names a remote peer: "remote:ROLE:NAME".
PREFIX = "remote:"
READ = frozenset({"get", "list", "snapshot", "snapshot_page", "since", "resume", "probe", "ping", "controllers"})
WRITE = READ | {"create", "update", "destroy", "teardown", "add_finalizer", "remove_finalizer", "transaction"}
ALLOWED = {"read": READ, "write": WRITE, "admin": WRITE | {"restart", "reload"}}


@dataclasses.dataclass(frozen=True)
class RemotePeer:
    name: str
    role: str

    @classmethod
    def parse(cls, user_id: str) -> "RemotePeer | None":
        _, _, rest = user_id.partition(PREFIX)
        role, _, name = rest.partition(":")
        return cls(name, role) if user_id.startswith(PREFIX) and role in ALLOWED else None

    def caller(self, op: str) -> Caller:
        """Who the request acts as, once its verb is allowed to the role."""
        if op not in ALLOWED[self.role]:
            raise AccessDeniedError(f"the remote key {self.name!r} has the {self.role} role: it may not {op}")
        return ADMIN if self.role == "admin" else USER


def authenticate(config: RemoteAccess, mechanism: bytes, credentials: list[bytes]) -> tuple[bytes, bytes, bytes]:
    """The ZAP answer (status code, text, user id) for a remote connection."""
    if mechanism != b"CURVE" or not credentials:
        return b"400", b"remote access speaks CURVE only", b""
    key = zmq.utils.z85.encode(credentials[0]).decode()
    found = config.clients.get(key)
    if found is None:
        return b"400", b"unknown client key", b""
    name, role = found
    return b"200", b"OK", f"{PREFIX}{role}:{name}".encode()


def bind(ctx: "zmq.Context[zmq.Socket[bytes]]", config: RemoteAccess,
         keys: KeyPair) -> tuple["zmq.Socket[bytes]", "zmq.Socket[bytes]"]:
    """The remote request (ROUTER) and event (XPUB) sockets, CURVE servers."""
    router, pub = ctx.socket(zmq.ROUTER), ctx.socket(zmq.XPUB)
    for sock in (router, pub):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_MESSAGE_BYTES)
        sock.curve_server = True
        sock.curve_publickey = keys.public.encode()
        sock.curve_secretkey = keys.secret.encode()
        sock.zap_domain = ZAP_DOMAIN
    try:
        router.bind(config.requests)
        pub.bind(config.events)
    except zmq.ZMQError:
        router.close(linger=0)  # the context cannot end while they are open
        pub.close(linger=0)
        raise
    return router, pub


def user_id(frame: Any) -> str:
    """The ZAP user id a remote request frame came with ("" if none)."""
    try:
        return str(frame.get("User-Id"))
    except zmq.ZMQError:
        return ""
