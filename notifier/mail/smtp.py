"""The SMTP client: one verified TLS session carries every ready mail, failures in words.

Promises: certificates are always verified (system store plus `ca_file`);
STARTTLS fails closed; AUTH only inside TLS; the password never reaches a log,
the `-v` dialogue or an exception. Every failure becomes an `SmtpError` that says
whether to retry (`transient`) and what a sysadmin should do.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from notifier.config import DEFAULT_PORTS
from notifier.mail.message import bare_address
from notifier.mail.smtp_errors import SmtpError, classify, explain, reply_error, reply_text

# SmtpError and explain live in smtp_errors; they are part of this module's API too.
__all__ = ["Envelope", "Outcome", "SmtpError", "SmtpSession", "SmtpSettings", "deliver", "explain"]

Debug = Callable[[str], None]
MASK = "********"
APP_PASSWORD_HINT = (
    "check smtp.username, and use an app password if the account has 2-step verification"
)


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to connect; holds no secret."""

    host: str
    port: int
    security: str  # "tls" | "starttls" | "none"
    username: str | None = None
    ca_file: str | None = None
    timeout: float = 30.0
    local_hostname: str | None = None

    def __post_init__(self) -> None:
        if self.security not in DEFAULT_PORTS:
            raise ValueError(f"smtp.security must be tls, starttls or none, got {self.security!r}")

    @classmethod
    def from_config(cls, smtp_conf: dict[str, Any]) -> SmtpSettings:
        """Settings from the validated `smtp:` section of the config."""
        security = smtp_conf.get("security") or "tls"
        return cls(
            host=smtp_conf["host"],
            port=int(smtp_conf.get("port") or DEFAULT_PORTS[security]),
            security=security,
            username=smtp_conf.get("username") or None,
            ca_file=smtp_conf.get("ca_file") or None,
            timeout=float(smtp_conf.get("timeout") or 30.0),
            local_hostname=smtp_conf.get("local_hostname") or None,
        )

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class Envelope:
    """One mail to hand over: bare addresses (a `Name <addr>` is reduced on send) and bytes."""

    mail_from: str
    rcpt_to: list[str]
    data: bytes
    ref: object = None  # the caller's id (the outbox row)


@dataclass
class Outcome:
    """The server's final word on one mail."""

    ref: object
    delivered: bool  # True iff 250 to the end of DATA, for at least one recipient
    refused: dict[str, str] = field(default_factory=dict)  # rcpt -> 5xx reply
    permanent_error: str | None = None  # why this mail can never go as it is
    reply: str = ""  # the server's final answer
    # rcpt -> 4xx reply, for recipients that were deferred while others took the mail;
    # the caller may queue a copy for them (a mail no recipient accepted raises instead).
    deferred: dict[str, str] = field(default_factory=dict)


# Building a context reads the whole system CA store (~30 ms, most of a mail's latency), so one
# is kept per ca_file (its inode, size and mtime) for an hour; the rebuild sees CA updates.
CONTEXT_TTL = 3600.0
_contexts: dict[tuple[str | None, tuple[int, ...]], tuple[float, ssl.SSLContext]] = {}
_contexts_lock = threading.Lock()


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The system trust store, hostname checked, plus `ca_file` (a private CA) if given."""
    stamp: tuple[int, ...] = ()
    try:
        if ca_file:
            st = os.stat(ca_file)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)  # a changed file is read again
    except OSError:
        stamp = (-1,)  # not cached below: _new_context raises the error a person reads
    key, now = (ca_file, stamp), time.monotonic()
    with _contexts_lock:
        cached = _contexts.get(key)
        if cached is not None and now - cached[0] < CONTEXT_TTL:
            return cached[1]
    ctx = _new_context(ca_file)
    with _contexts_lock:
        if stamp != (-1,):
            _contexts.clear()  # only the current one is worth keeping
            _contexts[key] = (now, ctx)
    return ctx


def _new_context(ca_file: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca_file:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise SmtpError(
                f"cannot load smtp.ca_file {ca_file} ({getattr(exc, 'strerror', None) or exc}); "
                "it must be a readable PEM file holding the CA certificate",
                transient=False,
            ) from None
    return ctx


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

    def putcmd(self, cmd: str, args: str = "") -> None:
        if self.debug is not None:
            line = self._shown_instead or (f"{cmd} {args}" if args else cmd)
            self.debug("C: " + self.scrub(line))
        self._shown_instead = None
        super().putcmd(cmd, args)  # type: ignore[misc]

    def getreply(self) -> tuple[int, bytes]:
        code, msg = super().getreply()  # type: ignore[misc]
        if self.debug is not None:
            lines = msg.decode("utf-8", "replace").split("\n")
            for i, text in enumerate(lines):
                sep = " " if i == len(lines) - 1 else "-"
                self.debug(self.scrub(f"S: {code}{sep}{text}".rstrip()))
        return code, msg


class _PlainClient(_Dialogue, smtplib.SMTP):
    pass


class _TlsClient(_Dialogue, smtplib.SMTP_SSL):
    pass


class SmtpSession:
    """One SMTP connection: connect, TLS, EHLO and AUTH on enter, QUIT on exit."""

    def __init__(self, settings: SmtpSettings, password: str | None, debug: Debug | None = None):
        self.settings = settings
        self._password = password or None
        self._debug = debug
        self._client: _PlainClient | _TlsClient | None = None
        self._stage = "connecting"
        self._transactions = 0
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
            if not self._broken and client.sock is not None:
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

    # -- one transaction ------------------------------------------------------------
    def send(self, env: Envelope) -> Outcome:
        """Hand one mail over; its Outcome, or SmtpError for the session or a 4xx (retry later)."""
        try:
            sender = bare_address(env.mail_from)
            rcpts = [bare_address(r) for r in env.rcpt_to]
        except ValueError as exc:
            return Outcome(env.ref, False, permanent_error=f"bad envelope address: {exc}")
        if not rcpts:
            return Outcome(env.ref, False, permanent_error="the mail has no recipient")
        client = self._require_client()
        if self._transactions:
            code, msg = self._command("RSET", "RSET")
            if code != 250:
                raise self._reply_error(code, msg, "RSET")
        self._transactions += 1
        data = _wire_data(env.data)
        size = f" SIZE={len(data)}" if client.has_extn("size") else ""
        code, msg = self._command("MAIL FROM", f"MAIL FROM:<{sender}>{size}")
        if code == 530:  # not a problem of this mail: the server wants a login we do not give
            raise SmtpError(
                f"{self.settings.where} requires a login ({code} {reply_text(msg)}): set "
                "smtp.username and store the password",
                transient=False,
                code=code,
            )
        if 500 <= code < 600:
            return Outcome(
                env.ref,
                False,
                permanent_error=f"sender {sender} refused: {code} {reply_text(msg)}",
                reply=f"{code} {reply_text(msg)}",
            )
        if code != 250:
            raise self._reply_error(code, msg, "MAIL FROM")
        refused: dict[str, str] = {}
        deferred: dict[str, str] = {}
        for rcpt in rcpts:
            code, msg = self._command("RCPT TO", f"RCPT TO:<{rcpt}>")
            if code in (250, 251):
                continue
            if code == 421 or not 400 <= code < 600:
                raise self._reply_error(code, msg, "RCPT TO")
            (deferred if code < 500 else refused)[rcpt] = f"{code} {reply_text(msg)}"
        accepted = len(rcpts) - len(refused) - len(deferred)
        if not accepted:
            every = ", ".join(f"{r}: {why}" for r, why in {**refused, **deferred}.items())
            if deferred:
                raise SmtpError(
                    f"{self.settings.where} deferred the recipients ({every}); will retry",
                    transient=True,
                )
            return Outcome(
                env.ref,
                False,
                refused,
                f"every recipient was refused: {every}",
                reply=next(iter(refused.values())),
            )
        code, msg = self._command("DATA", "DATA")
        if code == 354:
            with self._step("sending the message"):
                client.send(data)
                if self._debug is not None:
                    self._debug(f"C: [message, {len(data)} bytes]")
                    self._debug("C: .")
                code, msg = client.getreply()
        reply = f"{code} {reply_text(msg)}"
        if code == 250:
            return Outcome(env.ref, True, refused, None, reply, deferred)
        if 500 <= code < 600 and code != 421:
            return Outcome(env.ref, False, refused, f"message refused: {reply}", reply, deferred)
        raise self._reply_error(code, msg, "DATA")

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


def _wire_data(data: bytes) -> bytes:
    """CRLF line ends, dot-stuffing (RFC 5321 4.5.2) and the final `.` line."""
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    data = re.sub(rb"(?m)^\.", b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


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
        for env in itertools.chain([first], pending):
            on_outcome(session.send(env))
