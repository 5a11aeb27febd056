"""A stand-in for systemd's notify socket: a real AF_UNIX datagram socket
that records every message with the sender's pid (SCM_CREDENTIALS) and the
kernel's send time (SO_TIMESTAMPNS), read by a thread so that a sender never
blocks on a full queue (net.unix.max_dgram_qlen is often 10)."""

from __future__ import annotations

import dataclasses
import queue
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)

PLAIN = '''
from cosihost import Controller, Output

class {cls}(Controller):
    name = "test.{cls}"
    outputs = [Output("{cls}s.test.cosihost.dev")]

    def reconcile(self, rt):
        pass
'''


@dataclasses.dataclass
class Message:
    fields: dict[str, str]
    pid: int
    sent: float  # CLOCK_REALTIME; the kernel's timestamp when the sender sent it

    def __contains__(self, line: str) -> bool:
        key, _, value = line.partition("=")
        return self.fields.get(key) == value


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self.seen: list[Message] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-socket", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        space = socket.CMSG_SPACE(12) + socket.CMSG_SPACE(16)
        while not self._closed.is_set():
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(65536, space)
            except TimeoutError:
                continue
            except OSError:
                return
            pid, sent = 0, time.time()
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:12])[0]
                elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", payload[:16])
                    sent = sec + nsec / 1e9
            fields = dict(line.partition("=")[::2] for line in data.decode().splitlines() if line)
            self.messages.put(Message(fields, pid, sent))

    def next(self, timeout: float) -> Message | None:
        """The next message, or None if none came within ``timeout`` seconds."""
        try:
            msg = self.messages.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        self.seen.append(msg)
        return msg

    def until(self, predicate: Callable[[Message], bool], *, timeout: float,
              what: str = "a message") -> Message:
        """Read messages until one matches; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.next(deadline - time.monotonic())
            if msg is None:
                got = [m.fields for m in self.seen[-5:]]
                raise AssertionError(f"no {what} within {timeout:g} s; last messages: {got}")
            if predicate(msg):
                return msg

    def during(self, seconds: float) -> list[Message]:
        """Every message that arrives in the next ``seconds``."""
        deadline = time.monotonic() + seconds
        got = []
        while (msg := self.next(deadline - time.monotonic())) is not None:
            got.append(msg)
        return got

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotifySocket]:
    # Short path: sun_path holds 108 bytes.
    sock = NotifySocket(tmp_path_factory.mktemp("ns", numbered=True) / "notify")
    yield sock
    sock.close()


@pytest.fixture(scope="session")
def plain_controller() -> Callable[[str], str]:
    """``plain_controller("Name")``: the source of a module whose controller
    ``test.Name`` writes ``Names.test.cosihost.dev`` and does nothing."""
    return lambda cls: PLAIN.format(cls=cls)
