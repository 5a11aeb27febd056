"""Who reads which events: the events socket's gatekeeper.

The events socket enforces the read rule. It is an XPUB in manual mode:
a subscription takes effect only when the supervisor's loop applies it,
through this gate. Subscribers authenticate with the PLAIN mechanism, and
the loop is their ZAP handler
(an inproc REP socket in the same context, polled like the others): the
username is the subscriber's token, or ``anonymous`` for a user client; the
reply names the connection's identity in its User-Id, which libzmq then
attaches to every subscription that connection sends. A controller's token
is accepted only from that controller's own process (the peer's pid, from
SO_PEERCRED in the ZAP address), and a connection from a controller's
process is that controller whatever it presents. Each subscription is then
checked (:func:`access.check_subscribe`) and applied, or refused and
logged; libzmq sends nothing to a connection for a topic it has not been
subscribed to.

Apart from the loop (:mod:`server`) because it is one concern with its own
state: the ZAP conversation, each connection's identity, and the alignment
of manual-mode subscriptions with the connections they came from.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from typing import Any

import zmq

from .. import wire
from ..errors import AccessDeniedError
from ..settings import Settings
from . import access, local_access, remote_access
from .access import ADMIN, USER, Caller
from .supervision import Supervision

log = logging.getLogger("cosihost.supervisor")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks (RFC 27), in this context
USER_ID, ADMIN_ID, CONTROLLER_ID = "user", "admin", "controller:"


class EventsGate:
    """Answers the events socket's ZAP requests on ``zap`` and applies or
    refuses the subscriptions that reach ``pub`` (an XPUB in manual mode)."""

    def __init__(self, *, pub: "zmq.Socket[bytes]", zap: "zmq.Socket[bytes]", settings: Settings,
                 supervision: Supervision, admin_token: str) -> None:
        self.pub, self.zap = pub, zap
        self.settings = settings
        self.supervision = supervision
        self.admin_token = admin_token
        #: Set when a subscriber sent something that is no subscription (see
        #: serve_subscriptions); cleared once the events socket's queue is empty.
        self._subs_unaligned = False
        self._refusals_logged: set[tuple[str, bytes]] = set()
        #: Serials that make each controller's events connection a User-Id of its own.
        self._connections = itertools.count(1)

    def serve_zap(self, budget: int = 64) -> None:
        """Answer the events socket's authentication requests (ZAP, RFC 27)."""
        for _ in range(budget):
            try:
                frames = self.zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                reply = self._authenticate(frames)
            except Exception:  # a bug here must not take the supervisor down
                log.exception("events authentication failed")
                reply = (b"500", b"internal error", b"")
            rid = frames[1] if len(frames) > 1 else b""
            code, text, user_id = reply
            self.zap.send_multipart([b"1.0", rid, code, text, user_id, b""])

    def _authenticate(self, frames: list[bytes]) -> tuple[bytes, bytes, bytes]:
        """(status code, status text, user id) for one ZAP request."""
        if len(frames) >= 6 and frames[2] == remote_access.ZAP_DOMAIN and self.settings.remote is not None:
            return remote_access.authenticate(self.settings.remote, frames[5], frames[6:])
        if len(frames) >= 6 and frames[2] == local_access.ZAP_DOMAIN and self.settings.access_writers is not None:
            return local_access.authenticate(frames[3], self.settings.access_writers)
        if len(frames) != 8 or frames[0] != b"1.0":
            return b"500", b"malformed ZAP request", b""
        _version, _rid, domain, address, _routing_id, mechanism, username, _password = frames
        if domain != wire.EVENTS_ZAP_DOMAIN or mechanism != b"PLAIN":
            return b"400", b"not the events socket", b""
        identity, why = self._events_identity(username, _peer_pid(address))
        if identity is None:
            self.log_refusal(("zap", username), "refused an events connection (pid %s): %s",
                              _peer_pid(address) or "?", why)
            return b"400", why.encode()[:200], b""
        return b"200", b"OK", identity.encode()

    def _events_identity(self, username: bytes, pid: int | None) -> tuple[str | None, str]:
        """Who a subscriber is, or (None, why not). A controller's process is
        that controller, whatever it presents; its token works from nowhere else."""
        admin = secrets.compare_digest(username, self.admin_token.encode())
        own = next((s for s in self.supervision.slots.values()
                    if pid is not None and s.pid == pid and s.alive()), None)
        if own is not None:
            if not own.token:
                return None, f"controller {own.name} has not registered"
            if not admin and username not in (wire.events_credentials(""), own.token.encode()):
                return None, f"controller {own.name} presented a token that is not its own"
            # One User-Id per connection: its unsubscriptions say which it was (see revocation).
            return f"{CONTROLLER_ID}{own.token}/{next(self._connections)}", ""
        if admin:
            return ADMIN_ID, ""
        if username == wire.events_credentials(""):
            return USER_ID, ""
        name = self.supervision.tokens.get(username.decode(errors="replace"))
        if name is not None:
            return None, f"the token of controller {name} works only from its own process"
        return None, "unknown or expired token"

    def _subscriber(self, identity: str) -> Caller | None:
        if identity == USER_ID:
            return USER
        if identity == ADMIN_ID:
            return ADMIN
        if identity.startswith(CONTROLLER_ID):
            return self.supervision.caller(identity[len(CONTROLLER_ID):].partition("/")[0])
        return None

    def serve_subscriptions(self, budget: int = 256) -> None:
        """Apply the subscriptions the read rule allows; refuse the others.

        In manual mode ``setsockopt(SUBSCRIBE)`` applies to the connection
        the last message read came from, which libzmq tracks in a queue that
        only subscriptions feed. Anything else a peer sends (an XSUB may send
        any message) shifts that queue against the messages: until the queue
        has been seen empty again, which connection a subscription would
        apply to is unknown, so none is applied then; the subscriber's probe
        does not come back and it subscribes again.

        A controller's grants and unsubscriptions are recorded per connection
        (its User-Id), so that a subscription revoked when its inputs shrink
        is known to be gone from all its connections (see :mod:`revocation`).
        """
        for _ in range(budget):
            try:
                frame = self.pub.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self._subs_unaligned = False
                return
            data = frame.bytes
            if not data or data[0] not in (0, 1):
                self._subs_unaligned = True
                self.log_refusal(("junk", b""), "an events subscriber sent a message that is no subscription")
                continue
            topic = data[1:]
            if self._subs_unaligned:
                log.debug("subscription change to %r dropped while subscriptions are unaligned", topic)
                continue
            try:
                identity = str(frame.get("User-Id"))
            except zmq.ZMQError:  # the ending of a connection: no metadata
                identity = ""
            token = identity[len(CONTROLLER_ID):].partition("/")[0] if identity.startswith(CONTROLLER_ID) else ""
            if data[0] == 0:
                # From the connection itself, or its ending (then it applies to nothing).
                self.pub.setsockopt(zmq.UNSUBSCRIBE, topic)
                if token:
                    self.supervision.grants.released(token, identity, topic)
                continue
            caller = self._subscriber(identity)
            try:
                if caller is None:
                    raise AccessDeniedError("its token is no longer valid")
                access.check_subscribe(caller, topic)
            except AccessDeniedError as exc:
                self.log_refusal((token or identity, topic), "refused an events subscription: %s", exc)
                continue
            self.pub.setsockopt(zmq.SUBSCRIBE, topic)
            if token:
                self.supervision.grants.granted(token, identity, topic)

    def log_refusal(self, key: tuple[str, bytes], message: str, *args: Any) -> None:
        """Log a refusal once as a warning, its repetitions at debug level."""
        if key in self._refusals_logged:
            log.debug(message, *args)
            return
        if len(self._refusals_logged) > 1024:
            self._refusals_logged.clear()
        self._refusals_logged.add(key)
        log.warning(message, *args)


def _peer_pid(address: bytes) -> int | None:
    """The peer's pid from a ZAP address: libzmq appends ``:uid:gid:pid``
    (SO_PEERCRED) to the address of an ipc peer where the OS tells it."""
    parts = address.decode(errors="replace").rsplit(":", 3)
    if len(parts) == 4 and parts[3].isdigit():
        return int(parts[3])
    return None
