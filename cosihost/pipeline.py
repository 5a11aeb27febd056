"""Several requests in flight on one socket: a controller's pipelined writes.

A :class:`~cosihost.transport.Requester` waits for each reply before the
next request, so a reconcile that writes fifty resources pays fifty round
trips through two processes. A :class:`Pipeline` sends each request at once
on a DEALER socket and matches the replies, which come back in order, to
their requests by request id; the caller waits only when it needs an answer
(:meth:`Pipeline.wait`, :meth:`Pipeline.flush`, or :meth:`call`, which is
the Requester's call: send, then wait).

Lazy Pirate holds for every request in flight. When no reply at all has come
for ``timeout`` seconds while requests wait, the socket is closed, a new one
opened, and every unanswered request is sent again, in its original order,
with its original id. The supervisor answers an id it has seen from its
reply cache, so none is applied twice. Order is kept too: the supervisor
reads both connections' copies in their order, so whichever copy of a
request comes first, the first copies of all of them come in the order they
were sent, and the first copy is the one applied. After ``retries`` such
rounds every request still waiting fails with UnavailableError.

At most ``window`` requests wait at once (a send beyond that waits for the
oldest replies), which bounds what the supervisor must remember for a resend.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import zmq

from . import wire
from .frames import has_input, send_frames
from .errors import ThrottledError, UnavailableError, error_from_code
from .transport import Requester

#: Requests a Pipeline has in flight at most (the raw DEALER baseline uses as many).
WINDOW = 64
#: Requests sent in one message at most.
BATCH = 16
#: Seconds a request may be held back for the next ones, counted from the
#: last message sent: only a caller writing in a tight loop is batched.
HOLD = 0.0002


@dataclasses.dataclass(eq=False)
class Pending:
    """One request sent and, once it came, its reply."""

    rid: str
    op: str
    frame: bytes
    #: Called with this Pending when its reply (or its final failure) arrives.
    on_reply: Callable[["Pending"], None] | None = None
    reply: wire.Reply | None = None


class Pipeline(Requester):
    """A DEALER requester with up to ``window`` requests in flight."""

    SOCKET = zmq.DEALER

    def __init__(self, ctx: "zmq.Context[zmq.Socket[bytes]]", address: str, *, window: int = WINDOW,
                 **options: Any) -> None:
        super().__init__(ctx, address, **options)
        self.window = max(1, window)
        #: Requests without a reply, in the order they were sent.
        self._waiting: dict[str, Pending] = {}
        #: Requests not sent yet (the last of ``_waiting``): they go together.
        self._outbox: list[bytes] = []
        #: When the last reply came (or the first request after a quiet time went).
        self._heard = 0.0
        #: When the outbox was last sent.
        self._pushed = 0.0
        self._rounds = 0  # resends in a row without a reply

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    def _socket(self) -> "zmq.Socket[bytes]":
        if self._sock is None:
            self._sock = self._open()
        return self._sock

    def send(self, op: str, args: dict[str, Any], *,
             on_reply: Callable[[Pending], None] | None = None) -> Pending:
        """Send a request; its reply is matched to it when it comes (replies
        are taken when the window is full, when waiting, or at the next send).
        Nagle's rule, for bursts only: when everything sent so far is
        answered, or the last message went more than ``HOLD`` ago, it goes
        at once; else it waits in an outbox until the next send finds one
        of those so, ``BATCH`` are there or the caller waits for a reply,
        and they go in one message."""
        while len(self._waiting) >= self.window:
            self._await_reply()
        self._counter += 1
        rid = f"{self._prefix}-{self._counter}"
        frame = wire.encode_request(wire.Request(op, args, rid, self.token, batch=True))
        pending = Pending(rid, op, frame, on_reply)
        if self._waiting:
            self.take_replies()
        if not self._waiting:
            self._heard = time.monotonic()
        self._waiting[rid] = pending
        self._outbox.append(frame)
        if (len(self._waiting) == len(self._outbox) or len(self._outbox) >= BATCH
                or time.monotonic() - self._pushed > HOLD):
            self.push()  # nothing on the wire unanswered, a full batch, or not a burst
        return pending

    def push(self) -> None:
        """Send what waits in the outbox: one request alone, several as a batch."""
        outbox = self._outbox
        if not outbox:
            return
        sock = self._socket()
        if len(outbox) == 1:
            send_frames(sock, (b"", outbox[0]))
        else:
            send_frames(sock, [b"", wire.BATCH, *outbox])
        outbox.clear()
        self._pushed = time.monotonic()

    def take_replies(self) -> None:
        """Take the replies that have arrived, without waiting."""
        sock = self._sock
        while sock is not None and has_input(sock):
            self._take(sock)

    def wait(self, pending: Pending) -> wire.Reply:
        while pending.reply is None:
            self._await_reply()
        return pending.reply

    def flush(self) -> None:
        """Wait until every request sent so far has its reply."""
        while self._waiting:
            self._await_reply()

    def _call(self, op: str, args: dict[str, Any]) -> Any:
        reply = self.wait(self.send(op, args))
        if reply.ok:
            return reply.result
        if reply.code == ThrottledError.code:
            raise ThrottledError(reply.message, retry_after=reply.retry_after or 0.01)
        raise error_from_code(reply.code, reply.message)

    def _take(self, sock: "zmq.Socket[bytes]") -> None:
        """One message: the replies to one turn of the supervisor's loop."""
        frames = sock.recv_multipart()
        if len(frames) < 2 or frames[0] != b"":
            return  # not a reply envelope: nothing to match
        for frame in frames[1:]:
            try:
                reply = wire.decode_reply(frame)
            except wire.WireError:
                continue
            pending = self._waiting.pop(reply.rid, None)
            if pending is None:
                continue  # a second answer to a resent request
            self._heard = time.monotonic()
            self._rounds = 0
            self._settle(pending, reply)

    @staticmethod
    def _settle(pending: Pending, reply: wire.Reply) -> None:
        pending.reply = reply
        if pending.on_reply is not None:
            pending.on_reply(pending)

    def _await_reply(self) -> None:
        """Take at least one reply, or, after ``timeout`` of silence, resend
        everything unanswered on a new socket (or fail it after ``retries``)."""
        self.push()
        sock = self._socket()
        # Replies that came while the caller was busy count, however late it looks.
        remaining = max(0.0, self._heard + self.timeout - time.monotonic())
        if sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
            self.take_replies()
            return
        if time.monotonic() < self._heard + self.timeout:
            return
        self._rounds += 1
        if self._rounds > self.retries:
            self._fail_all()
            return
        self.close()
        self.resent += len(self._waiting)
        for pending in list(self._waiting.values()):
            self._outbox.append(pending.frame)
            if len(self._outbox) >= BATCH:
                self.push()
        self.push()
        self._heard = time.monotonic()

    def _fail_all(self) -> None:
        waiting, self._waiting = self._waiting, {}
        self._outbox.clear()
        self._rounds = 0
        self.close()  # a later request starts on a fresh socket
        for pending in waiting.values():
            self._settle(pending, wire.Reply(
                False, pending.rid, code=UnavailableError.code,
                message=f"no answer from the supervisor at {self.address} after {self.retries + 1} "
                        f"tries of {self.timeout:g} s ({pending.op})"))
