"""Logging to stderr, journald-aware, with every registered secret masked.

Under systemd, stderr goes to the journal: lines carry a `<N>` syslog priority
prefix (so `journalctl -p warning` works) and no timestamp (the journal has one).
Elsewhere lines start with a timestamp and the level name.
"""

from __future__ import annotations

import base64
import logging
import os
import sys
import threading
from typing import TextIO

MASK = "********"
_HANDLER_NAME = "notifier-stderr"

# sd-daemon(3) priorities, what `journalctl -p` filters on, by the lowest logging level of each.
_PRIORITIES = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)


def _priority(levelno: int) -> int:
    return next((prio for level, prio in _PRIORITIES if levelno >= level), 7)


# Libraries that chatter at debug; shown only from -vv on.
_NOISY = ("asyncio", "mail.log", "keyring", "urllib3")

_secrets_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64_cores(secret: bytes) -> list[str]:
    """The base64 characters that encode only `secret`, at each of the three byte alignments.

    AUTH PLAIN sends base64(authzid NUL user NUL password): whatever precedes the
    password, one of these cores appears in the encoded string.
    """
    cores = []
    n = len(secret)
    for lead in range(3):
        encoded = _b64(b"\0" * lead + secret)
        first = -(-8 * lead // 6)  # first 6-bit group made only of secret bits
        last = (8 * (lead + n) - 6) // 6  # last such group
        cores.append(encoded[first : last + 1])
    return cores


def secret_forms(value: str, username: str | None = None) -> list[str]:
    """Every text form in which `value` could reach a log line, longest first."""
    raw = value.encode("utf-8")
    forms = {value, repr(value)[1:-1], ascii(value)[1:-1], _b64(raw)}
    if username is not None:
        user = username.encode("utf-8")
        forms.add(_b64(b"\0" + user + b"\0" + raw))  # AUTH PLAIN, as smtplib sends it
        forms.add(_b64(user + b"\0" + user + b"\0" + raw))  # AUTH PLAIN with an authzid
    # Alignment-independent cores catch AUTH PLAIN with any username, but a short core
    # would mask innocent text, so only long secrets get them.
    if len(raw) >= 8:
        forms.update(_b64_cores(raw))
    return sorted((f for f in forms if f), key=len, reverse=True)


def register_secret(value: str, username: str | None = None) -> None:
    """Mask `value` (and its base64 in AUTH PLAIN/LOGIN) in every log record from now on."""
    global _secrets
    if not value:
        return
    with _secrets_lock:
        merged = set(_secrets) | set(secret_forms(value, username))
        _secrets = tuple(sorted(merged, key=len, reverse=True))


def redact(text: str) -> str:
    """`text` with every registered secret replaced by ********."""
    for form in _secrets:
        if form in text:
            text = text.replace(form, MASK)
    return text


class SecretFilter(logging.Filter):
    """Masks registered secrets in a record's message, arguments and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class JournalFormatter(logging.Formatter):
    """`<N>logger: message`, every line prefixed, because journald reads priorities per line."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_priority(record.levelno)}>"
        text = super().format(record)
        return "\n".join(prefix + line for line in text.split("\n"))


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """True when `stream` (default stderr) is connected to journald, per $JOURNAL_STREAM."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in expected:
        return False
    stream = stream or sys.stderr
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    # A user running `notifier run 2>file` from a unit's shell inherits the variable, so
    # the descriptor itself must be the one systemd connected.
    return expected == f"{st.st_dev}:{st.st_ino}"


def setup_logging(verbosity: int, stream: TextIO | None = None) -> logging.Handler:
    """Log to stderr: -1 warnings and errors only, 0 info, 1 debug, 2 debug from libraries too."""
    stream = stream or sys.stderr
    if verbosity < 0:
        level = logging.WARNING
    elif verbosity == 0:
        level = logging.INFO
    else:
        level = logging.DEBUG
    handler = logging.StreamHandler(stream)
    if stderr_is_journal(stream):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"
            )
        )
    handler.addFilter(SecretFilter())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    # Called again (a reload, -v changed): replace our handler, leave others' alone.
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _NOISY:
        logging.getLogger(name).setLevel(
            logging.DEBUG if verbosity >= 2 else max(level, logging.INFO)
        )
    logging.captureWarnings(True)
    return handler
