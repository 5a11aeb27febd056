"""Raw pyzmq + msgpack baselines, one role per process: ``python -m benchmarks.raw ROLE ...``.

Each role moves what cosihost moves for the same job (the same packed link
status, in messages of the same shape as :mod:`cosihost.wire`) and nothing
else: no state, no access checks, no cache. A client role prints one JSON
object on stdout when it is done; a server role serves until it is killed.

Roles:
  rep ADDR                      REP echo server: decode the request, reply with the resource
  router ADDR                   the same on a ROUTER socket (any number of requests in flight)
  req ADDR N                    N sequential round trips -> {"start", "end" (monotonic ns), "cpu_ns"}
  dealer ADDR N INFLIGHT        N round trips, INFLIGHT at a time -> {"start", "end", "cpu_ns"}
  pub ADDR SYNC SUBS N PERIOD   wait for SUBS subscribers, then publish N events,
                                one every PERIOD ns (0: as fast as possible) -> {"start", "end"}
  sub ADDR SYNC N               receive N events -> {"received", "lost" (missing or out of
                                order), "first", "last" (monotonic ns), "cpu_ns", "latencies" (ns)}
  idle ADDR1 ADDR2              an idle process holding a REQ and a SUB socket, until stdin closes
"""

from __future__ import annotations

import json
import sys
import time
from array import array

import msgpack
import zmq

from .payload import sample_blob

TOPIC = b"bench\x00LinkStatuses.net.cosihost.dev\x00"
HELLO = b"hello\x00"
EPOCH = "0123456789abcdef"


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(frame: bytes) -> object:
    return msgpack.unpackb(frame, raw=False, strict_map_key=False)


def _request(blob: bytes, n: int) -> bytes:
    """An ``update`` request as :func:`cosihost.wire.encode_request` builds it."""
    return _pack({"v": 1, "op": "update", "rid": f"0123456789-{n}", "tok": "f" * 32,
                  "args": {"resource": blob, "owner": "bench.Writer", "expected_phase": "running"}})


def _reply(request: bytes, seq: int) -> bytes:
    """Decode a request and answer it as the supervisor answers a write."""
    msg = _unpack(request)
    return _pack({"v": 1, "rid": msg["rid"], "ok": True,  # type: ignore[index]
                  "result": {"resource": msg["args"]["resource"], "seq": seq}})  # type: ignore[index]


def _done(**result: object) -> None:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def _serve(addr: str, kind: int) -> None:
    """Answer every request, keeping its envelope (none on REP, the peer's
    identity on ROUTER)."""
    ctx = zmq.Context()
    sock = ctx.socket(kind)
    sock.bind(addr)
    seq = 0
    while True:
        frames = sock.recv_multipart()
        seq += 1
        sock.send_multipart([*frames[:-1], _reply(frames[-1], seq)])


def rep(addr: str) -> None:
    _serve(addr, zmq.REP)


def router(addr: str) -> None:
    _serve(addr, zmq.ROUTER)


def req(addr: str, n: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.connect(addr)
    blob = sample_blob()
    for i in range(200):  # connect and warm up
        sock.send(_request(blob, i))
        _unpack(sock.recv())
    start, cpu = time.monotonic_ns(), time.process_time_ns()
    for i in range(n):
        sock.send(_request(blob, i))
        _unpack(sock.recv())
    _done(start=start, end=time.monotonic_ns(), cpu_ns=time.process_time_ns() - cpu)


def dealer(addr: str, n: int, inflight: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(addr)
    blob = sample_blob()
    for i in range(200):
        sock.send(_request(blob, i))
        _unpack(sock.recv())
    start, cpu = time.monotonic_ns(), time.process_time_ns()
    sent = received = 0
    while sent < min(inflight, n):
        sock.send(_request(blob, sent))
        sent += 1
    while received < n:
        _unpack(sock.recv())
        received += 1
        if sent < n:
            sock.send(_request(blob, sent))
            sent += 1
    _done(start=start, end=time.monotonic_ns(), cpu_ns=time.process_time_ns() - cpu)


def _event(blob: bytes, seq: int, t: int) -> bytes:
    """An event as :func:`cosihost.wire.encode_event` builds it (the send time
    rides where the old resource would)."""
    return _pack(["ev", EPOCH, seq, "updated", blob, t])


def pub(addr: str, sync_addr: str, subs: int, n: int, period_ns: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.bind(addr)
    sync = ctx.socket(zmq.REP)
    sync.bind(sync_addr)
    ready = 0
    while ready < subs:  # the Guide's node coordination: hello until every subscriber answers
        sock.send_multipart([HELLO, b""])
        while sync.poll(10, zmq.POLLIN):
            sync.recv()
            sync.send(b"")
            ready += 1
    blob = sample_blob()
    start = time.monotonic_ns()
    for seq in range(n):
        if period_ns:
            wait = start + seq * period_ns - time.monotonic_ns()
            if wait > 0:
                time.sleep(wait / 1e9)
        sock.send_multipart([TOPIC, _event(blob, seq, time.monotonic_ns())])
    end = time.monotonic_ns()
    for _ in range(subs):  # every subscriber says when it is done: nothing is cut off
        sync.recv()
        sync.send(b"")
    _done(start=start, end=end)


def sub(addr: str, sync_addr: str, n: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, TOPIC)
    sock.setsockopt(zmq.SUBSCRIBE, HELLO)
    sock.connect(addr)
    while sock.recv_multipart()[0] != HELLO:
        pass
    sync = ctx.socket(zmq.REQ)
    sync.connect(sync_addr)
    sync.send(b"")
    sync.recv()
    latencies = array("q")
    received = disordered = 0
    first = last = 0
    cpu = time.process_time_ns()
    while received < n:
        if not sock.poll(30_000, zmq.POLLIN):
            break  # what never came counts as lost
        topic, body = sock.recv_multipart()
        now = time.monotonic_ns()
        if topic != TOPIC:
            continue
        _tag, _epoch, seq, _kind, _blob, sent = _unpack(body)  # type: ignore[misc]
        if not received:
            first = now
        last = now
        disordered += seq != received
        received += 1
        latencies.append(now - sent)
    cpu = time.process_time_ns() - cpu
    sync.send(b"")
    sync.recv()
    _done(received=received, lost=n - received + disordered, first=first, last=last, cpu_ns=cpu,
          latencies=latencies.tolist())


def idle(addr1: str, addr2: str) -> None:
    ctx = zmq.Context()
    a = ctx.socket(zmq.REQ)
    a.connect(addr1)
    b = ctx.socket(zmq.SUB)
    b.setsockopt(zmq.SUBSCRIBE, b"x")
    b.connect(addr2)
    _done(ready=True)
    sys.stdin.read()


ROLES = {"rep": rep, "router": router, "req": req, "dealer": dealer, "pub": pub, "sub": sub, "idle": idle}


def main(argv: list[str]) -> None:
    role, *args = argv
    fn = ROLES[role]
    fn(*[int(a) if a.lstrip("-").isdigit() else a for a in args])  # type: ignore[operator]


if __name__ == "__main__":
    main(sys.argv[1:])
