"""``cosihost.Client``: the state API of a running supervisor, over the wire.

Same verbs and signatures as :class:`cosihost.state.InMemoryState`, so code
and tests move between the two unchanged. Each thread gets its own request
socket (ZeroMQ sockets are not thread-safe); each watch gets its own
subscriber and requester, so a watch may be iterated in any one thread.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import zmq

from . import wire
from .keys import ClientKey
from .errors import CosiError, InvalidRequestError, OverrunError, UnavailableError
from .resource import PHASE_RUNNING, Resource, check_name, unpack, validate
from .selectors import parse_query
from .settings import default_runtime_dir, parse_listen, remote_endpoints
from .state.inmemory import recorded_in_transaction
from .state.modify import modify_spec
from .state.watchfor import watch_for
from .state.txn import Op, Transaction, committed, open_transaction, outside_transaction, teardown_and_destroy
from .state.events import (BOOTSTRAPPED, CREATED, DESTROYED, ERROR, MAX_BATCH, AggregatedWatch, Event, EventStream,
                           Record, decode, kind_translator, make_bookmark, parse_bookmark, since_bookmark)
from .transport import Requester, Subscriber, endpoint, fetch_snapshot


class Client:
    """A client of the supervisor serving ``runtime_dir``.

    ``admin=True`` authenticates with the runtime directory's admin token
    (readable only by the supervisor's user), which may act as any owner.
    ``remote="tcp://HOST:PORT", key=FILE`` talks to a supervisor on another
    machine over CURVE instead, as the role its config gives the key.
    """

    def __init__(self, runtime_dir: str | os.PathLike[str] | None = None, *, timeout: float = 5.0,
                 retries: int = 2, admin: bool = False, remote: str | None = None,
                 key: str | os.PathLike[str] | None = None) -> None:
        self.runtime_dir = Path(runtime_dir) if runtime_dir is not None else default_runtime_dir()
        self.timeout = timeout
        self.retries = retries
        self._token = ""
        self._curve: ClientKey | None = None
        self._api = endpoint(self.runtime_dir, wire.API_SOCKET)
        self._events = endpoint(self.runtime_dir, wire.EVENTS_SOCKET)
        if remote is not None:
            if key is None:
                raise InvalidRequestError("a remote client needs a key file (key=...)")
            self._curve = ClientKey.load(key)
            self._api, self._events = _remote(remote)
        elif admin:
            try:
                self._token = (self.runtime_dir / "admin.token").read_text().strip()
            except OSError as exc:
                raise UnavailableError(f"cannot read the admin token in {self.runtime_dir}: {exc.strerror}") from None
        self._ctx = zmq.Context()
        self._local = threading.local()
        self._requesters: list[Requester] = []
        self._lock = threading.Lock()

    def requester(self, *, timeout: float | None = None, retries: int | None = None) -> Requester:
        req = Requester(self._ctx, self._api, token=self._token, curve=self._curve,
                        timeout=self.timeout if timeout is None else timeout,
                        retries=self.retries if retries is None else retries)
        with self._lock:
            self._requesters.append(req)
        return req

    def call(self, op: str, **args: Any) -> Any:
        req = getattr(self._local, "req", None)
        if req is None:
            req = self._local.req = self.requester()
        return req.call(op, **args)

    def close(self) -> None:
        with self._lock:
            for req in self._requesters:
                req.close()
            self._requesters.clear()
        self._ctx.destroy(linger=0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads -------------------------------------------------------------------
    def get(self, namespace: str, type: str, id: str) -> Resource:
        return unpack(self.call("get", namespace=namespace, type=type, id=id))

    def list(self, namespace: str, type: str, *, labels: str | Sequence[str] | None = None,
             id_regex: str | None = None) -> list[Resource]:
        parse_query(labels)  # fail here, with the same error as in process
        blobs = self.call("list", namespace=namespace, type=type,
                          labels=list(labels) if isinstance(labels, tuple) else labels, id_regex=id_regex)
        return [unpack(b) for b in blobs]

    # -- transactions ---------------------------------------------------------------
    def transaction(self) -> contextlib.AbstractContextManager[Transaction]:
        """The writes inside the block (on the transaction, or on this client
        from this thread) go to the supervisor as one request on exit, which
        applies them all or none. Each returns what it will have written,
        decided against the supervisor's current state."""
        return open_transaction(self._local, read=committed(self.get), now=time.time, commit=self.apply)

    def apply(self, ops: Sequence[Op]) -> builtins.list[Any]:
        """Send ``ops`` as one transaction; each verb's result, as the supervisor decided it."""
        if not ops:
            return []
        reply = self.call("transaction", ops=wire.encode_ops(ops))
        return [unpack(r) if isinstance(r, bytes) else r for r in reply["results"]]

    # -- writes ------------------------------------------------------------------
    @recorded_in_transaction
    def create(self, resource: Resource, *, owner: str = "") -> Resource:
        reply = self.call("create", resource=validate(resource), owner=owner)
        return unpack(reply["resource"])

    @recorded_in_transaction
    def update(self, resource: Resource, *, owner: str = "",
               expected_phase: str | None = "running") -> Resource:
        reply = self.call("update", resource=validate(resource), owner=owner, expected_phase=expected_phase)
        return unpack(reply["resource"])

    @recorded_in_transaction
    def modify(self, namespace: str, type: str, id: str, fn: Callable[[Any], Any], *,
               owner: str = "", expected_phase: str | None = PHASE_RUNNING) -> Resource:
        res, _written = modify_spec(
            namespace, type, id, fn, owner=owner, get=self.get,
            create=lambda r: self.create(r, owner=owner), expected_phase=expected_phase,
            update=lambda r: self.update(r, owner=owner, expected_phase=expected_phase))
        return res

    @recorded_in_transaction
    def destroy(self, namespace: str, type: str, id: str, *, owner: str = "") -> None:
        self.call("destroy", namespace=namespace, type=type, id=id, owner=owner)

    @recorded_in_transaction
    def teardown(self, namespace: str, type: str, id: str, *, owner: str = "") -> bool:
        return bool(self.call("teardown", namespace=namespace, type=type, id=id, owner=owner)["ready"])

    def teardown_and_destroy(self, namespace: str, type: str, id: str, *, owner: str = "") -> bool:
        """Tear down and, when no finalizer holds it, destroy, in one
        transaction: True once destroyed, False while finalizers remain."""
        outside_transaction(self._local, "teardown_and_destroy")
        return teardown_and_destroy(self.apply, self.get, namespace, type, id, owner=owner)

    @recorded_in_transaction
    def add_finalizer(self, namespace: str, type: str, id: str, *finalizers: str) -> Resource:
        reply = self.call("add_finalizer", namespace=namespace, type=type, id=id, finalizers=list(finalizers))
        return unpack(reply["resource"])

    @recorded_in_transaction
    def remove_finalizer(self, namespace: str, type: str, id: str, *finalizers: str) -> Resource:
        reply = self.call("remove_finalizer", namespace=namespace, type=type, id=id, finalizers=list(finalizers))
        return unpack(reply["resource"])

    # -- watches -----------------------------------------------------------------
    def watch_for(self, namespace: str, type: str, id: str, *, event_types: Iterable[str] | None = None,
                  phase: str | None = None, finalizers_empty: bool | None = None,
                  condition: Callable[[Resource], bool] | None = None, timeout: float | None = None) -> Resource:
        """Wait until the resource is as asked (see :func:`cosihost.state.watchfor.watch_for`)."""
        return watch_for(self.watch, namespace, type, id, event_types=event_types, phase=phase,
                         finalizers_empty=finalizers_empty, condition=condition, timeout=timeout)

    def watch(self, namespace: str, type: str, id: str) -> "RemoteWatch":
        return RemoteWatch(self, namespace, type, id=id)

    def watch_kind(self, namespace: str, type: str, *, bootstrap: bool = False,
                   labels: str | Sequence[str] | None = None, since: str | None = None) -> "RemoteWatch":
        return RemoteWatch(self, namespace, type, bootstrap=bootstrap, labels=labels, since=since)

    def watch_kind_aggregated(self, namespace: str, type: str, *, bootstrap: bool = False,
                              labels: str | Sequence[str] | None = None, since: str | None = None,
                              max_batch: int = MAX_BATCH) -> AggregatedWatch:
        """:meth:`watch_kind`, its events handed over in batches (lists):
        every event that has reached this client when the next batch is asked for."""
        watch = RemoteWatch(self, namespace, type, bootstrap=bootstrap, labels=labels, since=since)
        return AggregatedWatch(watch, max_batch=max_batch)


class RemoteWatch(EventStream):
    """A watch over the wire: subscribe (proven live), then snapshot or
    history, then the live stream. Holes are filled from the supervisor's
    history; a hole it no longer covers, or a restarted supervisor, ends the
    watch with an ``error`` event, like an overrun in process."""

    #: Seconds of silence after which the watch checks on the supervisor.
    IDLE_CHECK = 5.0

    def __init__(self, client: Client, namespace: str, type: str, *, id: str | None = None,
                 bootstrap: bool = False, labels: Any = None, since: str | None = None) -> None:
        check_name("namespace", namespace)
        check_name("type", type)
        if id is not None:
            check_name("id", id)
        if bootstrap and since is not None:
            raise InvalidRequestError("since: a watch resumes from a bookmark or bootstraps, not both")
        self._ns, self._type, self._id = namespace, type, id
        self._query = parse_query(labels)
        self._closed = False
        self._topic = wire.topic(namespace, type)
        self._pending: collections.deque[Event] = collections.deque()
        self._done = False
        self._heard = time.monotonic()
        self._req = client.requester()
        self._sub = Subscriber(client._ctx, client._events, token=client._token, curve=client._curve)
        try:
            self._sub.subscribe(self._req, namespace, type)
            self._start(bootstrap=bootstrap, since=since)
        except BaseException:
            self.close()
            raise

    def _mark(self, record: Record) -> str:
        """A record's bookmark: its backend's revision where the kind has
        one (etcd: it outlives the supervisor), else the supervisor's seq."""
        if self._rev_epoch is not None and record.rev:
            return make_bookmark(self._rev_epoch, record.rev)
        return make_bookmark(self._epoch, record.seq)

    def _start(self, *, bootstrap: bool, since: str | None) -> None:
        if self._id is not None or bootstrap:
            snap = fetch_snapshot(self._req, self._ns, self._type, id=self._id)
            self._epoch, self._cursor, mark = snap.epoch, snap.seq, snap.mark
            items = [unpack(blob) for _id, blob in snap.items]
        else:
            head = self._req.call("since", namespace=self._ns, type=self._type, seq=-1)
            self._epoch, self._cursor, mark, items = head["epoch"], head["seq"], head.get("mark"), []
        mark = mark or make_bookmark(self._epoch, self._cursor)
        marked = parse_bookmark(mark)
        self._rev_epoch = marked[0] if marked is not None and marked[0] != self._epoch else None
        if self._id is not None:
            self._translate = self._one_translator()
            first = items[0] if items else Resource(self._ns, self._type, self._id)
            self._pending.append(Event(CREATED if items else DESTROYED, first, bookmark=mark))
            return
        self._translate = kind_translator(self._query, self._mark)
        if since is not None:
            self._resume(since)
        for res in items:
            if self._query.matches(res.metadata.labels):
                self._pending.append(Event(CREATED, res))
        if bootstrap:
            self._pending.append(Event(BOOTSTRAPPED, bookmark=mark))

    def _resume(self, since: str) -> None:
        epoch, seq = since_bookmark(since)
        if self._rev_epoch is not None and epoch == self._rev_epoch:
            self._resume_backend(since)
            return
        if epoch != self._epoch or not 0 <= seq <= self._cursor:
            self._fail("bookmark is from another epoch of the state, or ahead of it; resync")
            return
        self._cursor = seq
        self._catch_up(None)

    def _resume_backend(self, since: str) -> None:
        """Resume from a bookmark of the kind's backend: what changed after
        it, up to now, then the live stream."""
        reply = self._req.call("resume", namespace=self._ns, type=self._type, bookmark=since)
        if reply["epoch"] != self._epoch:
            self._fail("the supervisor restarted; resync with a new watch")
            return
        if reply["error"]:
            self._fail(reply["error"])
            return
        for seq, kind, rid, blob, old, rev in reply["records"]:
            record = Record(seq, kind, rid, blob, old, rev)
            if seq == 0:  # replayed from the backend's own history
                self._pending.extend(self._translate(record))
            elif seq > self._cursor:
                self._apply(record)
            else:
                self._pending.extend(self._translate(record))
        self._cursor = max(self._cursor, reply["seq"])

    def _one_translator(self) -> Callable[[Record], list[Event]]:
        def translate(record: Record) -> list[Event]:
            if record.id != self._id:
                return []
            return [Event(record.kind, unpack(record.blob), decode(record.old), self._mark(record))]
        return translate

    def _fail(self, why: str) -> None:
        self._pending.append(Event(ERROR, error=why))
        self._done = True

    def _apply(self, record: Record) -> None:
        self._cursor = record.seq
        self._pending.extend(self._translate(record))

    def _catch_up(self, upto: int | None) -> None:
        """Apply history after the cursor (up to ``upto``), or fail the watch."""
        try:
            reply = self._req.call("since", namespace=self._ns, type=self._type, seq=self._cursor)
        except OverrunError:
            self._fail("overrun: the watcher fell behind the bounded history; resync with a new watch")
            return
        if reply["epoch"] != self._epoch:
            self._fail("the supervisor restarted; resync with a new watch")
            return
        for seq, kind, rid, blob, old, *rev in reply["records"]:
            if upto is None or seq <= upto:
                self._apply(Record(seq, kind, rid, blob, old, *rev))

    def _on_batch(self, batch: wire.EventBatch) -> None:
        """A frame's changes in order: a hole is filled from history first."""
        if batch.epoch != self._epoch:
            self._fail("the supervisor restarted; resync with a new watch")
            return
        for change in batch.changes:
            if change.seq <= self._cursor:
                continue
            if change.seq > self._cursor + 1:
                self._catch_up(change.seq - 1)
                if self._done or self._cursor != change.seq - 1:
                    return
            self._apply(Record(change.seq, change.kind, change.id, change.blob, change.old, change.rev))

    def next(self, timeout: float | None = None) -> Event | None:
        """The next event; None on timeout or once the watch has ended.

        After :attr:`IDLE_CHECK` seconds without a word from the supervisor,
        the watch asks it for anything missed: a supervisor that went away
        or restarted ends the watch with an ``error`` event instead of
        leaving it waiting forever."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._pending:
            if self._done or self._closed:
                return None
            now = time.monotonic()
            if now - self._heard >= self.IDLE_CHECK:
                self._check_alive()
                continue
            wait = self._heard + self.IDLE_CHECK - now
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            item = self._sub.recv(wait)
            if item is not None:
                self._heard = time.monotonic()
                if item[0] == self._topic:
                    self._on_batch(item[1])
            elif deadline is not None and time.monotonic() >= deadline:
                return None
        event = self._pending.popleft()
        if event.kind == ERROR:
            self._done = True
            self._pending.clear()
        return event

    def _check_alive(self) -> None:
        """Catch up from the supervisor's history, which also proves it is
        there and still the same one; or end the watch saying why not."""
        self._heard = time.monotonic()
        try:
            self._catch_up(None)
        except UnavailableError as exc:
            self._fail(f"the supervisor is not answering ({exc}); start a new watch once it is back")
        except CosiError as exc:
            self._fail(f"the supervisor refused to catch this watch up ({exc}); start a new watch")

    def close(self) -> None:
        self._closed = True
        self._sub.close()
        self._req.close()


def _remote(remote: str) -> tuple[str, str]:
    """``tcp://HOST:PORT``: requests there, events on the next port."""
    if not remote.startswith("tcp://"):
        raise InvalidRequestError(f"remote must be tcp://HOST:PORT, not {remote!r}")
    host, port = parse_listen(remote.removeprefix("tcp://"), "remote")
    if not 0 < port < 65535:
        raise InvalidRequestError(f"remote must be tcp://HOST:PORT with a port, not {remote!r}")
    return remote_endpoints(host, port)
