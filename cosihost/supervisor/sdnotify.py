"""systemd's notify protocol: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

The protocol is one datagram of ``KEY=value`` lines per message, sent to the
AF_UNIX socket named in ``NOTIFY_SOCKET`` (a path, or ``@name`` for an
abstract socket); systemd learns the sender's pid from the kernel. That is a
few lines of stdlib ``socket``, so no package is needed (see
docs/systemd.md). Without ``NOTIFY_SOCKET`` every call is a no-op.

Watchdog pings are sent only when the main loop calls :meth:`Notifier.watchdog`,
so a loop that is stuck stops them and systemd kills the service. The
variables are taken out of the environment (as ``sd_notify(unset_environment=1)``
does), so controller processes do not inherit them: with ``NotifyAccess=main``
systemd would refuse and log their messages anyway.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import MutableMapping

log = logging.getLogger("cosihost.supervisor")

ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(address: str) -> str | None:
    """The ``sendto`` address for a ``NOTIFY_SOCKET`` value, or None if unsupported."""
    if address.startswith("/"):
        return address
    if address.startswith("@") and len(address) > 1:
        return "\0" + address[1:]
    return None  # relative paths mean nothing; "vsock:" (systemd 254+) is not for us


class Notifier:
    """Messages to the service manager; every method is cheap and never raises."""

    def __init__(self, address: str | None = None, *, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.interval = watchdog_usec / 2e6 if watchdog_usec else None
        self._last_ping: float | None = None
        self._last_status = ""
        self._held = False  # reloading or stopping: the loop's summary must not replace STATUS
        self._stopping = False
        self._failing = False
        self._sock: socket.socket | None = None
        self._target = socket_address(address) if address else None
        if address and self._target is None:
            log.warning("NOTIFY_SOCKET=%s is not a socket path or @name: not notifying systemd", address)
        if self._target is not None:
            # Blocking, as libsystemd's sd_notify: the service manager reads
            # promptly, and a message is never dropped (a READY=1 must not be).
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str] | None = None) -> "Notifier":
        """The notifier systemd asked for, taking its variables out of ``environ``
        (``os.environ`` by default) so that child processes do not see them."""
        env = os.environ if environ is None else environ
        address, usec, pid = (env.pop(name, None) for name in ENV)
        watchdog = int(usec) if usec and usec.isdigit() and int(usec) > 0 else None
        if watchdog and pid and pid != str(os.getpid()):
            watchdog = None  # the watchdog is meant for another process (we were forked or exec'd)
        return cls(address or None, watchdog_usec=watchdog)

    def send(self, *fields: str) -> bool:
        if self._sock is None or self._target is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self._target)
        except OSError as exc:
            if not self._failing:  # once, not at every watchdog ping
                log.warning("sd_notify to %s failed: %s", self.address, exc)
            self._failing = True
            return False
        if self._failing:
            log.info("sd_notify to %s works again", self.address)
            self._failing = False
        return True

    def ready(self, status: str) -> None:
        """Startup or a reload is complete."""
        if self._stopping:
            return
        self._held = False
        self._last_status = status
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        """Called at every loop iteration: sends only a changed line, and
        nothing while a reload or the shutdown owns the status."""
        if status != self._last_status and not self._held:
            self._last_status = status
            self.send(f"STATUS={status}")

    def reloading(self) -> None:
        """A reload started; :meth:`ready` must follow once it is done."""
        if self._stopping:
            return
        self._held = True
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading controllers")

    def stopping(self) -> None:
        if self._stopping:
            return
        self._stopping = self._held = True
        self.send("STOPPING=1", "STATUS=stopping controllers")

    def watchdog(self) -> float | None:
        """Ping if due; returns seconds until the next ping is due (or None).

        Pings every half ``WATCHDOG_USEC``, as systemd advises. Call it only
        from the main loop: that the loop got here is what the ping says.
        """
        if self.interval is None or self._sock is None:
            return None
        now = time.monotonic()
        if self._last_ping is None or now - self._last_ping >= self.interval:
            self.send("WATCHDOG=1")
            self._last_ping = now
        return max(0.0, self._last_ping + self.interval - now)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
