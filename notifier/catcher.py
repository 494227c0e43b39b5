"""A local SMTP server that keeps what it receives: for `notifier demo` and for the tests.

It is a real aiosmtpd server on 127.0.0.1 with a real certificate (a throwaway
CA from trustme): implicit TLS, STARTTLS or plain, with or without AUTH. It
records every connection, every raw command and every AUTH attempt with whether
TLS was active at that moment, so a test can prove from the server side that no
password and no mail went out in clear. Hooks make it misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from notifier.certs import Certs

__all__ = ["AuthAttempt", "CaughtMessage", "Catcher", "Certs", "Command", "Connection"]

TLS_MODES = ("tls", "starttls", "none")
_BUILTIN_AUTH = ("LOGIN", "PLAIN")


class _QuietDeprecation(logging.Filter):
    """Drops aiosmtpd's own warning about its own login_data, logged on every AUTH."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_QuietDeprecation())


@dataclass
class Command:
    """One raw line a client sent outside DATA (AUTH continuation lines included)."""

    connection: int
    line: bytes  # without the line end
    tls_active: bool
    # More of the client's bytes were already waiting when this line was read: it came
    # pipelined with the next command, before this one was answered.
    more_waiting: bool = False

    @property
    def verb(self) -> str:
        """`MAIL`, `RCPT`, `AUTH`, …; the first word, upper-case."""
        return self.line.split(b" ", 1)[0].decode("ascii", "replace").upper()


@dataclass
class AuthAttempt:
    """One AUTH exchange as the server saw it."""

    connection: int
    mechanism: str
    username: str
    success: bool
    tls_active: bool


@dataclass
class Connection:
    """One TCP connection to the catcher."""

    id: int
    peer: Any
    commands: list[Command] = field(default_factory=list)
    auth: list[AuthAttempt] = field(default_factory=list)
    closed: bool = False  # the client went away (after QUIT or not)


@dataclass
class CaughtMessage:
    """One mail the catcher accepted with 250."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    message: EmailMessage
    auth_user: str | None
    tls: bool  # TLS was active when DATA arrived
    tls_active_at_auth: bool | None  # None: the client did not log in
    time: float
    connection: int


class _RecordingSMTP(SMTP):
    """aiosmtpd's SMTP, recording connections and raw command lines into the Catcher."""

    def __init__(self, handler: Any, catcher: Catcher, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.catcher = catcher
        self.conn_id = 0
        self.in_data = False

    def tls_active(self) -> bool:
        if self._tls_protocol is not None:
            return True
        return (
            self.transport is not None and self.transport.get_extra_info("ssl_object") is not None
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        fresh = self.transport is None  # not the STARTTLS re-wrap of a known connection
        super().connection_made(transport)
        if fresh:
            self.conn_id = self.catcher._new_connection(transport.get_extra_info("peername"))
            if transport.get_extra_info("ssl_object") is not None:
                # Implicit TLS: aiosmtpd 1.4 only counts STARTTLS as TLS, so it would hide
                # AUTH and answer 538 (aio-libs/aiosmtpd#281). Tell it TLS is up.
                self._tls_protocol = getattr(transport, "_ssl_protocol", True)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self.catcher._connection_closed(self.conn_id)

    def _cb_client_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        super()._cb_client_connected(reader, writer)
        # Every read (commands, AUTH continuations; readline goes through readuntil too)
        # passes here, so we see exactly what came over the wire, before any parsing.
        plain_readuntil = reader.readuntil

        async def readuntil(separator: bytes = b"\n") -> bytes:
            line = await plain_readuntil(separator)
            if not self.in_data:
                self.catcher._record_command(
                    Command(
                        self.conn_id,
                        line.rstrip(b"\r\n"),
                        self.tls_active(),
                        bool(reader._buffer),  # type: ignore[attr-defined]
                    )
                )
            return line

        reader.readuntil = readuntil  # type: ignore[method-assign]

    async def smtp_DATA(self, arg: str) -> None:
        self.in_data = True
        try:
            if self.catcher.data_without_rcpt and self.envelope and not self.envelope.rcpt_tos:
                # Like servers that judge only the message: 354 although no recipient is
                # valid. A pipelining client must then send the lone dot (RFC 2920 3.1).
                await self.push("354 End data with <CR><LF>.<CR><LF>")
                lines = 0
                while await self._reader.readuntil(b"\r\n") != b".\r\n":
                    lines += 1
                self.catcher.content_without_rcpt.append(lines)
                await self.push("554 5.5.1 Error: no valid recipients")
                return
            await super().smtp_DATA(arg)
        finally:
            self.in_data = False


class _Handler:
    """aiosmtpd hooks: apply the Catcher's misbehaviour switches, keep what is accepted."""

    def __init__(self, catcher: Catcher) -> None:
        self.catcher = catcher

    async def handle_EHLO(self, server, session, envelope, hostname, responses) -> list[str]:
        session.host_name = hostname
        if self.catcher.pipelining:
            # aiosmtpd reads command by command from a buffered stream, so pipelined commands
            # are answered in order; it only does not say so in its EHLO.
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options) -> str:
        if self.catcher.fail_mail_with:
            return self.catcher.fail_mail_with
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        if address in self.catcher.reject_rcpt:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if address in self.catcher.defer_rcpt:
            return f"450 4.2.0 <{address}>: Recipient address rejected: Greylisted, try later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: _RecordingSMTP, session, envelope) -> str:
        catcher = self.catcher
        if catcher.drop_after_data:
            # The mail arrived whole but the answer never leaves: the client cannot know.
            catcher._keep(server, session, envelope, acknowledged=False)
            server.transport.abort()
            await asyncio.Event().wait()  # cancelled by connection_lost
        if catcher.fail_data_with:
            return catcher.fail_data_with
        n = catcher._keep(server, session, envelope, acknowledged=True)
        return f"250 2.0.0 Ok: queued as {n:04d}"


class _Controller(Controller):
    """Controller that builds the recording SMTP and learns its port when bound to port 0."""

    def __init__(self, catcher: Catcher, **kwargs: Any) -> None:
        super().__init__(_Handler(catcher), **kwargs)
        self.catcher = catcher

    def factory(self) -> SMTP:
        return _RecordingSMTP(self.handler, self.catcher, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class Catcher:
    """A real SMTP server on 127.0.0.1 that keeps every mail (and maildir/NNNN.eml if given).

    Misbehaviour switches, changeable at any time: `reject_rcpt` (550), `defer_rcpt`
    (450), `fail_mail_with` and `fail_data_with` (any reply line), `drop_after_data`,
    `data_without_rcpt` (354 to a DATA with no valid recipient), `pipelining` (advertised).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        maildir: str | os.PathLike[str] | None = None,
        *,
        tls: str = "tls",
        starttls_offered: bool = True,
        auth: dict[str, str] | None = None,
        cert: Certs | None = None,
        hostname: str = "localhost",
        port: int = 0,
        auth_mechanisms: tuple[str, ...] = ("LOGIN", "PLAIN"),
        pipelining: bool = True,
    ) -> None:
        if tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {', '.join(TLS_MODES)}, got {tls!r}")
        self.tls = tls
        self.starttls_offered = starttls_offered
        self.auth = dict(auth) if auth is not None else None
        self.auth_mechanisms = tuple(m.upper() for m in auth_mechanisms)
        self.pipelining = pipelining  # advertise PIPELINING (RFC 2920); changeable any time
        self.hostname = hostname
        self.maildir = Path(maildir) if maildir is not None else None
        self._own_certs = cert is None
        self.certs = cert or Certs((hostname, self.host))
        self.ca_file = self.certs.ca_file
        self.port = port
        self.reject_rcpt: set[str] = set()
        self.defer_rcpt: set[str] = set()
        self.fail_mail_with: str | None = None
        self.fail_data_with: str | None = None
        self.drop_after_data = False
        self.data_without_rcpt = False
        self.content_without_rcpt: list[int] = []  # lines sent after such a 354
        self.messages: list[CaughtMessage] = []
        self.unacknowledged: list[CaughtMessage] = []  # received, but no 250 was sent
        self.connections: list[Connection] = []
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._queue_ids = itertools.count(1)  # not reset: maildir files are never overwritten
        self._controller: _Controller | None = None

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> Catcher:
        kwargs: dict[str, Any] = {
            "hostname": self.host,
            "port": self.port,
            "server_hostname": self.hostname,
            "ready_timeout": 10.0,
        }
        if self.tls == "tls":
            kwargs["ssl_context"] = self.certs.server_context()
        elif self.tls == "starttls" and self.starttls_offered:
            kwargs["tls_context"] = self.certs.server_context()
            kwargs["require_starttls"] = True
        if self.auth is not None:
            kwargs.update(
                authenticator=self._authenticate,
                auth_required=True,
                auth_require_tls=True,
                auth_exclude_mechanism=[m for m in _BUILTIN_AUTH if m not in self.auth_mechanisms],
            )
        if self.maildir is not None:
            self.maildir.mkdir(parents=True, exist_ok=True)
        self._controller = _Controller(self, **kwargs)
        self._controller.start()
        self.port = self._controller.port
        self.reset()  # forget the controller's own start-up probe connection
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self._own_certs:
            self.certs.cleanup()

    def __enter__(self) -> Catcher:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget every message, connection and command seen so far."""
        with self._cond:
            self.messages.clear()
            self.unacknowledged.clear()
            self.connections.clear()

    # -- what tests and the demo read ----------------------------------------------------
    def settings(self, **overrides: Any):
        """SmtpSettings that reach this catcher (and trust its CA)."""
        from notifier.mail.smtp import SmtpSettings

        values: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "security": self.tls,
            "ca_file": None if self.tls == "none" else self.ca_file,
            "timeout": 10.0,
        }
        if self.auth:
            values["username"] = next(iter(self.auth))
        values.update(overrides)
        return SmtpSettings(**values)

    def wait_for(self, n: int, timeout: float = 10) -> list[CaughtMessage]:
        """The first `n` messages, waiting up to `timeout` seconds for them to arrive."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= n, timeout):
                raise TimeoutError(
                    f"the catcher on {self.host}:{self.port} got "
                    f"{len(self.messages)} of {n} messages within {timeout:g}s"
                )
            return list(self.messages[:n])

    @property
    def commands(self) -> list[Command]:
        """Every raw command line of every connection, in order."""
        with self._cond:
            return [c for conn in self.connections for c in conn.commands]

    @property
    def auth_attempts(self) -> list[AuthAttempt]:
        with self._cond:
            return [a for conn in self.connections for a in conn.auth]

    def verbs(self, connection: int | None = None) -> list[str]:
        """The command words seen (on one connection, or all): ['EHLO', 'MAIL', …]."""
        return [c.verb for c in self.commands if connection is None or c.connection == connection]

    # -- called from the server thread ----------------------------------------------------
    def _connection_closed(self, conn_id: int) -> None:
        with self._cond:
            conn = self._connection(conn_id)
            if conn is not None:
                conn.closed = True
            self._cond.notify_all()

    def _new_connection(self, peer: Any) -> int:
        with self._cond:
            conn = Connection(next(self._ids), peer)
            self.connections.append(conn)
            self._cond.notify_all()
            return conn.id

    def _connection(self, conn_id: int) -> Connection | None:
        return next((c for c in self.connections if c.id == conn_id), None)

    def _record_command(self, command: Command) -> None:
        with self._cond:
            conn = self._connection(command.connection)
            if conn is not None:
                conn.commands.append(command)

    def _authenticate(
        self, server: _RecordingSMTP, session, envelope, mechanism: str, auth_data: LoginPassword
    ) -> AuthResult:
        user = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        ok = self.auth is not None and self.auth.get(user) == password
        with self._cond:
            conn = self._connection(server.conn_id)
            if conn is not None:
                conn.auth.append(
                    AuthAttempt(server.conn_id, mechanism, user, ok, server.tls_active())
                )
        # handled=False: let aiosmtpd answer 535 itself on failure.
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    def _keep(self, server: _RecordingSMTP, session, envelope, *, acknowledged: bool) -> int:
        data = bytes(envelope.original_content or b"")
        with self._cond:
            conn = self._connection(server.conn_id)
            logins = [a for a in (conn.auth if conn else []) if a.success]
            caught = CaughtMessage(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                data=data,
                message=email.message_from_bytes(data, policy=email.policy.default),
                auth_user=logins[-1].username if logins else None,
                tls=server.tls_active(),
                tls_active_at_auth=logins[-1].tls_active if logins else None,
                time=time.time(),
                connection=server.conn_id,
            )
            if not acknowledged:
                self.unacknowledged.append(caught)
                return 0
            self.messages.append(caught)
            n = next(self._queue_ids)
            if self.maildir is not None:
                # Write then rename: a reader never sees half a message.
                tmp = self.maildir / f".{n:04d}.eml.tmp"
                tmp.write_bytes(data)
                os.replace(tmp, self.maildir / f"{n:04d}.eml")
            self._cond.notify_all()
            return n
