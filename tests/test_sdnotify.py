"""sd_notify against a real AF_UNIX datagram socket, bound as systemd would bind it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from notifier.sdnotify import SystemdNotifier, WatchdogPinger


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `cond` until it holds or `timeout` passes; the result of the last poll."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return cond()
        time.sleep(0.005)
    return True


class NotifySocket:
    """What systemd listens on: a datagram socket collecting every message."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5)

    def recv(self) -> list[str]:
        return self.sock.recv(4096).decode().split("\n")

    def pending(self) -> list[list[str]]:
        """Every message already queued, without waiting."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(4096).decode().split("\n"))
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(5)
        return out


@pytest.fixture(params=["path", "abstract"])
def listener(request) -> Iterator[tuple[NotifySocket, str]]:
    """A bound notify socket and the NOTIFY_SOCKET value naming it."""
    if request.param == "path":
        # A short directory: AF_UNIX paths are limited to 108 bytes, tmp_path can be longer.
        with tempfile.TemporaryDirectory(prefix="sdn") as d:
            path = os.path.join(d, "notify")
            ns = NotifySocket(path)
            yield ns, path
            ns.sock.close()
    else:
        name = f"notifier-test-{uuid.uuid4().hex}"
        ns = NotifySocket(b"\0" + name.encode())
        yield ns, "@" + name
        ns.sock.close()


def test_messages_arrive(listener):
    ns, address = listener
    n = SystemdNotifier({"NOTIFY_SOCKET": address})
    assert n.enabled
    assert n.ready(status="watching 3 sources")
    assert ns.recv() == ["READY=1", "STATUS=watching 3 sources"]
    assert n.status("outbox: 2 mails\nwaiting")
    assert ns.recv() == ["STATUS=outbox: 2 mails waiting"]
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    msg = ns.recv()
    assert msg[0] == "RELOADING=1"
    assert msg[1].startswith("MONOTONIC_USEC=")
    assert int(msg[1].split("=", 1)[1]) >= before
    assert n.stopping()
    assert ns.recv() == ["STOPPING=1"]
    assert n.watchdog()
    assert ns.recv() == ["WATCHDOG=1"]
    n.close()


def test_no_socket_is_a_no_op():
    n = SystemdNotifier({})
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog() is False
    assert n.watchdog_interval() is None
    assert WatchdogPinger(n, lambda: True, interval=0.01).start() is False


def test_send_failure_does_not_raise(tmp_path):
    n = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert n.enabled
    assert n.ready() is False
    assert n.watchdog() is False


def test_watchdog_interval():
    pid = str(os.getpid())
    assert SystemdNotifier({"WATCHDOG_USEC": "60000000"}).watchdog_interval() == 30.0
    assert (
        SystemdNotifier({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": pid}).watchdog_interval()
        == 30.0
    )
    assert (
        SystemdNotifier({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}).watchdog_interval()
        is None
    )
    assert SystemdNotifier({"WATCHDOG_USEC": "0"}).watchdog_interval() is None
    assert SystemdNotifier({"WATCHDOG_USEC": "soon"}).watchdog_interval() is None


def test_pinger_stops_when_unhealthy_and_resumes(listener):
    ns, address = listener
    state = {"healthy": True, "calls": 0}
    lock = threading.Lock()

    def healthy() -> bool:
        with lock:
            state["calls"] += 1
            return state["healthy"]

    def calls() -> int:
        with lock:
            return state["calls"]

    n = SystemdNotifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "20000"})
    pinger = WatchdogPinger(n, healthy)
    assert pinger.interval == 0.01
    assert pinger.start()
    try:
        assert ns.recv() == ["WATCHDOG=1"]
        assert ns.recv() == ["WATCHDOG=1"]

        with lock:
            state["healthy"] = False
            seen = state["calls"]
        # A check that began before the flip may still ping once; let it finish, then drain.
        assert wait_for(lambda: calls() >= seen + 2)
        ns.pending()
        seen = calls()
        assert wait_for(lambda: calls() >= seen + 5)
        assert ns.pending() == [], "WATCHDOG=1 was sent while healthy() was False"

        with lock:
            state["healthy"] = True
        assert ns.recv() == ["WATCHDOG=1"]
    finally:
        started = time.monotonic()
        pinger.stop()
        assert time.monotonic() - started < 1.0
    assert not pinger.alive()


def test_pinger_treats_a_raising_health_check_as_unhealthy(listener):
    ns, address = listener
    calls = []

    def broken() -> bool:
        calls.append(1)
        raise RuntimeError("queue gone")

    pinger = WatchdogPinger(SystemdNotifier({"NOTIFY_SOCKET": address}), broken, interval=0.01)
    assert pinger.start()
    assert wait_for(lambda: len(calls) >= 3)
    pinger.stop()
    assert ns.pending() == []
    assert pinger.pings == 0


def test_pinger_stop_is_prompt_with_a_long_interval(listener):
    ns, address = listener
    pinger = WatchdogPinger(
        SystemdNotifier({"NOTIFY_SOCKET": address}), lambda: True, interval=3600
    )
    assert pinger.start()
    assert ns.recv() == ["WATCHDOG=1"]  # the first ping goes out at once
    started = time.monotonic()
    pinger.stop()
    assert time.monotonic() - started < 1.0
    assert not pinger.alive()


def test_the_real_daemon_follows_the_type_notify_contract(tmp_path):
    """`notifier run` as systemd starts it: READY, watchdog pings, reload, stop, journal lines."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "smtp: {host: 127.0.0.1, port: 2525, security: none, from: a@example.com, "
        "to: [b@example.com]}\n"
    )
    config.chmod(0o600)
    with tempfile.TemporaryDirectory(prefix="sdn") as d:
        ns = NotifySocket(os.path.join(d, "notify"))
        read_fd, write_fd = os.pipe()
        st = os.fstat(write_fd)
        env = dict(
            os.environ,
            NOTIFY_SOCKET=os.path.join(d, "notify"),
            WATCHDOG_USEC="200000",
            JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}",
            PYTHONPATH=str(Path(__file__).resolve().parent.parent),
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "notifier", "run", "-c", str(config)],
            env=env,
            stderr=write_fd,
            stdin=subprocess.DEVNULL,
        )
        os.close(write_fd)
        try:
            seen: list[str] = []

            def until(assignment: str) -> None:
                while assignment not in seen:
                    seen.extend(ns.recv())

            until("READY=1")
            seen.clear()
            until("WATCHDOG=1")
            daemon.send_signal(signal.SIGHUP)
            seen.clear()
            until("RELOADING=1")
            assert any(a.startswith("MONOTONIC_USEC=") for a in seen)
            until("READY=1")
            daemon.send_signal(signal.SIGTERM)
            until("STOPPING=1")
            assert daemon.wait(timeout=30) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
            ns.sock.close()
        with os.fdopen(read_fd, encoding="utf-8") as pipe:
            journal = pipe.read()
    lines = journal.splitlines()
    assert lines and all(line[:3] in ("<6>", "<4>", "<3>", "<7>", "<2>") for line in lines), journal
    assert any(line.startswith("<6>") and "running" in line for line in lines), journal
