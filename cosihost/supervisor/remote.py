"""Writes to etcd namespaces (and catch-ups from etcd's history), done off
the supervisor's loop.

A write to etcd takes a network round trip, and many while a quorum is
lost: done in the loop, it would hold up every other controller (and their
heartbeats). So a backend that can keep writes in flight without a thread
each (etcd's, see :mod:`cosihost.state.etcd.pipeline`) is handed them by
:meth:`RemoteWrites.pipeline` and calls back when each is done; other work
runs on a small pool of threads. What they produce comes back to the loop
through queues: the reply to send, and the events to publish (from the
write itself, or from the etcd watch when another host wrote), in the order
they finish. The loop alone touches the sockets.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from typing import Any, Callable

from ..errors import CosiError, UnavailableError
from ..state.events import Record
from ..wire import Reply

log = logging.getLogger("cosihost.supervisor")

WORKERS = 8
#: Writes queued or running at most; more are refused at once (while etcd
#: has no quorum each one holds a worker for its whole timeout).
BACKLOG = 512

Respond = Callable[[Reply], None]
Publish = Callable[[str, str, Record], None]
#: Ends a write in flight, on any thread: its error, or how to make its result.
Answer = Callable[["BaseException | None", Callable[[], Any]], None]


def _reply(work: Callable[[], Any]) -> Reply:
    """The reply to send for ``work``'s result or error."""
    try:
        return Reply(True, "", result=work())
    except CosiError as exc:
        return Reply.error("", exc)
    except Exception as exc:  # a bug here must not take the supervisor down
        log.exception("remote write failed")
        return Reply(False, "", code="internal", message=f"internal error: {exc!r}")


def _raise(exc: BaseException) -> Any:
    raise exc


class RemoteWrites:
    """The pool, and the two queues back to the loop."""

    def __init__(self, wake: Callable[[], None], *, workers: int = WORKERS) -> None:
        self._wake = wake
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                           thread_name_prefix="cosihost-remote")
        #: Events, and None where the backend said a revision was whole.
        self._events: queue.SimpleQueue[tuple[str, str, Record] | None] = queue.SimpleQueue()
        self._replies: queue.SimpleQueue[tuple[Respond, Reply]] = queue.SimpleQueue()
        self.pending = 0
        self._local = threading.local()
        #: Events received since the backend last said a revision was whole.
        self._held: list[tuple[str, str, Record]] = []

    def on_event(self, namespace: str, type: str, record: Record) -> None:
        """State hook of a remote backend (any thread): publish from the loop."""
        self._events.put((namespace, type, record))

    def on_changes_done(self) -> None:
        """The backend's events so far end on a whole revision: the loop may
        publish them (all in one turn, so that a transaction's frames name
        each other). A pool thread's own write needs no wake-up: its
        reply's wake-up follows, and the loop publishes queued events before
        replies."""
        self._events.put(None)
        if not getattr(self._local, "writing", False):
            self._wake()

    def _admit(self) -> None:
        if self.pending >= BACKLOG:
            raise UnavailableError(f"{self.pending} writes to remote namespaces are waiting already; "
                                   "try again later")
        self.pending += 1

    def submit(self, work: Callable[[], Any], respond: Respond) -> None:
        """Run ``work`` on the pool; its result (or error) is the reply."""
        self._admit()

        def run() -> None:
            self._local.writing = True
            self._replies.put((respond, _reply(work)))
            self._wake()

        self._pool.submit(run)

    def pipeline(self, start: Callable[[Answer], None], respond: Respond) -> None:
        """``start(answer)`` sends a write that needs no thread of ours;
        ``answer(error, result)`` (on any thread, at most once) ends it:
        ``result()`` makes the reply's result there."""
        self._admit()

        def answer(error: BaseException | None, result: Callable[[], Any]) -> None:
            self._replies.put((respond, _reply(result if error is None else lambda: _raise(error))))
            self._wake()

        try:
            start(answer)
        except BaseException:
            self.pending -= 1
            raise

    def drain(self, publish: Publish) -> None:
        """In the loop: publish the events of whole revisions first (a
        write's event goes out with or before its reply), then answer
        finished writes. Events after the last revision boundary wait for
        it, but not past the next drain (a backend that never says so)."""
        items, self._held = self._held, []
        whole = len(items)  # held since the last drain: out now, whatever comes
        while True:
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                break
            if item is None:
                whole = len(items)
            else:
                items.append(item)
        for item in items[:whole]:
            publish(*item)
        self._held = items[whole:]
        while True:
            try:
                respond, reply = self._replies.get_nowait()
            except queue.Empty:
                return
            self.pending -= 1
            respond(reply)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
