"""sd_notify(3) without systemd-python: tell systemd we are ready, reloading, stopping, alive.

The protocol is one datagram of `KEY=value` lines to the AF_UNIX socket named by
$NOTIFY_SOCKET. Outside systemd (no NOTIFY_SOCKET) every call is a cheap no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("notifier.sdnotify")


def _socket_address(value: str | None) -> str | bytes | None:
    """The sendto() address for a NOTIFY_SOCKET value, or None when unusable."""
    if not value:
        return None
    if value.startswith("@"):
        # Abstract namespace: the name starts with a NUL byte instead of '@'.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # vsock:CID:PORT and other transports of newer systemd are not needed on a NAS.
    log.debug("NOTIFY_SOCKET=%r is neither a path nor an @abstract name; not notifying", value)
    return None


class SystemdNotifier:
    """Sends sd_notify messages to $NOTIFY_SOCKET; every method is a no-op outside systemd.

    Sending never raises: a daemon must not die because systemd went away.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _socket_address(env.get("NOTIFY_SOCKET"))
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """True when started by systemd with a notify socket (Type=notify)."""
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=value` lines in one datagram; True if systemd got it."""
        if self.address is None:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                    # A reader that stops reading must never stall the daemon's core thread.
                    self._sock.settimeout(1.0)
                self._sock.sendto(payload, self.address)
        except OSError as exc:
            log.debug("sd_notify %s failed: %s", assignments[0] if assignments else "", exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) is complete; systemctl start/reload returns now."""
        return self.notify("READY=1", *self._status_lines(status))

    def status(self, text: str) -> bool:
        """A one-line status shown by `systemctl status notifier`."""
        return self.notify(*self._status_lines(text))

    def reloading(self, status: str | None = None) -> bool:
        """A reload has begun; send ready() when it is done."""
        # systemd 253+ wants MONOTONIC_USEC with RELOADING=1 to order it against READY=1.
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={now_usec}", *self._status_lines(status))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun."""
        return self.notify("STOPPING=1", *self._status_lines(status))

    def watchdog(self) -> bool:
        """Keep-alive ping for WatchdogSec=."""
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WatchdogSec=), or None when no watchdog is for us."""
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None  # the variables were inherited from a parent
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec or 0)
        except ValueError:
            log.debug("WATCHDOG_USEC=%r is not a number; watchdog off", self._watchdog_usec)
            return None
        return usec / 2_000_000 if usec > 0 else None

    def close(self) -> None:
        """Release the socket (it is reopened on the next send)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    @staticmethod
    def _status_lines(text: str | None) -> tuple[str, ...]:
        # A newline would end the STATUS assignment and start a bogus one.
        return () if text is None else ("STATUS=" + " ".join(text.splitlines()),)


class WatchdogPinger:
    """A thread sending WATCHDOG=1 every `interval` seconds, but only while `healthy()` is True.

    A daemon whose sender or sources are wedged stops pinging, and systemd restarts it.
    """

    def __init__(
        self,
        notifier: SystemdNotifier,
        healthy: Callable[[], bool],
        interval: float | None = None,
    ) -> None:
        self.notifier = notifier
        self.healthy = healthy
        self.interval = interval if interval is not None else notifier.watchdog_interval()
        self.pings = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._was_healthy = True

    def start(self) -> bool:
        """Start pinging; False (and no thread) when systemd asked for no watchdog."""
        if not self.interval or not self.notifier.enabled:
            return False
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop pinging and wait for the thread to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while True:
            if self._check():
                if self.notifier.watchdog():
                    self.pings += 1
            if self._stop.wait(self.interval):
                return

    def _check(self) -> bool:
        try:
            ok = bool(self.healthy())
        except Exception:  # a broken health check must read as unhealthy, not kill the pinger
            log.exception("watchdog health check raised; treating the daemon as unhealthy")
            ok = False
        if ok != self._was_healthy:
            self._was_healthy = ok
            if ok:
                log.info("daemon healthy again; watchdog pings resumed")
            else:
                log.error(
                    "daemon unhealthy (a worker thread died or the queue stopped moving); "
                    "withholding watchdog pings so systemd restarts it"
                )
        return ok
