"""The local `send`/`status` socket under attack: other users, oversized and malformed
requests, hostile field values. The daemon must refuse, answer in words, and keep working."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from notifier.control import MAX_REQUEST, request, socket_path
from tests.helpers import wait_for

from .rigging import assert_no_secret

NOBODY = 65534
# A child that starts as root (the interpreter may live where nobody cannot exec it), imports
# what it needs, drops to nobody, and reports what the socket did as one JSON line.
AS_NOBODY = """
import json, os, socket, sys
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
out = {"uid": os.getuid()}
try:
    s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])
    try:  # the daemon may refuse and close before reading a byte
        s.sendall(json.dumps({"op": sys.argv[2], "event": {"source": "x", "check": "x",
                  "key": "nobody", "severity": "critical", "summary": "sent by nobody"}}).encode() + b"\\n")
    except OSError:
        pass
    out["answer"] = s.makefile("rb").readline().decode()
except OSError as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def as_nobody(path: str, op: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", AS_NOBODY, path, op], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def raw_request(path: str, payload: bytes, timeout: float = 10) -> bytes:
    """Send bytes as they are; the answer line, or b'' if the daemon closed on us."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            return s.makefile("rb").readline()
        except ConnectionResetError:
            return b""


@pytest.fixture
def public_dir():
    """A directory every user can traverse (pytest's tmp_path sits in a root-only one)."""
    d = Path(tempfile.mkdtemp(prefix="notifier-rel-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


def test_other_users_cannot_reach_the_socket_nor_pass_its_uid_check(rig, public_dir):
    rig.state = public_dir / "state"
    rig.configure()
    daemon = rig.start()
    path = str(socket_path(str(rig.state)))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(rig.state).st_mode) == 0o700
    for op in ("send", "status"):
        got = as_nobody(path, op)
        assert got["uid"] == NOBODY and "PermissionError" in got.get("error", ""), got
    # Even if an admin opened the modes up, the daemon checks the peer's uid (SO_PEERCRED).
    os.chmod(rig.state, 0o755)
    os.chmod(path, 0o666)
    for op in ("send", "status"):
        got = as_nobody(path, op)
        assert "answer" in got, got
        answer = json.loads(got["answer"])
        assert (
            answer == {"ok": False, "error": answer["error"]}
            and "permission denied" in answer["error"]
        )
    wait_for(
        lambda: "refused a control connection from uid 65534" in daemon.log(), 10, "the refusal log"
    )
    # Nothing nobody sent was taken: the next mail is the root user's, alone.
    rig.send("sent by root", "info")
    (m,) = rig.catcher.wait_for(1, timeout=20)
    assert "sent by root" in m.message["Subject"]
    assert all("nobody" not in str(a.message["Subject"]) for a in rig.catcher.messages)


MALFORMED = {
    "not-json": b"hello daemon\n",
    "json-array": b'["send"]\n',
    "op-not-text": b'{"op": 1}\n',
    "unknown-op": b'{"op": "read_password"}\n',
    "path-op": b'{"op": "../../etc/shadow"}\n',
    "invalid-utf8": b'{"op": "send", "event": {"summary": "\xff\xfe"}}\n',
    "oversized-line": b'{"op": "send", "pad": "' + b"x" * (MAX_REQUEST + 10) + b'"}\n',
    "oversized-no-newline": b"y" * (4 * MAX_REQUEST),
    "empty": b"",
    "only-newline": b"\n",
    "deep-nesting": b'{"op": "send", "event": ' + b"[" * 50000 + b"]" * 50000 + b"}\n",
    "event-not-object": b'{"op": "send", "event": "x"}\n',
    "event-missing-source": b'{"op": "send", "event": {"check": "c", "summary": "s"}}\n',
    "bad-severity": b'{"op": "send", "event": {"source": "s", "check": "c", "severity": "doom"}}\n',
    "bad-state": b'{"op": "send", "event": {"source": "s", "check": "c", "state": "exploded"}}\n',
    "count-text": b'{"op": "send", "event": {"source": "s", "check": "c", "count": "many"}}\n',
    "count-negative": b'{"op": "send", "event": {"source": "s", "check": "c", "count": -5}}\n',
    "count-zero": b'{"op": "send", "event": {"source": "s", "check": "c", "count": 0}}\n',
    "time-nan": b'{"op": "send", "event": {"source": "s", "check": "c", "time": NaN}}\n',
    "time-text": b'{"op": "send", "event": {"source": "s", "check": "c", "time": "soon"}}\n',
    "first-time-text": b'{"op": "send", "event": {"source": "s", "check": "c", "first_time": "abc"}}\n',
    "details-text": b'{"op": "send", "event": {"source": "s", "check": "c", "details": "abc"}}\n',
}


def test_malformed_and_oversized_requests_are_refused_and_the_daemon_keeps_working(rig):
    rig.configure(policy={"max_per_hour": 3600, "burst": 100})
    daemon = rig.start()
    path = str(socket_path(str(rig.state)))
    refused = {}
    for name, payload in MALFORMED.items():
        started = time.monotonic()
        answer = raw_request(path, payload)
        refused[name] = answer
        assert time.monotonic() - started < 8, f"{name}: the daemon took too long to answer"
        if answer:  # a peer that floods may be cut off instead of answered
            parsed = json.loads(answer)
            assert parsed["ok"] is False and parsed["error"], (name, parsed)
            assert "Traceback" not in parsed["error"]
        else:
            assert name in ("oversized-no-newline", "empty"), f"{name}: no answer at all"
        assert daemon.proc.poll() is None, f"{name} killed the daemon:\n{daemon.log()}"
    # Values that are well-formed but hostile are taken, cleaned, and mailed.
    for summary in ("lone surrogate \udc81 here", "nul \0 here", "z" * 60000):
        payload = json.dumps(
            {
                "op": "send",
                "event": {
                    "source": "sock",
                    "check": "odd",
                    "key": summary[:20],
                    "summary": summary,
                },
            }
        )
        answer = json.loads(raw_request(path, payload.encode() + b"\n"))
        assert answer["ok"] is True, (summary[:30], answer)
    # The daemon still works: a normal event is delivered with the right count.
    for _ in range(3):
        assert request(
            socket_path(str(rig.state)),
            {
                "op": "send",
                "event": {
                    "source": "sock",
                    "check": "after",
                    "key": "k",
                    "severity": "critical",
                    "summary": "after the garbage",
                },
            },
        )["ok"]
    wait_for(
        lambda: any("after the garbage" in str(m.message["Subject"]) for m in rig.catcher.messages),
        20,
        "the mail sent after the garbage",
    )
    subjects = [str(m.message["Subject"]) for m in rig.catcher.messages]
    assert sum("after the garbage" in s for s in subjects) >= 1
    assert any("lone surrogate" in s for s in subjects) and any("nul" in s for s in subjects)
    status = daemon.status()
    assert status["running"] and not status.get("spool_error"), status
    assert daemon.proc.poll() is None


def test_idle_and_many_connections_do_not_block_the_socket(rig):
    daemon = rig.start()
    path = str(socket_path(str(rig.state)))
    idle = []
    for _ in range(200):  # connections that never say a word
        s = socket.socket(socket.AF_UNIX)
        wait_for(lambda s=s: s.connect_ex(path) == 0, 10, "a free slot in the backlog")
        idle.append(s)
    try:
        started = time.monotonic()
        assert request(socket_path(str(rig.state)), {"op": "ping"}, timeout=5)["ok"]
        assert time.monotonic() - started < 2
    finally:
        for s in idle:
            s.close()
    assert daemon.proc.poll() is None


def test_status_through_the_socket_holds_no_secret(rig):
    daemon = rig.start()
    rig.send("something to report", "critical", "--state", "problem", "--key", "k1")
    rig.catcher.wait_for(1, timeout=20)
    answer = request(socket_path(str(rig.state)), {"op": "status"})
    text = json.dumps(answer, ensure_ascii=False)
    assert answer["ok"] and answer["status"]["active_alerts"]
    assert_no_secret(text, "the status answer")
    assert str(rig.password_file) not in text or "password" not in text.lower()
    assert daemon.proc.poll() is None


@pytest.mark.parametrize("bad", ["symlink", "regular-file"])
def test_something_else_at_the_socket_path_is_replaced_not_followed(rig, bad, tmp_path):
    rig.state.mkdir(mode=0o700)
    path = socket_path(str(rig.state))
    target = tmp_path / "precious"
    target.write_text("keep me")
    if bad == "symlink":
        path.symlink_to(target)
    else:
        path.write_text("stale")
    daemon = rig.start()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert target.read_text() == "keep me"
    assert daemon.proc.poll() is None
