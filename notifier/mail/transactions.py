"""Mail transactions inside an open SMTP session: MAIL, RCPT, DATA and the message, one
command at a time or pipelined (RFC 2920), and what each answer means for the mail."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from notifier.mail.delivery import Envelope, Outcome
from notifier.mail.message import bare_address
from notifier.mail.smtp_errors import SmtpError, reply_text

if TYPE_CHECKING:
    from notifier.mail.delivery import SmtpSettings


class Transactions:
    """The mail-handling half of SmtpSession (which provides the connection, `_command`,
    `_step`, `_reply_error` and the state below)."""

    settings: SmtpSettings
    _broken: bool
    _open_transaction: bool  # a transaction the server has not finished
    _accepted: int  # recipients the server took in the current transaction
    _unanswered: int  # pipelined commands and messages whose reply was not read yet

    # Provided by SmtpSession (declared here for readers and type checkers):
    def _require_client(self) -> Any: ...
    def _command(self, stage: str, line: str) -> tuple[int, bytes]: ...
    def _step(self, stage: str) -> Any: ...
    def _reply_error(self, code: int, msg: bytes | str, stage: str) -> SmtpError: ...
    def _reply_arrived(self) -> bool: ...

    # -- transactions ---------------------------------------------------------------
    def send(self, env: Envelope) -> Outcome:
        """Hand one mail over; its Outcome, or SmtpError for the session or a 4xx (retry later)."""
        outcomes: list[Outcome] = []
        self.send_all([env], outcomes.append)
        return outcomes[0]

    def send_all(
        self, envelopes: Iterable[Envelope], on_outcome: Callable[[Outcome], None]
    ) -> None:
        """Hand every mail over, `on_outcome` once the server has answered each; SmtpError for
        the session or a 4xx, after the outcomes already known are reported (the rest stays
        queued). Without PIPELINING, one command at a time; RSET only after a transaction
        that did not end with the message's dot."""
        if self._require_client().has_extn("pipelining"):
            self._send_pipelined(envelopes, on_outcome)
            return
        for env in envelopes:
            prepared = self._prepare(env)
            if isinstance(prepared, Outcome):
                on_outcome(prepared)
                continue
            data, commands = prepared
            accepted = self._envelope(env, self._one_by_one(commands))
            if isinstance(accepted, Outcome):
                on_outcome(accepted)
                continue
            self._open_transaction = False  # the dot ends the transaction, whatever its answer
            self._write(data, [])
            on_outcome(self._message_reply(env, *accepted))

    def _send_pipelined(
        self, envelopes: Iterable[Envelope], on_outcome: Callable[[Outcome], None]
    ) -> None:
        """PIPELINING (RFC 2920): one write and one round trip per mail. The write carries the
        message of the mail before (DATA was answered 354) and this mail's MAIL, RCPTs and
        DATA; the replies are read in order. When the server has already answered the next
        mail's commands too, an outcome is reported after the next write, so recording it
        overlaps the server's work on that mail; otherwise at once, while the server works."""
        message = b""  # the message (and its dot) for the last DATA the server said 354 to
        awaiting: tuple[Envelope, dict[str, str], dict[str, str]] | None = None
        held: list[Outcome] = []  # known, reported after the next write
        try:
            for env in envelopes:
                prepared = self._prepare(env)
                if isinstance(prepared, Outcome):
                    held.append(prepared)
                    continue
                data, commands = prepared
                self._write(message, commands)
                message = b""
                _report(held, on_outcome)
                if awaiting is not None:
                    held.append(self._message_reply(*awaiting))
                    awaiting = None
                    if not self._reply_arrived():
                        # The server is still at this mail's commands: record the outcome
                        # while waiting rather than after, so it is never late for nothing.
                        _report(held, on_outcome)
                replies = self._pipelined_replies(commands)
                try:
                    accepted = self._envelope(env, replies)
                finally:
                    self._drain(replies)
                if isinstance(accepted, Outcome):
                    held.append(accepted)
                    continue
                self._open_transaction = False  # the dot ends the transaction
                message, awaiting = data, (env, *accepted)
            if awaiting is not None:
                self._write(message, [])
                _report(held, on_outcome)
                held.append(self._message_reply(*awaiting))
        finally:
            _report(held, on_outcome)  # even on the way out: a delivered mail must not go twice

    def _prepare(self, env: Envelope) -> Outcome | tuple[bytes, list[tuple[str, str]]]:
        """The mail on the wire and its commands (RSET first if a transaction is open), or
        why it cannot go."""
        try:
            sender = bare_address(env.mail_from)
            rcpts = [bare_address(r) for r in env.rcpt_to]
        except ValueError as exc:
            return Outcome(env.ref, False, permanent_error=f"bad envelope address: {exc}")
        if not rcpts:
            return Outcome(env.ref, False, permanent_error="the mail has no recipient")
        data = _wire_data(env.data)
        size = f" SIZE={len(data)}" if self._require_client().has_extn("size") else ""
        commands = [("RSET", "RSET")] if self._open_transaction else []
        commands += [("MAIL FROM", f"MAIL FROM:<{sender}>{size}")]
        commands += [("RCPT TO", f"RCPT TO:<{r}>") for r in rcpts] + [("DATA", "DATA")]
        self._open_transaction = True
        return data, commands

    def _envelope(
        self, env: Envelope, replies: Iterator[tuple[str, int, bytes]]
    ) -> Outcome | tuple[dict[str, str], dict[str, str]]:
        """Read the answers to RSET, MAIL, RCPTs and DATA: refused and deferred recipients
        once the server waits for the message (354), else the mail's Outcome."""
        self._accepted = 0
        stage, code, msg = next(replies)
        if stage == "RSET":
            if code != 250:
                raise self._reply_error(code, msg, "RSET")
            stage, code, msg = next(replies)
        if code == 530:  # not a problem of this mail: the server wants a login we do not give
            raise SmtpError(
                f"{self.settings.where} requires a login ({code} {reply_text(msg)}): set "
                "smtp.username and store the password",
                transient=False,
                code=code,
            )
        if 500 <= code < 600:
            sender = bare_address(env.mail_from)
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
        for rcpt in env.rcpt_to:
            stage, code, msg = next(replies)
            if code in (250, 251):
                self._accepted += 1
                continue
            if code == 421 or not 400 <= code < 600:
                raise self._reply_error(code, msg, "RCPT TO")
            (deferred if code < 500 else refused)[bare_address(rcpt)] = f"{code} {reply_text(msg)}"
        if not self._accepted:
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
        stage, code, msg = next(replies)
        if code == 354:
            return refused, deferred
        reply = f"{code} {reply_text(msg)}"
        if 500 <= code < 600 and code != 421:
            return Outcome(env.ref, False, refused, f"message refused: {reply}", reply, deferred)
        raise self._reply_error(code, msg, "DATA")

    def _message_reply(
        self, env: Envelope, refused: dict[str, str], deferred: dict[str, str]
    ) -> Outcome:
        """The server's answer to a message sent whole: the mail's Outcome."""
        client = self._require_client()
        with self._step("sending the message"):
            code, msg = client.getreply()
        self._unanswered -= 1
        reply = f"{code} {reply_text(msg)}"
        if code == 250:
            return Outcome(env.ref, True, refused, None, reply, deferred)
        if 500 <= code < 600 and code != 421:
            return Outcome(env.ref, False, refused, f"message refused: {reply}", reply, deferred)
        raise self._reply_error(code, msg, "DATA")

    def _write(self, message: bytes, commands: list[tuple[str, str]]) -> None:
        """One write: a message (with its dot), then commands; each shows in the dialogue."""
        client = self._require_client()
        with self._step(commands[0][0] if commands else "sending the message"):
            client.send_pipelined(message, [line for _, line in commands])
        self._unanswered += bool(message) + len(commands)

    def _one_by_one(self, commands: list[tuple[str, str]]) -> Iterator[tuple[str, int, bytes]]:
        """Each command sent when its reply is wanted; one not wanted is never sent."""
        for stage, line in commands:
            yield (stage, *self._command(stage, line))

    def _pipelined_replies(
        self, commands: list[tuple[str, str]]
    ) -> Iterator[tuple[str, int, bytes]]:
        """The replies to commands already sent, in order."""
        client = self._require_client()
        for stage, _ in commands:
            with self._step(stage):
                code, msg = client.getreply()
            self._unanswered -= 1
            if code == 421:
                self._broken = True
            yield stage, code, msg

    def _drain(self, replies: Iterator[tuple[str, int, bytes]]) -> None:
        """Read the replies to pipelined commands the transaction stopped looking at. A DATA
        the server accepted although no recipient was gets the lone dot (RFC 2920 3.1); one
        with recipients never gets a dot: the session is dropped, so no empty mail goes."""
        if self._broken:
            return
        try:
            for stage, code, _ in replies:
                self._accepted += stage == "RCPT TO" and code in (250, 251)
                if stage == "DATA" and code == 354:
                    if self._accepted:
                        self._broken = True
                        return
                    self._write(b".\r\n", [])
                    self._require_client().getreply()
                    self._unanswered -= 1
        except SmtpError:
            pass  # the session is broken now; the next send or close says so


def _report(outcomes: list[Outcome], on_outcome: Callable[[Outcome], None]) -> None:
    while outcomes:
        on_outcome(outcomes.pop(0))


def _wire_data(data: bytes) -> bytes:
    """CRLF line ends, dot-stuffing (RFC 5321 4.5.2) and the final `.` line."""
    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if data.startswith(b".") or b"\n." in data:
        data = _LINE_WITH_DOT.sub(b"..", data)
    data = data.replace(b"\n", b"\r\n")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


_LINE_WITH_DOT = re.compile(rb"(?m)^\.")
