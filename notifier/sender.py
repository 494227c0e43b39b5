"""The sender thread: drains the outbox through one SMTP session at a time.

A mail leaves the outbox only after the server's 250 to the end of DATA.
Transient failures back off exponentially with jitter, capped at `retry_max`;
permanent refusals of one mail are kept as failed and reported, never retried
in a loop.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable

from notifier.mail.delivery import Envelope, Outcome, SmtpSettings
from notifier.mail.smtp_errors import SmtpError
from notifier.spool import OutboxRow, Spool, SpoolError

log = logging.getLogger("notifier.sender")

FIRST_RETRY = 10.0  # seconds before the first retry; doubles each attempt up to retry_max


@functools.lru_cache(maxsize=16)
def _envelope_sender(mail_from: str) -> str:
    """`alerts@example.com` of the From header `NAS <alerts@example.com>`."""
    from email.utils import parseaddr  # loaded with the first mail, not at start

    return parseaddr(mail_from)[1] or mail_from


def backoff(attempts: int, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Delay before attempt number `attempts + 1`: exponential, capped, with jitter."""
    base = min(cap, FIRST_RETRY * 2 ** min(attempts, 30))
    return max(1.0, base * (0.5 + rng() / 2))


class Sender:
    """Delivers ready outbox rows; `wake()` after adding some."""

    def __init__(
        self,
        state_dir: str,
        settings: SmtpSettings,
        password: Callable[[], str | None],
        clock: Callable[[], float],
        retry_max: float,
    ) -> None:
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
        self.last_delivery: float | None = None  # wall time of the latest 250
        # While the spool cannot be written (disk full, read-only) the sender works from memory:
        # mails the daemon could not store, deliveries and retry times it could not record.
        self._lock = threading.Lock()
        self._memory: list[OutboxRow] = []  # ids < 0; lost if the daemon dies before sending
        self._memory_ids = itertools.count(-1, -1)
        self._unrecorded: dict[int, tuple[OutboxRow, float, str, dict[str, str]]] = {}
        self._not_before: dict[int, float] = {}

    def reconfigure(self, settings: SmtpSettings, retry_max: float) -> None:
        self.settings = settings
        self.retry_max = retry_max
        self.wake()

    def send_from_memory(self, rows: list[OutboxRow]) -> None:
        """Deliver mails the spool could not take; they get ids of their own (below zero)."""
        with self._lock:
            for row in rows:
                row.id = next(self._memory_ids)
                self._memory.append(row)
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
        if self._memory:
            log.error(
                "%d mail(s) held in memory (the spool was unwritable) were not sent: %s",
                len(self._memory),
                "; ".join(r.summary for r in self._memory),
            )

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
            self._forget_delivered(spool)  # left by a daemon that stopped mid-backlog
            while True:
                self.last_progress = time.monotonic()
                rows, nxt = self._due(spool)
                if rows:
                    try:
                        self._session(spool, rows)
                    except Exception:  # a bug: say so, keep the mail, do not spin
                        log.exception("the sender failed unexpectedly; trying again in 5s")
                        self._stop.wait(5.0)
                    self._forget_delivered(spool)
                    if self._stop.is_set():
                        return
                    continue
                if self._stop.is_set():
                    return
                timeout = None if nxt is None else max(0.05, nxt - self.clock())
                self._wake.wait(timeout=timeout)
                self._wake.clear()
        finally:
            spool.close()

    @staticmethod
    def _forget_delivered(spool: Spool) -> None:
        """Drop the bytes of delivered mails (already out of the outbox) in one write."""
        try:
            spool.forget_delivered()
        except SpoolError as exc:  # the unwritable spool is reported where it matters
            log.debug("cannot drop delivered mails from the outbox yet: %s", exc)

    def _due(self, spool: Spool) -> tuple[list[OutboxRow], float | None]:
        """Every waiting mail (stored ones oldest first, then those in memory) once any is due;
        otherwise nothing, and when the next one will be."""
        self._record_deliveries(spool)
        try:
            stored = spool.waiting_times()
        except Exception as exc:
            log.error("cannot read the outbox: %s", exc)
            return [], self.clock() + 5.0  # look again soon
        with self._lock:
            memory = list(self._memory)
            times = [
                max(t, self._not_before.get(i, 0.0)) for i, t in stored if i not in self._unrecorded
            ]
        times += [row.next_attempt for row in memory]
        if not times:
            return [], None
        if min(times) > self.clock():
            return [], min(times)
        rows = []
        try:
            rows = [r for r in spool.ready(float("inf")) if r.id not in self._unrecorded]
        except Exception as exc:
            log.error("cannot read the outbox: %s", exc)
        return rows + memory, None

    def _record_deliveries(self, spool: Spool) -> None:
        """Tell the spool about deliveries it could not take when they happened."""
        for row_id, (row, when, reply, refused) in list(self._unrecorded.items()):
            try:
                spool.mark_delivered(row, when, reply, refused)
            except SpoolError:
                return  # still unwritable; the rows stay out of every session meanwhile
            del self._unrecorded[row_id]
            self._not_before.pop(row_id, None)
            log.info(
                "recorded the delivery of mail %d now that the spool is writable again", row_id
            )

    def _session(self, spool: Spool, rows: list[OutboxRow]) -> None:
        done: set[int] = set()
        by_id = {row.id: row for row in rows}

        def on_outcome(outcome: Outcome) -> None:
            row = by_id[outcome.ref]
            now = self.clock()
            done.add(row.id)
            self.last_progress = time.monotonic()
            if row.id < 0:
                self._memory_outcome(row, outcome, now)
                return
            try:
                self._not_before.pop(row.id, None)
                if outcome.delivered:
                    spool.mark_delivered(row, now, outcome.reply, outcome.refused)
                    self.delivered_total += 1
                    self.last_delivery = time.time()
                    refused = (
                        f"; refused: {', '.join(f'{r} ({why})' for r, why in outcome.refused.items())}"
                        if outcome.refused
                        else ""
                    )
                    log.info(
                        "delivered mail %d %r to %s: %s%s",
                        row.id,
                        row.summary,
                        ", ".join(r for r in row.rcpts if r not in outcome.refused),
                        outcome.reply,
                        refused,
                    )
                    if outcome.refused:
                        self.last_error = f"recipients refused: {', '.join(outcome.refused)}"
                    if outcome.deferred:
                        # Those recipients still need it: a copy waits in the outbox for them.
                        # events=0: its events are already counted by the delivered original.
                        why = "; ".join(f"{r}: {e}" for r, e in outcome.deferred.items())
                        spool.requeue_for(
                            row,
                            list(outcome.deferred),
                            now + backoff(row.attempts, self.retry_max),
                            why,
                        )
                        log.warning("mail %d deferred for %s; kept for a retry", row.id, why)
                else:
                    error = outcome.permanent_error or outcome.reply
                    spool.mark_failed(row, now, error)
                    self.last_error = error
                    log.error(
                        "mail %d %r refused permanently, not retried: %s",
                        row.id,
                        row.summary,
                        error,
                    )
            except SpoolError as exc:
                if outcome.delivered:  # remember it, or it would be sent again
                    self._unrecorded[row.id] = (row, now, outcome.reply, outcome.refused)
                log.error(
                    "mail %d: the spool cannot record the outcome (kept in memory): %s", row.id, exc
                )

        envelopes = [
            Envelope(
                mail_from=_envelope_sender(r.mail_from),
                rcpt_to=r.rcpts,
                data=r.data,
                ref=r.id,
            )
            for r in rows
        ]
        from notifier.mail.smtp import deliver  # ssl and smtplib: loaded with the first mail

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

    def _memory_outcome(self, row: OutboxRow, outcome: Outcome, now: float) -> None:
        """The outcome of a mail held in memory: it leaves memory unless some recipient must
        still get it."""
        with self._lock:
            self._memory.remove(row)
            if outcome.delivered and outcome.deferred:
                row.rcpts, row.next_attempt = (
                    list(outcome.deferred),
                    now + backoff(row.attempts, self.retry_max),
                )
                self._memory.append(row)
        if outcome.delivered:
            self.delivered_total += 1
            self.last_delivery = time.time()
            log.info(
                "delivered mail %r (held in memory: the spool is unwritable): %s",
                row.summary,
                outcome.reply,
            )
        else:
            self.last_error = outcome.permanent_error or outcome.reply
            log.error("mail %r refused permanently, not retried: %s", row.summary, self.last_error)

    def _defer(self, spool: Spool, rows: list[OutboxRow], reason: str, transient: bool) -> None:
        if not rows:
            return
        attempts = max(r.attempts for r in rows)
        # A permanent session failure (wrong password, untrusted certificate) is not the mail's
        # fault: keep it, but only try again at the cap, or at once after a reload.
        delay = backoff(attempts, self.retry_max) if transient else self.retry_max
        self.last_error = reason
        log.warning(
            "delivery failed (%s), %d mail(s) kept in the outbox; next try in %.0fs: %s",
            "transient" if transient else "needs attention",
            len(rows),
            delay,
            reason,
        )
        when = self.clock() + delay
        with self._lock:
            for row in rows:
                if row.id < 0:
                    row.attempts, row.next_attempt = row.attempts + 1, when
        stored = [r.id for r in rows if r.id >= 0]
        if not stored:
            return
        try:
            spool.defer(stored, when, reason, self.clock())
            with self._lock:
                for i in stored:
                    self._not_before.pop(i, None)
        except SpoolError as exc:  # keep the backoff in memory, or we would retry in a tight loop
            log.error("cannot record the failed attempt: %s", exc)
            with self._lock:
                self._not_before.update({i: when for i in stored})
