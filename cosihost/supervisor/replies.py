"""What makes a resent write safe: answers remembered per caller, and one
caller's writes kept in order when they run off the loop.

A write's reply is remembered by (caller, request id), so a resend (Lazy
Pirate) gets the first answer instead of being applied again. A controller
keeps up to a window of writes in flight (:mod:`cosihost.pipeline`) and
resends only those it has no reply for, so the replies it may ask for again
are among its own last ``window``. With one cache shared by everyone, other
controllers' writes could push those out before the resend came (sixteen
busy writers fill thousands of entries in a fraction of the usual timeout);
kept per caller, only the caller's own later writes can. User clients share
one bucket (they have no token to tell them apart), as large as the single
cache used to be.

A write to a namespace kept elsewhere (etcd) runs on a pool of threads, off
the loop. Two writes of one controller in flight together could then run in
either order; :class:`InOrder` starts a controller's next such write only
when its previous one has answered, so writes to the same resource apply in
the order they were sent, as they do on the loop.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

from ..errors import CosiError
from ..wire import Reply

Key = tuple[str, str]
Respond = Callable[[Reply], None]
Offload = Callable[[Callable[[], Any], Respond], None]

#: Answers kept for one controller: two of its windows (64 in flight). A
#: pipelined write asks for a brief answer (its sequence number), so they are small.
PER_CALLER = 128
#: Answers kept for all user clients together (they share the anonymous token).
USERS = 4096
#: Callers remembered at most; the one heard from longest ago goes first.
CALLERS = 256


class ReplyCache:
    """Encoded replies of answered writes, with a digest of their request."""

    def __init__(self, *, per_caller: int = PER_CALLER, users: int = USERS, callers: int = CALLERS) -> None:
        self._per_caller = per_caller
        self._users = users
        self._callers = callers
        self._by_caller: collections.OrderedDict[str, collections.OrderedDict[str, tuple[bytes, bytes]]] = \
            collections.OrderedDict()

    def get(self, key: Key) -> tuple[bytes, bytes] | None:
        bucket = self._by_caller.get(key[0])
        return None if bucket is None else bucket.get(key[1])

    def __contains__(self, key: Key) -> bool:
        return self.get(key) is not None

    def put(self, key: Key, digest: bytes, encoded: bytes) -> None:
        caller, rid = key
        bucket = self._by_caller.get(caller)
        if bucket is None:
            bucket = self._by_caller[caller] = collections.OrderedDict()
            if len(self._by_caller) > self._callers:
                self._by_caller.popitem(last=False)
        else:
            self._by_caller.move_to_end(caller)
        bucket[rid] = (digest, encoded)
        if len(bucket) > (self._users if caller == "" else self._per_caller):
            bucket.popitem(last=False)


class InOrder:
    """Off-loop writes of each controller, run one at a time in arrival order."""

    def __init__(self, offload: Offload) -> None:
        self._offload = offload
        self._queued: dict[str, collections.deque[tuple[Callable[[], Any], Respond]]] = {}

    def submit(self, caller: str, work: Callable[[], Any], respond: Respond) -> None:
        queued = self._queued.get(caller)
        if queued is not None:
            queued.append((work, respond))
            return
        self._queued[caller] = collections.deque()
        self._start(caller, work, respond)

    def _start(self, caller: str, work: Callable[[], Any], respond: Respond) -> None:
        while True:
            try:
                self._offload(work, lambda reply: self._done(caller, respond, reply))
                return
            except CosiError as exc:  # refused at once (the pool's backlog is full)
                respond(Reply.error("", exc))
            queued = self._queued[caller]
            if not queued:
                del self._queued[caller]
                return
            work, respond = queued.popleft()

    def _done(self, caller: str, respond: Respond, reply: Reply) -> None:
        respond(reply)
        queued = self._queued[caller]
        if queued:
            self._start(caller, *queued.popleft())
        else:
            del self._queued[caller]
