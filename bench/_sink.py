#!/usr/bin/env python3
"""A fast SMTP sink for the backlog benchmark, in the spirit of Postfix's `smtp-sink`.

Implicit TLS (the `ssl` module, so the handshake is OpenSSL's C), AUTH PLAIN/LOGIN with one
account, PIPELINING, SIZE; each mail is read whole and only its Message-ID is kept, one line
appended to `ids` before the 250. Replies wait until the next read would block and then go
in one write, as Postfix's smtpd answers pipelined commands. A thread per connection and no
parsing beyond that: its cost per mail is a few tens of microseconds, like an MTA's front end,
so the benchmark measures the client (what a new connection per mail costs), not the server. notifier.catcher (aiosmtpd,
which parses every mail) spends ~2-3 ms a mail, more than a TLS handshake; the benchmark runs
against it too, for the record.

    python bench/_sink.py PORT CERT_DIR IDS_FILE USER PASSWORD

It writes "ready" to stdout once listening and runs until killed.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import ssl
import sys
import threading

EHLO = (
    b"250-sink.localhost\r\n250-PIPELINING\r\n250-SIZE 10485760\r\n"
    b"250-AUTH PLAIN LOGIN\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
)

MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*([^\r\n]*)")


class Sink:
    def __init__(self, port: int, cert_dir: str, ids: str, user: str, password: str) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(os.path.join(cert_dir, "server.pem"))
        self.plain = b"\0" + user.encode() + b"\0" + password.encode()
        self.user, self.password = user.encode(), password.encode()
        self.ids = open(ids, "ab", buffering=0)  # noqa: SIM115 - lives as long as the process
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", port), backlog=128)

    def serve(self) -> None:
        print("ready", flush=True)
        while True:
            conn, _ = self.listener.accept()
            threading.Thread(target=self.session, args=(conn,), daemon=True).start()

    def session(self, raw: socket.socket) -> None:
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.ctx.wrap_socket(raw, server_side=True) as conn:
                self.dialogue(_Lines(conn))
        except (OSError, ValueError):
            pass  # a client that went away

    def dialogue(self, io: _Lines) -> None:
        io.reply(b"220 sink.localhost ESMTP\r\n")
        authed, rcpts, sender = False, 0, False
        while True:
            line = io.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                io.reply(EHLO)
            elif verb == b"AUTH":
                answer = self.auth(io, line)
                authed = answer.startswith(b"235")
                io.reply(answer)
            elif verb == b"MAIL":
                sender, rcpts = authed, 0
                io.reply(b"250 2.1.0 OK\r\n" if authed else b"530 5.7.0 AUTH first\r\n")
            elif verb == b"RCPT":
                rcpts += sender
                io.reply(b"250 2.1.5 OK\r\n" if sender else b"503 5.5.1 MAIL first\r\n")
            elif verb == b"DATA":
                if not rcpts:
                    io.reply(b"554 5.5.1 no valid recipients\r\n")
                    continue
                io.reply(b"354 go ahead\r\n")
                message = io.read_message()
                if message is None:
                    return
                found = MESSAGE_ID.search(message.split(b"\r\n\r\n", 1)[0])
                with self.lock:
                    self.ids.write((found.group(1).strip() if found else b"-") + b"\n")
                io.reply(b"250 2.0.0 queued\r\n")
                sender, rcpts = False, 0
            elif verb == b"RSET":
                sender, rcpts = False, 0
                io.reply(b"250 2.0.0 OK\r\n")
            elif verb == b"NOOP":
                io.reply(b"250 2.0.0 OK\r\n")
            elif verb == b"QUIT":
                io.reply(b"221 2.0.0 bye\r\n")
                io.flush()
                return
            else:
                io.reply(b"502 5.5.2 not implemented\r\n")

    def auth(self, io: _Lines, line: bytes) -> bytes:
        parts = line.split()
        mech = parts[1].upper() if len(parts) > 1 else b""

        def ask(prompt: bytes) -> bytes:
            io.reply(b"334 " + prompt + b"\r\n")
            return io.readline().strip()

        try:
            if mech == b"PLAIN":
                blob = parts[2] if len(parts) > 2 else ask(b"")
                ok = base64.b64decode(blob) == self.plain
            elif mech == b"LOGIN":
                user = base64.b64decode(parts[2] if len(parts) > 2 else ask(b"VXNlcm5hbWU6"))
                pw = base64.b64decode(ask(b"UGFzc3dvcmQ6"))
                ok = (user, pw) == (self.user, self.password)
            else:
                return b"504 5.5.4 unknown mechanism\r\n"
        except ValueError:
            return b"501 5.5.2 bad base64\r\n"
        return b"235 2.7.0 OK\r\n" if ok else b"535 5.7.8 bad credentials\r\n"


class _Lines:
    """Lines in, replies out. Replies wait until the next read would block, then go in one
    write: the answers to pipelined commands travel together, as Postfix's smtpd sends them."""

    def __init__(self, conn: ssl.SSLSocket) -> None:
        self.conn = conn
        self.buf = bytearray()
        self.out: list[bytes] = []

    def reply(self, line: bytes) -> None:
        self.out.append(line)

    def flush(self) -> None:
        if self.out:
            self.conn.sendall(b"".join(self.out))
            self.out.clear()

    def _fill(self) -> bool:
        if not self.conn.pending():  # nothing decrypted is waiting: we would block
            self.flush()
        chunk = self.conn.recv(1 << 16)
        self.buf += chunk
        return bool(chunk)

    def readline(self) -> bytes:
        while (end := self.buf.find(b"\n")) < 0:
            if len(self.buf) > 4096 or not self._fill():
                return b""
        line = bytes(self.buf[: end + 1])
        del self.buf[: end + 1]
        return line

    def read_message(self) -> bytes | None:
        """The message up to the line with the lone dot (left dot-stuffed: it is thrown away)."""
        start = 0
        while (end := self.buf.find(b"\r\n.\r\n", start)) < 0:
            if self.buf.startswith(b".\r\n"):  # an empty message
                del self.buf[:3]
                return b""
            start = max(0, len(self.buf) - 4)
            if not self._fill():
                return None
        message = bytes(self.buf[: end + 2])
        del self.buf[: end + 5]
        return message


if __name__ == "__main__":
    port, cert_dir, ids, user, password = sys.argv[1:6]
    Sink(int(port), cert_dir, ids, user, password).serve()
