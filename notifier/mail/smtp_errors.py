"""What SMTP failures mean: one sentence for a sysadmin, and whether to retry.

`SmtpError` is the only exception the client lets out; `classify` turns any
socket, TLS or smtplib error into one, `reply_error` does the same for an SMTP
reply, and `explain` serves `notifier test-email`.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from notifier.mail.delivery import SmtpSettings

# ssl reasons meaning "the other end does not speak TLS here": a port/security mix-up.
_NOT_TLS = {"WRONG_VERSION_NUMBER", "UNSUPPORTED_PROTOCOL", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG",
            "RECORD_LAYER_FAILURE", "UNEXPECTED_RECORD"}  # fmt: skip


class SmtpError(Exception):
    """A failure of the session (or a 4xx for one mail); `reason` is one sentence for a person."""

    def __init__(self, reason: str, *, transient: bool, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.code = code

    def __str__(self) -> str:
        return self.reason


def reply_text(msg: bytes | str) -> str:
    """A reply as one line of text."""
    text = msg.decode("utf-8", "replace") if isinstance(msg, bytes) else str(msg)
    return " ".join(text.split())


def reply_error(code: int, text: str, settings: SmtpSettings, stage: str) -> SmtpError:
    """An SMTP reply that stops the session: 4xx retry later, 5xx permanent."""
    where = settings.where
    if code == 421:
        return SmtpError(
            f"{where} is closing the connection ({code} {text}) at {stage}; will retry later",
            transient=True,
            code=code,
        )
    if 400 <= code < 500:
        return SmtpError(
            f"{where} answered {code} {text} to {stage} (a temporary refusal); will retry later",
            transient=True,
            code=code,
        )
    if 500 <= code < 600:
        return SmtpError(f"{where} refused {stage}: {code} {text}", transient=False, code=code)
    return SmtpError(
        f"{where} gave an unexpected answer to {stage}: {code} {text}; will retry",
        transient=True,
        code=code if code > 0 else None,
    )


def classify(exc: BaseException, settings: SmtpSettings, stage: str = "") -> SmtpError:
    """The SmtpError that says in one sentence what `exc` means, and whether to retry."""
    import smtplib  # here, not at the top: the daemon imports SmtpError long before any mail
    import ssl

    if isinstance(exc, SmtpError):
        return exc
    if isinstance(exc, smtplib.SMTPServerDisconnected) and isinstance(exc.__context__, OSError):
        exc = exc.__context__  # smtplib hides a timeout or reset behind "unexpectedly closed"
    host, where = settings.host, settings.where
    during = f" ({stage})" if stage else ""
    if isinstance(exc, socket.gaierror):
        return SmtpError(
            f"cannot resolve {host} ({exc.strerror}): check smtp.host and this machine's DNS",
            transient=True,
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return SmtpError(
            f"certificate of {host} not trusted or for another name: "
            f"{(exc.verify_message or str(exc)).rstrip('.')}; if the server uses a private CA, set "
            "smtp.ca_file",
            transient=False,
        )
    if isinstance(exc, ConnectionRefusedError):
        return SmtpError(
            f"connection refused by {where} (is the server running / the port right?)",
            transient=True,
        )
    if isinstance(exc, TimeoutError):
        return SmtpError(f"timed out talking to {where}{during}", transient=True)
    if isinstance(exc, ssl.SSLError) and exc.reason in _NOT_TLS:
        return SmtpError(
            f"{where} does not speak TLS here ({exc.reason}): check smtp.port and "
            "smtp.security (465 is tls, 587 is starttls)",
            transient=False,
        )
    if isinstance(
        exc,
        smtplib.SMTPServerDisconnected | ConnectionError | ssl.SSLEOFError | ssl.SSLZeroReturnError,
    ):
        return SmtpError(
            f"{where} closed the connection unexpectedly{during}; will retry", transient=True
        )
    if isinstance(exc, ssl.SSLError):
        return SmtpError(f"TLS with {where} failed{during}: {exc.reason or exc}", transient=True)
    if isinstance(exc, smtplib.SMTPResponseException):
        return reply_error(
            exc.smtp_code, reply_text(exc.smtp_error), settings, stage or "a command"
        )
    if isinstance(exc, OSError):
        return SmtpError(f"cannot talk to {where}{during}: {exc.strerror or exc}", transient=True)
    if isinstance(exc, UnicodeError):
        return SmtpError(
            f"a command for {where} is not ASCII{during}; use ASCII addresses", transient=False
        )
    return SmtpError(
        f"unexpected error with {where}{during}: {type(exc).__name__}: {exc}",
        transient=not isinstance(exc, ValueError),
    )


def explain(exc: BaseException, settings: SmtpSettings) -> str:
    """One sentence for a person about any exception `deliver` or `SmtpSession` raised."""
    return classify(exc, settings).reason
