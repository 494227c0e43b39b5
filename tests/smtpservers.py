"""Shared test helpers for anything that sends mail: real servers and sockets on 127.0.0.1.

The fixtures in conftest.py build on these; import the helpers directly
(`from smtpservers import USER, PASSWORD, make_envelope`).
"""

from __future__ import annotations

import base64
import socket
import threading

from notifier.mail.message import build_message, make_message_id
from notifier.mail.smtp import Envelope

USER = "alerts@example.com"
# Characters that survive naive quoting badly, and non-ASCII: AUTH must carry them intact.
PASSWORD = 'p@ss wörd:"x"-7f3K'
FROM = "nas01 <alerts@example.com>"
TO = "admin@example.com"


def password_forms(user: str = USER, password: str = PASSWORD) -> list[str]:
    """Every form in which the password could leak: plain, and base64 as PLAIN and LOGIN send it."""
    user_b, pw_b = user.encode(), password.encode()
    return [
        password,
        base64.b64encode(pw_b).decode(),
        base64.b64encode(b"\0" + user_b + b"\0" + pw_b).decode(),
        base64.b64encode(user_b + b"\0" + pw_b).decode(),
    ]


def free_port() -> int:
    """A loopback port nothing listens on (bound and released at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SilentServer:
    """A TCP listener on 127.0.0.1 that accepts connections and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)  # the kernel completes the handshake; nobody answers
        self.port = self.sock.getsockname()[1]

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()


class ClosingServer:
    """A TCP listener on 127.0.0.1 that hangs up on every connection at once (a reset)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # the listener was closed
            self.accepted += 1
            # SO_LINGER 0: close with RST, like a crashed server or a middlebox.
            conn.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            conn.close()

    def __enter__(self) -> ClosingServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=5)


def make_envelope(
    subject: str = "disk /srv at 91%",
    to: list[str] | None = None,
    ref: object = None,
    text: str = "The disk is nearly full.\n",
    html: str | None = "<p>The disk is nearly full.</p>",
) -> Envelope:
    """A real message (build_message) in an envelope, from FROM to `to` (default [TO])."""
    to = to or [TO]
    data = build_message(
        mail_from=FROM, to=to, subject=subject, text=text, html=html,
        message_id=make_message_id("nas01"),
    )  # fmt: skip
    return Envelope(mail_from=FROM, rcpt_to=to, data=data, ref=ref)
