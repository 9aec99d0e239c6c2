"""systemd's service notification protocol (sd_notify): READY, STATUS, STOPPING and the watchdog.

Written by hand: the protocol is one datagram of `KEY=value` lines to the socket in $NOTIFY_SOCKET,
and the Python options are either unmaintained (sdnotify, last released 2017) or compile against
libsystemd (systemd-python). Outside systemd ($NOTIFY_SOCKET unset) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

logger = logging.getLogger("evolvd.systemd")


class SystemdNotifier:
    """Notifications to the service manager; a no-op when not started by one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env: Mapping[str, str] = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # A leading @ names a socket in the abstract namespace (a leading NUL byte to the kernel).
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._watchdog_interval_s = self._watchdog_interval(env)
        self._last_ping = 0.0

    @staticmethod
    def _watchdog_interval(env: Mapping[str, str]) -> float | None:
        """Half the WatchdogSec= systemd asks for (its own advice), or None when there is none."""
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 1e6 / 2

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *lines: str) -> None:
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:  # the manager went away: nothing to tell, nothing to stop for
            logger.warning("systemd notification failed: %s", exc)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def extend_start(self, status: str, seconds: float) -> None:
        """Still starting, and making progress: say what it waits for, and ask for `seconds` more than
        TimeoutStartSec= before systemd gives up (a large model takes vLLM minutes to load)."""
        self.notify(f"STATUS={status}", f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")

    def watchdog(self) -> None:
        """Ping the watchdog if it is due (call it from the supervising loop: a hung loop stops the
        pings, and systemd restarts the service)."""
        if self._watchdog_interval_s is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self._watchdog_interval_s:
            self._last_ping = now
            self.notify("WATCHDOG=1")
