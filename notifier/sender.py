"""The sender thread: drains the outbox through one SMTP session at a time.

A mail leaves the outbox only after the server's 250 to the end of DATA.
Transient failures back off exponentially with jitter, capped at `retry_max`;
permanent refusals of one mail are kept as failed and reported, never retried
in a loop.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from email.utils import parseaddr

from notifier.mail.smtp import Envelope, Outcome, SmtpError, SmtpSettings, deliver
from notifier.spool import OutboxRow, Spool, SpoolError

log = logging.getLogger("notifier.sender")

FIRST_RETRY = 10.0  # seconds before the first retry; doubles each attempt up to retry_max


def backoff(attempts: int, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Delay before attempt number `attempts + 1`: exponential, capped, with jitter."""
    base = min(cap, FIRST_RETRY * 2 ** min(attempts, 30))
    return max(1.0, base * (0.5 + rng() / 2))


class Sender:
    """Delivers ready outbox rows; `wake()` after adding some."""

    def __init__(self, state_dir: str, settings: SmtpSettings, password: Callable[[], str | None],
                 clock: Callable[[], float], retry_max: float) -> None:
        self.state_dir = state_dir
        self.settings = settings
        self.password = password
        self.clock = clock
        self.retry_max = retry_max
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.busy_since: float | None = None  # monotonic start of the current session
        self.last_progress = time.monotonic()
        self.last_error: str | None = None
        self.delivered_total = 0

    def reconfigure(self, settings: SmtpSettings, retry_max: float) -> None:
        self.settings = settings
        self.retry_max = retry_max
        self.wake()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sender", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, grace: float = 5.0) -> None:
        """Deliver what is ready for up to `grace` seconds, then stop; the rest stays spooled."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=grace)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def healthy(self) -> bool:
        """Alive, and not stuck in one session far longer than its timeouts allow."""
        if not self.alive():
            return False
        busy = self.busy_since
        return busy is None or time.monotonic() - busy < max(120.0, 10 * self.settings.timeout)

    def _loop(self) -> None:
        spool = Spool(self.state_dir)
        try:
            while True:
                self.last_progress = time.monotonic()
                rows = []
                try:
                    rows = spool.ready(self.clock())
                except Exception as exc:
                    log.error("cannot read the outbox: %s", exc)
                if rows:
                    self._session(spool, rows)
                    if self._stop.is_set():
                        return
                    continue
                if self._stop.is_set():
                    return
                nxt = None
                try:
                    nxt = spool.next_attempt()
                except Exception:  # the next loop reports it
                    pass
                timeout = None if nxt is None else max(0.05, nxt - self.clock())
                self._wake.wait(timeout=timeout)
                self._wake.clear()
        finally:
            spool.close()

    def _session(self, spool: Spool, rows: list[OutboxRow]) -> None:
        done: set[int] = set()
        by_id = {row.id: row for row in rows}

        def on_outcome(outcome: Outcome) -> None:
            row = by_id[outcome.ref]
            now = self.clock()
            done.add(row.id)
            self.last_progress = time.monotonic()
            try:
                if outcome.delivered:
                    spool.mark_delivered(row, now, outcome.reply, outcome.refused)
                    self.delivered_total += 1
                    refused = f"; refused: {', '.join(f'{r} ({why})' for r, why in outcome.refused.items())}" if outcome.refused else ""
                    log.info("delivered mail %d %r to %s: %s%s", row.id, row.summary,
                             ", ".join(r for r in row.rcpts if r not in outcome.refused), outcome.reply, refused)
                    if outcome.refused:
                        self.last_error = f"recipients refused: {', '.join(outcome.refused)}"
                    if outcome.deferred:
                        # Those recipients still need it: a copy waits in the outbox for them.
                        # events=0: its events are already counted by the delivered original.
                        why = "; ".join(f"{r}: {e}" for r, e in outcome.deferred.items())
                        spool.requeue_for(row, list(outcome.deferred),
                                          now + backoff(row.attempts, self.retry_max), why)
                        log.warning("mail %d deferred for %s; kept for a retry", row.id, why)
                else:
                    error = outcome.permanent_error or outcome.reply
                    spool.mark_failed(row, now, error)
                    self.last_error = error
                    log.error("mail %d %r refused permanently, not retried: %s", row.id, row.summary, error)
            except SpoolError as exc:
                log.error("mail %d was delivered but the spool cannot record it: %s", row.id, exc)

        envelopes = [Envelope(mail_from=parseaddr(r.mail_from)[1] or r.mail_from, rcpt_to=r.rcpts,
                              data=r.data, ref=r.id) for r in rows]
        self.busy_since = time.monotonic()
        try:
            deliver(self.settings, self.password(), envelopes, on_outcome)
            self.last_error = None if not self.last_error or done else self.last_error
        except SmtpError as exc:
            self._defer(spool, [r for r in rows if r.id not in done], exc.reason, exc.transient)
        except Exception as exc:  # a secret lookup or anything unforeseen: keep the mail, retry
            reason = f"{type(exc).__name__}: {exc}"
            self._defer(spool, [r for r in rows if r.id not in done], reason, True)
        finally:
            self.busy_since = None

    def _defer(self, spool: Spool, rows: list[OutboxRow], reason: str, transient: bool) -> None:
        if not rows:
            return
        attempts = max(r.attempts for r in rows)
        # A permanent session failure (wrong password, untrusted certificate) is not the mail's
        # fault: keep it, but only try again at the cap, or at once after a reload.
        delay = backoff(attempts, self.retry_max) if transient else self.retry_max
        self.last_error = reason
        log.warning("delivery failed (%s), %d mail(s) kept in the outbox; next try in %.0fs: %s",
                    "transient" if transient else "needs attention", len(rows), delay, reason)
        try:
            spool.defer([r.id for r in rows], self.clock() + delay, reason, self.clock())
        except SpoolError as exc:
            log.error("cannot record the failed attempt: %s", exc)
