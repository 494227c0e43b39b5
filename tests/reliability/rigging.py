"""What the reliability tests share: one distinctive password and the grep for it, the Rig
that runs the real daemon and CLI against a real catcher, and servers that fail on purpose."""

from __future__ import annotations

import base64
import email
import email.policy
import itertools
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from notifier.catcher import Catcher
from tests.helpers import DaemonProcess, run_cli, smtp_section, write_config

USER = "alerts@example.com"
# Distinctive, non-ASCII and awkward to quote: if it shows up anywhere, the grep finds it.
PASSWORD = 'Rlb-7f!Qz"pässwörd"#k9-NEVER-LEAK'

# What the secret grep covered, for the figures printed at the end of the run.
SCANNED = {"files": 0, "bytes": 0, "texts": 0, "leaks": 0}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def password_forms(password: str = PASSWORD, user: str = USER) -> list[bytes]:
    """Every byte string that would betray the password: raw, escaped, and base64 as AUTH
    PLAIN/LOGIN send it, including the part of the base64 that encodes only the password
    whatever precedes it (three byte alignments)."""
    raw = password.encode()
    texts = {
        password,
        json.dumps(password)[1:-1],
        json.dumps(password, ensure_ascii=False)[1:-1],
        repr(password)[1:-1],
        ascii(password)[1:-1],
        _b64(raw),
        _b64(b"\0" + user.encode() + b"\0" + raw),
        _b64(user.encode() + b"\0" + raw),
    }
    for lead in range(3):
        encoded = _b64(b"\0" * lead + raw)
        first = -(-8 * lead // 6)
        last = (8 * (lead + len(raw)) - 6) // 6
        texts.add(encoded[first : last + 1])
    forms = {t.encode() for t in texts}
    forms.add(password.encode("latin-1", "replace"))
    return sorted(forms, key=len, reverse=True)


FORMS = password_forms()


def leaks_in(data: bytes | str) -> list[bytes]:
    """The password forms found in `data`."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return [f for f in FORMS if f in data]


def assert_no_secret(data: bytes | str, where: str = "output") -> None:
    """Fail if the password appears in `data` in any form."""
    SCANNED["texts"] += 1
    found = leaks_in(data)
    SCANNED["leaks"] += bool(found)
    assert not found, f"the SMTP password leaked into {where} (as {found[0][:12]!r}…)"


def scan_tree(root: Path, skip: set[Path]) -> None:
    """Grep every file under `root` (logs, CLI output, mails, spool.db and its WAL)."""
    for path in sorted(root.rglob("*")):
        if path in skip or not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        SCANNED["files"] += 1
        SCANNED["bytes"] += len(data)
        found = leaks_in(data)
        SCANNED["leaks"] += bool(found)
        assert not found, f"the SMTP password leaked into {path} (as {found[0][:12]!r}…)"


class Rig:
    """A config, a root-only password file, a state_dir and a catcher; runs the real daemon
    and the real CLI, keeping every log and every CLI output in the test's directory."""

    def __init__(self, tmp: Path, catcher: Catcher) -> None:
        self.tmp = tmp
        self.catcher = catcher
        self.state = tmp / "state"
        self.config = tmp / "config.yaml"
        self.password_file = tmp / "smtp-password"
        self.password_file.write_text(PASSWORD + "\n")
        os.chmod(self.password_file, 0o600)
        self.daemons: list[DaemonProcess] = []
        self._seq = itertools.count(1)
        self.configure()

    def configure(self, smtp: dict[str, Any] | None = None, **top: Any) -> Path:
        """(Re)write the config: the catcher with AUTH, plus any overrides."""
        over = {"username": USER, "password_file": str(self.password_file), **(smtp or {})}
        section = smtp_section(self.catcher, **over)
        section = {k: v for k, v in section.items() if v is not None}
        return write_config(self.config, section, self.state, **top)

    def start(
        self, wait: bool = True, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> DaemonProcess:
        log = self.tmp / f"daemon-{next(self._seq):03d}.log"
        daemon = DaemonProcess(self.config, self.state, log, env=env, args=args)
        self.daemons.append(daemon)
        return daemon.wait_ready() if wait else daemon

    def cli(
        self, *args: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """`notifier ARGS`; its output is kept in a file for the secret grep."""
        out = run_cli(*args, input=input, timeout=timeout)
        record = self.tmp / f"cli-{next(self._seq):03d}.out"
        record.write_text(
            f"$ notifier {' '.join(args)}\nexit {out.returncode}\n{out.stdout}\n{out.stderr}",
            errors="surrogateescape",
        )
        return out

    def send(
        self, subject: str, severity: str = "warning", *more: str
    ) -> subprocess.CompletedProcess[str]:
        out = self.cli(
            "send", "-c", str(self.config), "--severity", severity, "--subject", subject, *more
        )
        assert out.returncode == 0, out.stderr
        return out

    def status(self) -> dict[str, Any]:
        out = self.cli("status", "-c", str(self.config), "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def close(self) -> None:
        for daemon in self.daemons:
            if not daemon._log.closed:
                daemon.stop()


class FaultyProxy:
    """A TCP proxy on 127.0.0.1 in front of a real SMTP server, failing on purpose.

    `mode`: "pass" forwards; "silent" accepts and never answers; "blackhole" forwards until
    the client has sent `after` bytes, then nothing more either way (a server that hangs
    mid-DATA); "reset" does the same but then cuts both sides (a dropped TLS session).
    `refuse()` closes the listening socket (connection refused), `resume()` reopens it on the
    same port. `accepted` holds the monotonic time of every accepted connection.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.after = 0
        self.accepted: list[float] = []
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.port = 0
        self.resume()

    def resume(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(32)
        self.port = sock.getsockname()[1]
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def refuse(self) -> None:
        if self._listener is not None:
            try:  # wakes the thread blocked in accept(); a bare close() would not
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        self.cut_all()

    def cut_all(self) -> None:
        with self._lock:
            for c in self._conns:
                try:
                    c.close()
                except OSError:
                    pass
            self._conns.clear()

    def close(self) -> None:
        self.refuse()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.accepted.append(time.monotonic())
            with self._lock:
                self._conns.append(client)
            mode, after = self.mode, self.after
            if mode == "silent":
                continue  # the kernel completed the handshake; nobody will ever answer
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.append(upstream)
            state = {"sent": 0, "stopped": False}
            for src, dst, counts in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(src, dst, counts, mode, after, state), daemon=True
                ).start()

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        counts: bool,
        mode: str,
        after: int,
        state: dict[str, Any],
    ) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if counts:
                    state["sent"] += len(data)
                    if mode in ("blackhole", "reset") and state["sent"] >= after:
                        # Forward only what comes before the cut-off, then stop.
                        keep = len(data) - (state["sent"] - after)
                        if keep > 0 and not state["stopped"]:
                            dst.sendall(data[:keep])
                        state["stopped"] = True
                        if mode == "reset":
                            for s in (src, dst):
                                s.setsockopt(
                                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                                )
                                s.close()
                            return
                        continue
                if state["stopped"]:
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:  # one side is gone: so is the other
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class RawSmtp:
    """An SMTP server that says exactly what it is told and records every line: for a
    man-in-the-middle that strips STARTTLS, or refuses it, and offers AUTH in clear; with
    `tls` (implicit TLS) and an `auth_reply` holding `{line}`, a server that echoes the
    credentials back in its refusal."""

    def __init__(
        self,
        ehlo_lines: list[str],
        starttls_reply: str = "454 4.7.0 TLS not available",
        tls: ssl.SSLContext | None = None,
        auth_reply: str = "235 2.7.0 ok",
    ) -> None:
        self.ehlo_lines = ehlo_lines
        self.starttls_reply = starttls_reply
        self.tls = tls
        self.auth_reply = auth_reply
        self.lines: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                if self.tls is not None:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                f = conn.makefile("rb")
                conn.sendall(b"220 mitm.example ESMTP\r\n")
                login_password_next = False
                for line in f:
                    line = line.rstrip(b"\r\n")
                    self.lines.append(line)
                    verb = line.split(b" ", 1)[0].upper()
                    if verb in (b"EHLO", b"HELO"):
                        body = ["mitm.example", *self.ehlo_lines]
                        reply = "".join(f"250-{x}\r\n" for x in body[:-1]) + f"250 {body[-1]}\r\n"
                        conn.sendall(reply.encode())
                    elif verb == b"STARTTLS":
                        conn.sendall(self.starttls_reply.encode() + b"\r\n")
                    elif verb == b"QUIT":
                        conn.sendall(b"221 bye\r\n")
                        return
                    elif verb == b"AUTH" and line.upper().startswith(b"AUTH LOGIN"):
                        conn.sendall(b"334 UGFzc3dvcmQ6\r\n")
                        login_password_next = True
                    elif verb == b"AUTH" or login_password_next:
                        login_password_next = False
                        reply = self.auth_reply.replace("{line}", line.decode("ascii", "replace"))
                        conn.sendall(reply.encode() + b"\r\n")
                    else:
                        conn.sendall(b"250 ok\r\n")
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


EVIL = "evil.example"
# What build_message sets, and nothing else, ever.
HEADERS = {
    "Date",
    "Message-ID",
    "From",
    "To",
    "Subject",
    "Auto-Submitted",
    "X-Auto-Response-Suppress",
    "MIME-Version",
    "Content-Type",
    "In-Reply-To",
    "References",
}


def header_block(raw: bytes) -> list[str]:
    """The raw header lines of a message, unfolded."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")  # 7-bit: anything else is a bug
    unfolded: list[str] = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t") and unfolded:
            unfolded[-1] += line
        else:
            unfolded.append(line)
    return unfolded


def check_mail_is_clean(m) -> None:
    """Exactly the intended headers and recipients, at the server."""
    assert m.rcpt_tos == ["admin@example.com"], m.rcpt_tos
    assert m.mail_from == "alerts@example.com"
    lines = header_block(m.data)
    names = [line.split(":", 1)[0] for line in lines]
    assert set(names) <= HEADERS, f"unexpected headers {set(names) - HEADERS}"
    assert len(names) == len(set(names)), f"a header appears twice: {names}"
    for line in lines:  # the Subject shows the text; a Message-ID keeps a sanitized host label
        if not line.startswith(("Subject:", "Message-ID:", "In-Reply-To:", "References:")):
            assert EVIL not in line, line
    assert all(len(line) <= 998 for line in m.data.split(b"\r\n"))
    assert b"\r\n" in m.data and not re.search(rb"[^\r]\n", m.data), "bare LF in the message"
    strict = email.message_from_bytes(m.data, policy=email.policy.strict)
    assert "\n" not in strict["Subject"] and "\r" not in strict["Subject"]
    assert [a.addr_spec for a in strict["To"].addresses] == ["admin@example.com"]
