"""Reading requests off the ROUTER sockets and sending their answers.

The loop calls :meth:`RequestServer.serve` when the local ROUTER has input
and :meth:`RequestServer.serve_remote` for the remote (CURVE) one. A turn
serves what is queued, up to a budget, so timers and other sockets are not
starved. A controller's pipeline takes several answers in one message, so
this turn's answers to one peer go together, after this turn's events (the
watchers need not wait for them). An answer the Api defers (a write to an
etcd namespace, say) goes later through a responder bound to the envelope
it came with.
"""

from __future__ import annotations

import functools
from typing import Callable

import zmq

from .. import wire
from ..frames import has_input, send_frames
from ..wire import Reply
from . import local_access, remote_access
from .api import Api
from .remote_access import RemotePeer

Batches = dict[tuple[bytes, ...], list[bytes]]


class RequestServer:
    def __init__(self, api: Api, router: "zmq.Socket[bytes]", *, identify_local: bool,
                 flush_events: Callable[[], None]) -> None:
        self.api = api
        self.router = router
        #: ``[access] writers`` is set: each local connection's uid decides what it may do.
        self.identify_local = identify_local
        self._flush_events = flush_events

    def serve(self, budget: int = 256) -> None:
        """Answer up to ``budget`` queued requests, then let the loop breathe.
        A peer that takes several replies in one message (a controller's
        pipeline) gets this turn's answers to it together, in order."""
        batches: Batches = {}
        try:
            self._serve_some(budget, batches)
        finally:
            if batches:
                self._flush_events()  # watchers need not wait for the pipelined writers' answers
            for envelope, answers in batches.items():
                send_frames(self.router, [*envelope, *answers])

    def _serve_some(self, budget: int, batches: Batches) -> None:
        router = self.router
        while budget > 0:
            # Asking is cheaper than catching zmq.Again at the end of every batch.
            if not has_input(router):
                return
            if self.identify_local:
                parts = router.recv_multipart(zmq.NOBLOCK, copy=False)
                reader = local_access.read_only(remote_access.user_id(parts[-1]))
                frames = [p.bytes for p in parts]
            else:
                frames, reader = router.recv_multipart(zmq.NOBLOCK), None
            split = wire.split_envelope(frames)
            if split is None:
                budget -= 1
                continue  # not a REQ envelope (nor a batch): nobody to answer
            envelope, bodies = split
            budget -= len(bodies)
            for body in bodies:
                answer = self.api.handle(body, functools.partial(self.responder, envelope), reader=reader)
                if answer is not None and self.api.batched:
                    batches.setdefault(tuple(envelope), []).append(answer)
                elif answer is not None:
                    send_frames(router, envelope + [answer])

    def serve_remote(self, sock: "zmq.Socket[bytes]", budget: int = 256) -> None:
        """Requests from remote peers: each acts as its key's role allows."""
        for _ in range(budget):
            if not has_input(sock):
                return
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            if len(frames) < 3 or frames[-2].bytes != b"":
                continue
            peer = RemotePeer.parse(remote_access.user_id(frames[-1]))
            if peer is None:
                continue  # no ZAP identity: cannot happen on a CURVE socket, but never serve one
            envelope = [f.bytes for f in frames[:-1]]
            answer = self.api.handle(frames[-1].bytes, functools.partial(self.responder, envelope, sock=sock),
                                     remote=peer)
            if answer is not None:
                send_frames(sock, envelope + [answer])

    def responder(self, envelope: list[bytes], rid: str, *,
                  sock: "zmq.Socket[bytes] | None" = None) -> Callable[[Reply], None]:
        """How an answer given later reaches the peer that asked."""
        out = sock if sock is not None else self.router

        def respond(reply: Reply) -> None:
            reply.rid = rid
            send_frames(out, envelope + [wire.encode_reply(reply)])
        return respond


def drain(sock: "zmq.Socket[bytes]", budget: int = 256) -> None:
    """Read and drop what waits on ``sock`` (the remote XPUB's subscriptions)."""
    for _ in range(budget):
        try:
            sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
