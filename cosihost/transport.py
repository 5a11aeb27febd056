"""The two socket roles of a supervisor's peer, shared by clients and controllers.

:class:`Requester` is the ZeroMQ Guide's "Lazy Pirate": a REQ socket that
gives up on a reply after a timeout, closes, reopens and resends the same
request id, so a lost reply never wedges the caller and the supervisor can
answer a retried write from its reply cache instead of applying it twice.

:class:`Subscriber` is the subscribing half of the "Clone" pattern: it
subscribes to a kind's topic and then proves the subscription has reached
the publisher (a probe published on that topic comes back) before the
caller takes a snapshot, so no event can fall between snapshot and stream.
It authenticates with the caller's token (PLAIN username), and the
supervisor applies a subscription only if that caller may read the kind:
one it refuses never brings its probe back.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
import uuid
from typing import Any

import zmq

from . import wire
from .frames import has_input
from .keys import ClientKey
from .errors import AccessDeniedError, ThrottledError, UnavailableError, error_from_code


def endpoint(runtime_dir: str | os.PathLike[str], name: str) -> str:
    return f"ipc://{os.path.join(os.fspath(runtime_dir), name)}"


class Requester:
    """Request/reply with timeout, reopen and retry (Lazy Pirate)."""

    #: The socket type: REQ here, one request in flight; DEALER for a
    #: :class:`cosihost.pipeline.Pipeline`, several.
    SOCKET = zmq.REQ

    def __init__(self, ctx: "zmq.Context[zmq.Socket[bytes]]", address: str, *, token: str = "",
                 timeout: float = 5.0, retries: int = 3, curve: "ClientKey | None" = None) -> None:
        self.address = address
        self.token = token
        self.curve = curve
        self.timeout = timeout
        self.retries = retries
        self._ctx = ctx
        self._prefix = uuid.uuid4().hex[:10]
        self._counter = 0
        self._sock: "zmq.Socket[bytes] | None" = None
        #: Requests sent again after a reply did not come in time.
        self.resent = 0

    def _open(self) -> "zmq.Socket[bytes]":
        sock = self._ctx.socket(self.SOCKET)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_MESSAGE_BYTES)
        if self.curve is not None:
            self.curve.apply(sock)
        sock.connect(self.address)
        return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def call(self, op: str, **args: Any) -> Any:
        """Send one request and return its result, or raise its typed error.
        A write refused for a controller's rate limit was not applied: it is
        sent again (as a new request) once the limit allows."""
        while True:
            try:
                return self._call(op, args)
            except ThrottledError as exc:
                time.sleep(exc.retry_after)  # the supervisor said how long; nothing to wait on instead

    def _call(self, op: str, args: dict[str, Any]) -> Any:
        self._counter += 1
        req = wire.Request(op, args, f"{self._prefix}-{self._counter}", self.token)
        frame = wire.encode_request(req)
        for _attempt in range(self.retries + 1):
            if self._sock is None:
                self._sock = self._open()
            self._sock.send(frame)
            if self._sock.poll(int(self.timeout * 1000), zmq.POLLIN):
                reply = wire.decode_reply(self._sock.recv())
                if reply.ok:
                    return reply.result
                if reply.code == ThrottledError.code:
                    raise ThrottledError(reply.message, retry_after=reply.retry_after or 0.01)
                raise error_from_code(reply.code, reply.message)
            self.close()  # the socket is stuck in "awaiting reply": reopen
            self.resent += 1
        raise UnavailableError(
            f"no answer from the supervisor at {self.address} after "
            f"{self.retries + 1} tries of {self.timeout:g} s ({op})")


class Subscriber:
    """A SUB socket whose subscriptions are proven live before use.

    ``token`` is the caller's (a controller's, the admin's, or "" for a
    user client): the events socket knows its subscribers by it.
    """

    #: Seconds without the probe after which the subscription is sent again
    #: (the supervisor drops subscriptions it cannot place; see its server).
    RESEND_AFTER = 1.0

    def __init__(self, ctx: "zmq.Context[zmq.Socket[bytes]]", address: str, *, token: str = "", hwm: int = 100_000,
                 curve: "ClientKey | None" = None) -> None:
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        self.sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_MESSAGE_BYTES)
        if curve is not None:  # a remote supervisor: its key, and ours, say who we are
            curve.apply(self.sock)
        else:
            credentials = wire.events_credentials(token)
            self.sock.setsockopt(zmq.PLAIN_USERNAME, credentials)
            self.sock.setsockopt(zmq.PLAIN_PASSWORD, credentials)
        self.sock.connect(address)
        self._queued: collections.deque[tuple[bytes, wire.EventBatch]] = collections.deque()
        #: Published frames dropped as malformed.
        self.rejected = 0

    def close(self) -> None:
        self.sock.close(linger=0)

    def subscribe(self, requester: Requester, namespace: str, type: str, *,
                  timeout: float = 10.0) -> None:
        """Subscribe and wait until a probe on the topic comes back.

        Raises AccessDeniedError when the caller may not read the kind: at
        once if the probe request says so, else once ``timeout`` has passed
        with the supervisor answering but never applying the subscription.
        """
        topic = wire.topic(namespace, type)
        self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        nonce = uuid.uuid4().hex
        deadline = time.monotonic() + timeout
        resend = time.monotonic() + self.RESEND_AFTER
        wait = 0.001  # doubled up to 0.2 s: a new connection is live after its handshake
        try:
            while time.monotonic() < deadline:
                requester.call("probe", topic=topic, nonce=nonce)
                if self._await_probe(nonce, min(wait, max(0.0, deadline - time.monotonic()))):
                    return
                wait = min(0.2, wait * 2)
                if time.monotonic() >= resend:
                    self.sock.setsockopt(zmq.UNSUBSCRIBE, topic)
                    self.sock.setsockopt(zmq.SUBSCRIBE, topic)
                    resend = time.monotonic() + self.RESEND_AFTER
        except BaseException:
            self.sock.setsockopt(zmq.UNSUBSCRIBE, topic)
            raise
        self.sock.setsockopt(zmq.UNSUBSCRIBE, topic)
        raise AccessDeniedError(
            f"the supervisor did not apply the subscription to {namespace}/{type} within {timeout:g} s "
            "though it answered every probe request: the events socket refused it (this process "
            "is not authorized to read the kind, or its credentials were refused); see the "
            "supervisor's log")

    def unsubscribe(self, namespace: str, type: str) -> None:
        self.sock.setsockopt(zmq.UNSUBSCRIBE, wire.topic(namespace, type))

    def _await_probe(self, nonce: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                return False
            topic, msg = self._recv_raw()
            if isinstance(msg, wire.ProbeMessage):
                if msg.nonce == nonce:
                    return True
            elif msg is not None:
                self._queued.append((topic, msg))

    def _recv_raw(self) -> tuple[bytes, wire.EventBatch | wire.ProbeMessage | None]:
        frames = self.sock.recv_multipart()
        if len(frames) != 2:
            self.rejected += 1
            return b"", None
        try:
            return frames[0], wire.decode_published(frames[1])
        except wire.WireError:
            self.rejected += 1
            return frames[0], None

    def recv(self, timeout: float | None) -> tuple[bytes, wire.EventBatch] | None:
        """The next frame of events (topic, batch), or None on timeout. Probes
        and malformed frames are skipped."""
        if self._queued:
            return self._queued.popleft()
        if timeout == 0:  # the drain after an event: no Poller needed to ask
            while has_input(self.sock):
                topic, msg = self._recv_raw()
                if isinstance(msg, wire.EventBatch):
                    return topic, msg
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self.sock.poll(None if remaining is None else int(remaining * 1000), zmq.POLLIN):
                return None
            topic, msg = self._recv_raw()
            if isinstance(msg, wire.EventBatch):
                return topic, msg
            if deadline is not None and time.monotonic() >= deadline:
                return None


@dataclasses.dataclass
class Snapshot:
    """A kind's items at one sequence number, and the bookmark of it."""

    epoch: str
    seq: int
    items: list[tuple[str, bytes]]
    mark: str | None = None


def fetch_snapshot(requester: Requester, namespace: str, type: str, *,
                   id: str | None = None) -> Snapshot:
    """A kind's items at one sequence number, all pages of them."""
    args: dict[str, Any] = {"namespace": namespace, "type": type}
    if id is not None:
        args["id"] = id
    reply = requester.call("snapshot", **args)
    items = [(rid, blob) for rid, blob in reply["items"]]
    cursor = reply.get("next")
    while cursor is not None:
        page = requester.call("snapshot_page", cursor=cursor)
        items.extend((rid, blob) for rid, blob in page["items"])
        cursor = page.get("next")
    return Snapshot(reply["epoch"], reply["seq"], items, reply.get("mark"))
