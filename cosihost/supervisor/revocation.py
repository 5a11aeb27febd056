"""Taking back event subscriptions when a controller's inputs shrink.

The events socket is an XPUB in manual mode (see ``server``): the
supervisor can apply or remove a subscription only for the connection the
last message it read came from. It therefore cannot cut one connection's
topic on its own. What it can do is refuse every further subscription to a
kind the controller may no longer read, wait for the controller to
unsubscribe, and restart the controller if it does not: the process ends,
and with it every connection it had.

To know when a revoked topic is really gone, every subscription granted to
a controller is recorded per connection. Each events connection gets its
own User-Id at its handshake (the controller's token and a serial), so an
unsubscription names the connection it came from and a second connection
cannot keep a topic alive that the first gave up. A connection that ends
without unsubscribing first is reported by libzmq without its User-Id; it
cannot be told from the others, so it is counted as still holding its
topics (the worker runtime always unsubscribes; a controller that closes a
connection holding a revoked topic instead is restarted at the deadline).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable


@dataclasses.dataclass
class Revocation:
    """A topic a controller must give up by ``deadline`` (monotonic seconds)."""

    token: str
    topic: bytes
    deadline: float


class Grants:
    """Who holds which subscription, and which must be given up by when."""

    def __init__(self) -> None:
        #: token -> topic -> the connections (User-Ids) it was granted to.
        self._held: dict[str, dict[bytes, set[str]]] = {}
        self._pending: dict[tuple[str, bytes], Revocation] = {}

    def granted(self, token: str, connection: str, topic: bytes) -> None:
        self._held.setdefault(token, {}).setdefault(topic, set()).add(connection)

    def released(self, token: str, connection: str, topic: bytes) -> None:
        """An unsubscription from ``connection`` (a controller of ``token``)."""
        topics = self._held.get(token, {})
        holders = topics.get(topic)
        if holders is None:
            return
        holders.discard(connection)
        if not holders:
            del topics[topic]
            self._pending.pop((token, topic), None)

    def holders(self, token: str, topic: bytes) -> int:
        """How many of the controller's connections hold ``topic``."""
        return len(self._held.get(token, {}).get(topic, ()))

    def shrink(self, token: str, allowed: Callable[[bytes], bool], *, within: float) -> list[bytes]:
        """After the controller's inputs changed: every held topic it may no
        longer read must be given up within ``within`` seconds (a topic
        already pending keeps its deadline; one allowed again is forgiven).
        Returns the topics newly pending."""
        deadline = time.monotonic() + within
        added = []
        for topic in list(self._held.get(token, {})):
            key = (token, topic)
            if allowed(topic):
                self._pending.pop(key, None)
            elif key not in self._pending:
                self._pending[key] = Revocation(token, topic, deadline)
                added.append(topic)
        return added

    def overdue(self, now: float) -> list[Revocation]:
        """The revocations past their deadline (forgotten once returned)."""
        due = [r for r in self._pending.values() if r.deadline <= now]
        for r in due:
            del self._pending[(r.token, r.topic)]
        return due

    def next_deadline(self) -> float | None:
        return min((r.deadline for r in self._pending.values()), default=None)

    def forget(self, token: str) -> None:
        """The controller's process is gone, and its connections with it."""
        self._held.pop(token, None)
        for key in [k for k in self._pending if k[0] == token]:
            del self._pending[key]
