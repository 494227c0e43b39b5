"""TLS contexts for the SMTP client: the system trust store plus an optional private CA."""

from __future__ import annotations

import os
import ssl
import threading
import time

from notifier.mail.smtp_errors import SmtpError

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
