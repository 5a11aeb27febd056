"""Talking to an etcd cluster: endpoints, TLS, retries, and what errors mean.

One gRPC channel per endpoint, used in turn: a call that cannot reach its
member, or reaches a member without a leader, moves on to the next one and
tries again until the call's deadline. That hides a leader election (writes
resume once a new leader is up) and fails clearly when a quorum is gone.

Every call carries etcd's ``hasleader`` metadata, so a member cut off from
the leader answers "no leader" at once instead of holding the call, and a
watch on such a member is cancelled rather than left silent.

A retried write may have been applied by the attempt that timed out: the
caller is told (``maybe_applied``) and decides, since only it knows what
its write should have left behind.

:meth:`Connection.submit` does not wait: the call goes out as a gRPC
future, so any number are in flight on the channel at once (HTTP/2
streams), and the answer is handed to a callback. Only a failed attempt
leaves that path: its retries, which wait between attempts, run on a small
pool through :meth:`Connection.call`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from typing import Any, Callable, Iterator

import grpc

from ...errors import UnavailableError
from .config import EtcdConfig
from .schema import METHODS, PACKAGE, Messages

_METADATA = (("hasleader", "true"),)
_OPTIONS = [
    ("grpc.max_receive_message_length", 256 << 20),
    ("grpc.max_send_message_length", 16 << 20),
    # Notice a member that went away without closing the connection; etcd
    # refuses pings more often than every 5 s by default.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 3_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]
#: Errors that mean the request never reached a member able to apply it.
_NOT_SENT = ("no leader", "failed to connect", "connection refused", "not capable")
#: Errors about the request itself: another member would say the same.
_REQUEST_ERRORS = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                             grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                             grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE,
                             grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.NOT_FOUND})
_WRITES = frozenset({"Txn", "Put", "Compact"})
#: Threads retrying failed submitted calls (only while etcd misbehaves).
RETRIERS = 4

#: What a submitted call ends with: the response, whether an earlier attempt
#: may have been applied, and the error (then the response is None).
Done = Callable[[Any, bool, "BaseException | None"], None]


class CompactedError(Exception):
    """The revision asked for was compacted away: start again from now."""

    def __init__(self, compact_revision: int) -> None:
        where = f" (etcd keeps history from revision {compact_revision})" if compact_revision else ""
        super().__init__(f"the revision asked for was compacted away{where}")
        self.compact_revision = compact_revision


def _target(endpoint: str) -> str:
    for scheme in ("http://", "https://"):
        if endpoint.startswith(scheme):
            endpoint = endpoint[len(scheme):]
    return endpoint.rstrip("/")


def _details(exc: grpc.RpcError) -> str:
    details: str = exc.details() or exc.code().name.lower()
    return details


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise UnavailableError(f"etcd: cannot read {path}: {exc.strerror}") from None


class Connection:
    """Calls to one etcd cluster, thread-safe."""

    def __init__(self, config: EtcdConfig) -> None:
        self.config = config
        self.m = Messages()
        self._targets = [_target(e) for e in config.endpoints]
        self._creds = None
        if config.secure:
            self._creds = grpc.ssl_channel_credentials(
                root_certificates=_read(config.ca_file), private_key=_read(config.key_file),
                certificate_chain=_read(config.cert_file))
        self._lock = threading.Lock()
        self._channels: dict[int, grpc.Channel] = {}
        self._stubs: dict[tuple[int, str], Callable[..., Any]] = {}
        self._current = 0
        self._closed = threading.Event()
        #: RPCs sent, by method (every attempt counts): what a write cost.
        self.counts: collections.Counter[str] = collections.Counter()
        self._retries: concurrent.futures.ThreadPoolExecutor | None = None

    # -- channels ---------------------------------------------------------------
    def _stub(self, index: int, service: str, method: str) -> Callable[..., Any]:
        with self._lock:
            if self._closed.is_set():
                raise UnavailableError("etcd: connection closed")
            stub = self._stubs.get((index, method))
            if stub is None:
                channel = self._channels.get(index)
                if channel is None:
                    target = self._targets[index]
                    channel = (grpc.secure_channel(target, self._creds, options=_OPTIONS) if self._creds
                               else grpc.insecure_channel(target, options=_OPTIONS))
                    self._channels[index] = channel
                req, resp, streaming = METHODS[(service, method)]
                make = channel.stream_stream if streaming else channel.unary_unary
                stub = make(f"/{PACKAGE}.{service}/{method}",
                            request_serializer=getattr(self.m, req).SerializeToString,
                            response_deserializer=getattr(self.m, resp).FromString)
                self._stubs[(index, method)] = stub
            self.counts[method] += 1
            return stub

    def _rotate(self, index: int) -> None:
        with self._lock:
            if self._current == index:
                self._current = (index + 1) % len(self._targets)

    def endpoint(self) -> str:
        return self.config.endpoints[self._current]

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
            self._stubs.clear()
            retries, self._retries = self._retries, None
        if retries is not None:
            retries.shutdown(wait=False, cancel_futures=True)

    # -- calls ------------------------------------------------------------------
    def call(self, service: str, method: str, request: Any, *, timeout: float | None = None,
             deadline: float | None = None, maybe_applied: bool = False) -> tuple[Any, bool]:
        """The response, and whether an earlier attempt may have been applied.

        Each attempt gets a share of ``timeout`` (the config's by default),
        so a member that hangs cannot use it all; a failed attempt moves on
        to the next member. Raises :class:`UnavailableError` naming the last
        failure once the time is up (or ``deadline``, a monotonic time).
        """
        total = timeout or self.config.timeout
        deadline = deadline or time.monotonic() + total
        pause = 0.02
        while True:
            index = self._current
            remaining = deadline - time.monotonic()
            try:
                stub = self._stub(index, service, method)
                attempt = max(0.05, min(remaining, self._share(total)))
                return stub(request, timeout=attempt, metadata=_METADATA), maybe_applied
            except ValueError:  # the channel was closed under us
                raise UnavailableError("etcd: connection closed") from None
            except grpc.RpcError as exc:
                maybe_applied = self._failed(exc, method, index) or maybe_applied
                if time.monotonic() + pause >= deadline:
                    raise UnavailableError(self._failure(method, total, index, _details(exc),
                                                         maybe_applied)) from None
                if self._closed.wait(pause):
                    raise UnavailableError("etcd: connection closed") from None
                pause = min(pause * 2, 0.5)

    def submit(self, service: str, method: str, request: Any, done: Done) -> None:
        """Send ``request`` without waiting; ``done(response, maybe_applied,
        error)`` runs when it is answered, on a thread of gRPC's (or the
        retry pool's): it must be quick and must not block."""
        total = self.config.timeout
        deadline = time.monotonic() + total
        index = self._current
        try:
            stub: Any = self._stub(index, service, method)
            future = stub.future(request, timeout=self._share(total), metadata=_METADATA)
        except (UnavailableError, ValueError):
            done(None, False, UnavailableError("etcd: connection closed"))
            return

        def answered(fut: Any) -> None:
            try:
                response = fut.result()
            except grpc.RpcError as exc:
                try:
                    maybe_applied = self._failed(exc, method, index)
                except Exception as final:
                    done(None, False, final)
                    return
                self._retry(service, method, request, deadline, maybe_applied, done)
                return
            except Exception as exc:  # cancelled: the connection closed
                done(None, False, UnavailableError(f"etcd {method}: {exc!r}"))
                return
            done(response, False, None)

        future.add_done_callback(answered)

    def _retry(self, service: str, method: str, request: Any, deadline: float, maybe_applied: bool,
               done: Done) -> None:
        """Go on with a submitted call that failed, as :meth:`call` would."""
        def attempt() -> None:
            try:
                response, maybe = self.call(service, method, request, deadline=deadline,
                                            maybe_applied=maybe_applied)
            except Exception as exc:
                done(None, maybe_applied, exc)
                return
            done(response, maybe, None)

        with self._lock:
            if self._retries is None and not self._closed.is_set():
                self._retries = concurrent.futures.ThreadPoolExecutor(RETRIERS,
                                                                      thread_name_prefix="cosihost-etcd-retry")
            retries = self._retries
        if retries is None:
            done(None, maybe_applied, UnavailableError("etcd: connection closed"))
            return
        try:
            retries.submit(attempt)
        except RuntimeError:  # shut down meanwhile
            done(None, maybe_applied, UnavailableError("etcd: connection closed"))

    def _share(self, total: float) -> float:
        """One attempt's part of a call's time."""
        return max(0.5, total / (len(self._targets) + 1))

    def _failed(self, exc: grpc.RpcError, method: str, index: int) -> bool:
        """A failed attempt on member ``index``: raises what another attempt
        would not change; else moves on to the next member and says whether
        the attempt may have been applied."""
        code, details = exc.code(), _details(exc)
        if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
            raise CompactedError(0) from None
        if code in _REQUEST_ERRORS:
            raise UnavailableError(f"etcd {method}: {code.name.lower()}: {details}") from None
        self._rotate(index)
        return method in _WRITES and not any(word in details.lower() for word in _NOT_SENT)

    def _failure(self, method: str, total: float, index: int, details: str, maybe_applied: bool) -> str:
        what = "apply it" if method in _WRITES else "answer"
        text = (f"etcd {method}: no member could {what} within {total:g} s; "
                f"last: {self.config.endpoints[index]}: {details}")
        if maybe_applied:
            text += " (an attempt may still be applied if etcd recovers)"
        if any(word in details for word in ("TSI_", "SSL", "handshake", "certificate")):
            text += " (TLS failed: check ca_file, cert_file and key_file)"
        return text

    def watch(self, request: Any) -> tuple[Iterator[Any], Callable[[], None]]:
        """Open a watch stream on the current member: its responses, and a
        function that ends it. Failures surface from the iterator as
        ``grpc.RpcError``; the caller reconnects with :meth:`next_member`."""
        index = self._current
        stub = self._stub(index, "Watch", "Watch")
        stop = threading.Event()

        def requests() -> Iterator[Any]:
            yield request
            stop.wait()

        call = stub(requests(), metadata=_METADATA)

        def cancel() -> None:
            stop.set()
            call.cancel()

        return call, cancel

    def next_member(self) -> None:
        """The watch on the current member failed: use the next one."""
        self._rotate(self._current)
