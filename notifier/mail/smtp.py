"""The SMTP client: one verified TLS session carries every ready mail, failures in words.

Promises: certificates are always verified (system store plus `ca_file`);
STARTTLS fails closed; AUTH only inside TLS; the password never reaches a log,
the `-v` dialogue or an exception. Every failure becomes an `SmtpError` that says
whether to retry (`transient`) and what a sysadmin should do. The transactions
themselves (MAIL, RCPT, DATA, pipelined or not) are in `transactions.py`.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import select
import smtplib
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator

from notifier.mail.delivery import Envelope, Outcome, SmtpSettings
from notifier.mail.smtp_errors import SmtpError, classify, explain, reply_error, reply_text
from notifier.mail.tls import tls_context
from notifier.mail.transactions import Transactions

# SmtpError and explain live in smtp_errors, the plain types in delivery; all are part of this
# module's API too.
__all__ = ["Envelope", "Outcome", "SmtpError", "SmtpSession", "SmtpSettings", "deliver", "explain"]

Debug = Callable[[str], None]
MASK = "********"
APP_PASSWORD_HINT = (
    "check smtp.username, and use an app password if the account has 2-step verification"
)


class _Dialogue:
    """Mixin for smtplib clients: every command and reply goes to `debug`, credentials masked."""

    ehlo_msg = "EHLO"
    debug: Debug | None = None
    scrub: Callable[[str], str] = staticmethod(lambda text: text)
    _shown_instead: str | None = None  # what the log shows for the next command

    def send_hidden(self, line: str, shown: str) -> tuple[int, bytes]:
        """Send a command carrying credentials; the dialogue shows `shown` instead."""
        self._shown_instead = shown
        return self.docmd(line)  # type: ignore[attr-defined]

    def send_pipelined(self, message: bytes, lines: list[str]) -> None:
        """A message (on the wire, ending with its dot) and commands, in one write (PIPELINING);
        each shows in the dialogue."""
        if self.debug is not None and message:
            if message != b".\r\n":
                self.debug(f"C: [message, {len(message)} bytes]")
            self.debug("C: .")
        for line in lines:
            if "\r" in line or "\n" in line:
                raise ValueError(f"a line break in the SMTP command {line!r}")
            if self.debug is not None:
                self.debug("C: " + self.scrub(line))
        self.send(message + "".join(line + "\r\n" for line in lines).encode("ascii"))  # type: ignore[attr-defined]

    def putcmd(self, cmd: str, args: str = "") -> None:
        if self.debug is not None:
            line = self._shown_instead or (f"{cmd} {args}" if args else cmd)
            self.debug("C: " + self.scrub(line))
        self._shown_instead = None
        super().putcmd(cmd, args)  # type: ignore[misc]

    def getreply(self) -> tuple[int, bytes]:
        if self.file is None:  # where smtplib would make its own reader (connect, STARTTLS)
            self.file = _ReplyReader(self.sock)  # type: ignore[attr-defined]
        code, msg = super().getreply()  # type: ignore[misc]
        if self.debug is not None:
            lines = msg.decode("utf-8", "replace").split("\n")
            for i, text in enumerate(lines):
                sep = " " if i == len(lines) - 1 else "-"
                self.debug(self.scrub(f"S: {code}{sep}{text}".rstrip()))
        return code, msg


class _ReplyReader:
    """smtplib's reader of server replies (its `file`), which can also tell whether a reply
    has already arrived: with PIPELINING that decides when an outcome is recorded."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def readline(self, limit: int = -1) -> bytes:
        while (end := self._buf.find(b"\n")) < 0 and not 0 < limit <= len(self._buf):
            chunk = self._sock.recv(65536)
            if not chunk:
                break
            self._buf += chunk
        n = end + 1 if end >= 0 else len(self._buf)
        n = min(n, limit) if limit > 0 else n
        line = bytes(self._buf[:n])
        del self._buf[:n]
        return line

    def arrived(self) -> bool:
        """Whether reading a reply now would return without waiting for the server."""
        if b"\n" in self._buf or getattr(self._sock, "pending", lambda: 0)():
            return True
        return bool(select.select([self._sock], [], [], 0)[0])

    def close(self) -> None:
        self._buf.clear()


class _PlainClient(_Dialogue, smtplib.SMTP):
    pass


class _TlsClient(_Dialogue, smtplib.SMTP_SSL):
    pass


class SmtpSession(Transactions):
    """One SMTP connection: connect, TLS, EHLO and AUTH on enter, QUIT on exit."""

    def __init__(self, settings: SmtpSettings, password: str | None, debug: Debug | None = None):
        self.settings = settings
        self._password = password or None
        self._debug = debug
        self._client: _PlainClient | _TlsClient | None = None
        self._stage = "connecting"
        self._open_transaction = False  # a transaction the server has not finished
        self._accepted = 0  # recipients the server took in the current transaction
        self._unanswered = 0  # pipelined commands and messages whose reply was not read yet
        self._broken = False  # after a drop or timeout the connection cannot say QUIT
        self._secrets: list[str] = []
        if self._password:
            user = (settings.username or "").encode()
            pw = self._password.encode()
            blobs = (pw, b"\0" + user + b"\0" + pw, user + b"\0" + pw)
            self._secrets = [self._password] + [base64.b64encode(b).decode() for b in blobs]

    def __repr__(self) -> str:
        s = self.settings
        return f"SmtpSession({s.where}, security={s.security}, username={s.username!r})"

    # -- session ------------------------------------------------------------------
    def __enter__(self) -> SmtpSession:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """QUIT (briefly, if the connection still works) and close the socket."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            # With replies outstanding the server may be reading a message: only closing the
            # connection (no QUIT, no dot) makes sure it is thrown away.
            if not self._broken and not self._unanswered and client.sock is not None:
                client.sock.settimeout(min(self.settings.timeout, 5.0))
                client.docmd("QUIT")
        except (OSError, smtplib.SMTPException):
            pass  # every outcome is already reported; a failed goodbye changes nothing
        finally:
            client.close()

    def _open(self) -> None:
        s = self.settings
        if s.security == "none" and self._password:
            raise SmtpError(
                f"security: none would send the password for {s.where} in clear, so notifier "
                "refuses; use security: tls (port 465) or starttls (port 587), or a relay "
                "without login",
                transient=False,
            )
        if s.username and not self._password and s.security != "none":
            raise SmtpError(
                f"no password found for smtp.username {s.username}: store it with `notifier "
                "set-password`, in smtp.password_file, or as the systemd credential smtp-password",
                transient=False,
            )
        ctx = tls_context(s.ca_file) if s.security != "none" else None
        with self._step("connecting"):
            if s.security == "tls":
                client: _PlainClient | _TlsClient = _TlsClient(
                    local_hostname=s.local_hostname, timeout=s.timeout, context=ctx
                )
            else:
                client = _PlainClient(local_hostname=s.local_hostname, timeout=s.timeout)
            client._host = s.host  # the name the certificate must match
            client.debug, client.scrub = self._debug, self._scrub
            self._client = client
            self._info(f"connecting to {s.where} ({s.security})")
            code, msg = client.connect(s.host, s.port)
        if code != 220:
            raise self._reply_error(code, msg, "the greeting")
        if s.security == "tls":
            self._info_tls()
        self._ehlo()
        if s.security == "starttls":
            if not client.has_extn("starttls"):
                raise SmtpError(
                    f"{s.where} did not offer STARTTLS; refusing to send the password or any "
                    "mail in clear. Use port 465 with security: tls, or ask your provider.",
                    transient=False,
                )
            with self._step("STARTTLS"):
                client.starttls(context=ctx)  # raises on a reply other than 220
            self._info_tls()
            self._ehlo()
        if s.username and s.security != "none":
            self._login(client, s.username, self._password or "")

    def _ehlo(self) -> None:
        client = self._require_client()
        with self._step("EHLO"):
            code, msg = client.ehlo()
            if code != 250 and self.settings.security == "none" and 500 <= code < 600:
                code, msg = client.helo()  # an old relay on loopback: plain HELO will do
        if code != 250:
            raise self._reply_error(code, msg, "EHLO")

    def _login(self, client: _PlainClient | _TlsClient, username: str, password: str) -> None:
        mechanisms = client.esmtp_features.get("auth", "").upper().split()
        where = self.settings.where
        if not mechanisms:
            raise SmtpError(
                f"{where} does not offer AUTH; check smtp.host and smtp.port, or remove "
                "smtp.username if this relay needs no login",
                transient=False,
            )
        user, pw = username.encode(), password.encode()
        with self._step("AUTH"):
            if "PLAIN" in mechanisms:
                blob = base64.b64encode(b"\0" + user + b"\0" + pw).decode()
                code, msg = client.send_hidden(f"AUTH PLAIN {blob}", f"AUTH PLAIN {MASK}")
                if code == 334:  # a server that wants the credentials after an empty challenge
                    code, msg = client.send_hidden(blob, MASK)
            elif "LOGIN" in mechanisms:
                first = base64.b64encode(user).decode()
                code, msg = client.send_hidden(f"AUTH LOGIN {first}", f"AUTH LOGIN {MASK}")
                if code == 334:
                    code, msg = client.send_hidden(base64.b64encode(pw).decode(), MASK)
            else:
                raise SmtpError(
                    f"{where} offers only AUTH {' '.join(mechanisms)}; notifier speaks PLAIN "
                    "and LOGIN (inside TLS). Ask your provider for one of them",
                    transient=False,
                )
        if code == 235:
            return
        if code in (535, 534):
            raise SmtpError(
                self._scrub(
                    f"authentication failed ({code} {reply_text(msg)}): {APP_PASSWORD_HINT}"
                ),
                transient=False,
                code=code,
            )
        raise self._reply_error(code, msg, "AUTH")

    def _reply_arrived(self) -> bool:
        reader = self._require_client().file
        return isinstance(reader, _ReplyReader) and reader.arrived()

    # -- helpers --------------------------------------------------------------------
    def _require_client(self) -> _PlainClient | _TlsClient:
        if self._client is None:
            raise SmtpError(
                f"not connected to {self.settings.where} (use SmtpSession as a context manager)",
                transient=True,
            )
        if self._broken:
            raise SmtpError(
                f"the connection to {self.settings.where} was lost earlier; will retry",
                transient=True,
            )
        return self._client

    def _command(self, stage: str, line: str) -> tuple[int, bytes]:
        client = self._require_client()
        with self._step(stage):
            code, msg = client.docmd(line)
        if code == 421:
            self._broken = True  # the server is closing; QUIT would only time out
        return code, msg

    @contextlib.contextmanager
    def _step(self, stage: str) -> Iterator[None]:
        """Name the protocol step, and turn anything that goes wrong in it into an SmtpError."""
        self._stage = stage
        try:
            yield
        except SmtpError:
            raise
        except (OSError, smtplib.SMTPException, ValueError) as exc:
            self._broken = True
            error = classify(exc, self.settings, stage)
            error.reason = self._scrub(error.reason)
            error.args = (error.reason,)
            raise error from None  # no chained server text: it might echo credentials

    def _reply_error(self, code: int, msg: bytes | str, stage: str) -> SmtpError:
        error = reply_error(code, reply_text(msg), self.settings, stage)
        error.reason = self._scrub(error.reason)
        error.args = (error.reason,)
        return error

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def _info(self, line: str) -> None:
        if self._debug is not None:
            self._debug(f"* {line}")

    def _info_tls(self) -> None:
        sock = self._require_client().sock
        if isinstance(sock, ssl.SSLSocket):
            cipher = (sock.cipher() or ("?",))[0]
            self._info(f"{sock.version()} {cipher}; certificate of {self.settings.host} verified")


def deliver(
    settings: SmtpSettings,
    password: str | None,
    envelopes: Iterable[Envelope],
    on_outcome: Callable[[Outcome], None],
    debug: Debug | None = None,
) -> None:
    """Send every envelope through one session; `on_outcome` right after each final answer.

    Connects only if there is something to send. A session failure or a 4xx
    raises SmtpError after the outcomes already reported; the rest stays queued.
    """
    pending = iter(envelopes)
    first = next(pending, None)
    if first is None:
        return
    with SmtpSession(settings, password, debug) as session:
        session.send_all(itertools.chain([first], pending), on_outcome)
