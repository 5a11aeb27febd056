"""systemd's notify protocol: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

The protocol is one datagram per message to the socket named in
``NOTIFY_SOCKET``; a dozen lines of stdlib ``socket`` do it, so no package
is needed (and none can get it subtly wrong: abstract sockets start with
``@``). Without ``NOTIFY_SOCKET`` every call is a no-op. Watchdog pings are
sent only when the main loop calls :meth:`Notifier.watchdog`, so a stuck
loop stops them and systemd kills the service.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("cosihost.supervisor")


class Notifier:
    def __init__(self, address: str | None = None, *, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.interval = watchdog_usec / 2e6 if watchdog_usec else None
        self._last_ping = 0.0
        self._last_status = ""
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._target = "\0" + address[1:] if address.startswith("@") else address

    @classmethod
    def from_env(cls) -> "Notifier":
        address = os.environ.get("NOTIFY_SOCKET") or None
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        watchdog = int(usec) if usec and usec.isdigit() and (not pid or pid == str(os.getpid())) else None
        return cls(address, watchdog_usec=watchdog)

    def send(self, *fields: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._target)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)

    def ready(self, status: str) -> None:
        self._last_status = status
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self.send(f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading controllers")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping controllers")

    def watchdog(self) -> float | None:
        """Ping if due; returns seconds until the next ping is due (or None)."""
        if self.interval is None:
            return None
        now = time.monotonic()
        if now - self._last_ping >= self.interval:
            self.send("WATCHDOG=1")
            self._last_ping = now
        return max(0.0, self._last_ping + self.interval - now)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
