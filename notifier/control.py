"""The daemon's local socket: `notifier send` posts events, `notifier status` asks for state.

A Unix stream socket in state_dir, mode 0600, and every peer's uid checked
(SO_PEERCRED): only root and the daemon's own user may talk to it. One JSON
request line (at most 64 KiB), one JSON answer line.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("notifier.control")

MAX_REQUEST = 64 * 1024
SOCKET_NAME = "notifier.sock"


def socket_path(state_dir: str) -> Path:
    return Path(state_dir) / SOCKET_NAME


class ControlServer:
    """Serves requests with `handler(request) -> answer` on a thread of its own."""

    def __init__(self, state_dir: str, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.path = socket_path(state_dir)
        self.handler = handler
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> None:
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):
                raise RuntimeError(
                    f"another notifier is already running with this state_dir ({self.path} answers)"
                )
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(128)  # a burst of cron jobs sending at once must not find it full
        self._sock = sock
        self._thread = threading.Thread(target=self._loop, name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        assert self._sock is not None
        while not self._stopped:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._stopped:
                    return
                continue
            threading.Thread(
                target=self._serve, args=(conn,), name="control-conn", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                uid = _peer_uid(conn)
                if uid not in (0, os.getuid()):
                    log.warning("refused a control connection from uid %d", uid)
                    _reply(
                        conn,
                        {
                            "ok": False,
                            "error": "permission denied: only root and the daemon's user may use this socket",
                        },
                    )
                    return
                request = _read_request(conn)
                answer = self.handler(request)
            except _BadRequest as exc:
                answer = {"ok": False, "error": str(exc)}
            except Exception as exc:
                log.exception("control request failed")
                answer = {"ok": False, "error": f"internal error: {type(exc).__name__}"}
            try:
                _reply(conn, answer)
            except OSError:
                pass


class _BadRequest(Exception):
    pass


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def _read_request(conn: socket.socket) -> dict[str, Any]:
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise _BadRequest(f"request too large (limit {MAX_REQUEST} bytes)")
    line = data.split(b"\n", 1)[0]
    if len(line) > MAX_REQUEST:
        raise _BadRequest(f"request too large (limit {MAX_REQUEST} bytes)")
    try:
        request = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _BadRequest("malformed request: expected one line of JSON") from None
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        raise _BadRequest("malformed request: expected an object with an 'op'")
    return request


def _reply(conn: socket.socket, answer: dict[str, Any]) -> None:
    conn.sendall(json.dumps(answer, ensure_ascii=False).encode() + b"\n")


def _answers(path: Path) -> bool:
    try:
        request(path, {"op": "ping"}, timeout=2)
        return True
    except (OSError, ValueError):
        return False


def request(path: Path, payload: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
    """Send one request to a running daemon; OSError when none listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock.connect(str(path))
                break
            except BlockingIOError:  # the backlog is full for a moment: the daemon is accepting
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        sock.sendall(json.dumps(payload, ensure_ascii=False).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data.decode("utf-8"))
