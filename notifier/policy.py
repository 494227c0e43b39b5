"""The queue policy: which events become which mails, and when. Pure logic, clock injected.

Events go in (`observe`), mails come out (`tick`). Between them: grouping
(`group_wait`), dedupe by identity, reminders (`repeat_interval`), resolved
mails, and a token bucket (`max_per_hour`, `burst`) that, when empty, holds
everything pending until the next token and sends it as one digest. Nothing is
dropped: counts stay exact, and memory grows with distinct identities, not
with events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from notifier.events import EVENT, PROBLEM, RESOLVED, Event, Severity

Identity = tuple[str, str, str]

# Kinds of item in a mail.
NEW = "problem"  # a problem opened (or changed severity)
REMINDER = "reminder"  # a problem still open after repeat_interval
CLEARED = "resolved"  # a problem cleared
HAPPENED = "event"  # one-shot events, counted

MAX_ALERTS = 50_000  # remembered identities; beyond it the least recently seen closed ones go
MAX_PENDING_IDENTITIES = 10_000  # beyond this, new keys fold into one overflow item per check
OVERFLOW_KEY = "(other keys)"


class AnchoredClock:
    """Wall-clock seconds that advance with the monotonic clock.

    Read the wall clock once at start; afterwards only monotonic time moves it,
    so stepping the system clock by hours neither fires nor silences reminders.
    """

    def __init__(self) -> None:
        self._wall0 = time.time()
        self._mono0 = time.monotonic()

    def __call__(self) -> float:
        return self._wall0 + (time.monotonic() - self._mono0)


@dataclass
class PolicySettings:
    group_wait: float = 30.0
    repeat_interval: float = 4 * 3600.0
    send_resolved: bool = True
    max_per_hour: int = 20
    burst: int = 5

    @classmethod
    def from_config(cls, policy: dict[str, Any]) -> PolicySettings:
        return cls(
            group_wait=policy["group_wait"],
            repeat_interval=policy["repeat_interval"],
            send_resolved=policy["send_resolved"],
            max_per_hour=policy["max_per_hour"],
            burst=policy["burst"],
        )


class _Stored:
    """A dataclass kept in the spool as JSON, known by its (source, check, key) identity."""

    source: str
    check: str
    key: str

    @property
    def identity(self) -> Identity:
        return (self.source, self.check, self.key)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        return cls(**d)


@dataclass
class Alert(_Stored):
    """What we remember about one identity between mails."""

    source: str
    check: str
    key: str
    severity: int = Severity.INFO
    open: bool = False  # a stateful problem is open now
    summary: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    since: float = 0.0  # when the open problem began
    last_seen: float = 0.0
    last_notified: float | None = None
    thread_id: str | None = None  # Message-ID of the first mail of this alert's thread
    events_total: int = 0  # one-shot events seen under this identity, ever
    by_source: bool = False  # opened by a configured source (not `notifier send`)


@dataclass
class Item(_Stored):
    """One identity's line in a mail: what happened, how often, since when."""

    source: str
    check: str
    key: str
    kind: str
    severity: int
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    count: int = 1
    first: float = 0.0
    last: float = 0.0
    since: float = 0.0  # for problems: when it opened
    previous_severity: int | None = None  # escalation / what a resolved problem was
    resolved_at: float | None = None  # a problem that cleared before its mail went out
    last_summary: str = ""
    host: str = ""


@dataclass
class Mail:
    """One mail to send: its items and its place in a thread."""

    kind: str  # "alert" (one or a group sent on time) or "digest" (held back by the rate limit)
    items: list[Item]
    created: float
    message_id: str
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    held_since: float | None = None  # for digests: when the rate limit began holding

    @property
    def total_events(self) -> int:
        return sum(item.count for item in self.items)


class TokenBucket:
    """`rate` tokens an hour, at most `capacity` saved up."""

    def __init__(self, per_hour: int, capacity: int, now: float) -> None:
        self.rate = per_hour / 3600.0
        self.capacity = float(capacity)
        self.tokens = float(capacity)
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def next_token(self, now: float) -> float:
        """When the next whole token will be there."""
        self._refill(now)
        if self.tokens >= 1.0:
            return now
        return now + (1.0 - self.tokens) / self.rate

    def state(self) -> dict[str, float]:
        return {"tokens": self.tokens, "stamp": self.stamp}

    def restore(self, state: dict[str, float]) -> None:
        self.tokens = min(self.capacity, float(state.get("tokens", self.capacity)))
        # A stamp from the future (the clock went back while stopped) would freeze the refill.
        self.stamp = min(float(state.get("stamp", self.stamp)), self.stamp)


class Policy:
    """Turns events into mails. Every method takes `now`; nothing here sleeps or does I/O.

    The caller persists `dirty_alerts`, `dirty_pending`/`removed_pending` and
    `bucket` after each call, in the same transaction as the mails it produced.
    """

    def __init__(
        self,
        settings: PolicySettings,
        now: float,
        new_message_id: Callable[[], str] = lambda: "<unset@notifier>",
    ) -> None:
        self.settings = settings
        self.new_message_id = new_message_id
        self.alerts: dict[Identity, Alert] = {}
        self.pending: dict[Identity, Item] = {}
        self.group_started: float | None = None
        self.held_since: float | None = None
        self.bucket = TokenBucket(settings.max_per_hour, settings.burst, now)
        self.dirty_alerts: set[Identity] = set()
        self.dirty_pending: set[Identity] = set()
        self.removed_pending: set[Identity] = set()
        self._open: set[Identity] = set()
        self._forgot_at = float("-inf")

    # -- restoring from the spool ------------------------------------------
    def restore(
        self, alerts: list[Alert], pending: list[Item], meta: dict[str, Any], now: float
    ) -> None:
        for a in alerts:
            if a.last_notified is not None and a.last_notified > now:
                # The wall clock was stepped back while we were stopped: waiting until this
                # moment comes again would silence reminders for that long.
                a.last_notified = now
            self.alerts[a.identity] = a
            if a.open:
                self._open.add(a.identity)
        for item in pending:
            self.pending[item.identity] = item
        if self.pending:
            # Whatever waited before a restart goes out one group_wait from now.
            self.group_started = now
        self.held_since = meta.get("held_since")
        if "bucket" in meta:
            self.bucket.restore(meta["bucket"])

    def reconfigure(self, settings: PolicySettings, now: float) -> None:
        state = self.bucket.state()
        self.settings = settings
        self.bucket = TokenBucket(settings.max_per_hour, settings.burst, now)
        self.bucket.restore(state)

    def meta(self) -> dict[str, Any]:
        return {"bucket": self.bucket.state(), "held_since": self.held_since}

    # -- events in -----------------------------------------------------------
    def observe(self, event: Event, now: float, *, by_source: bool = False) -> None:
        when = event.time or now
        if event.state == EVENT:
            self._one_shot(event, when, now)
        elif event.state == PROBLEM:
            self._problem(event, when, now, by_source)
        elif event.state == RESOLVED:
            self._resolved(event, when, now)
        else:
            raise ValueError(f"unknown event state {event.state!r}")

    def _alert(self, event: Event) -> Alert:
        ident = event.identity
        alert = self.alerts.get(ident)
        if alert is None:
            alert = Alert(event.source, event.check, event.key)
            self.alerts[ident] = alert
        self.dirty_alerts.add(ident)
        return alert

    def _queue(self, item: Item, now: float) -> None:
        ident = item.identity
        self.pending[ident] = item
        self.dirty_pending.add(ident)
        self.removed_pending.discard(ident)
        if self.group_started is None:
            self.group_started = now

    def _one_shot(self, event: Event, when: float, now: float) -> None:
        first = event.first_time if event.first_time is not None else when
        ident = event.identity
        item = self.pending.get(ident)
        if item is None and len(self.pending) >= MAX_PENDING_IDENTITIES:
            # A storm of distinct keys (every IP on the internet): count the rest under one
            # item per check so memory stays bounded; the counts stay exact.
            ident = (event.source, event.check, OVERFLOW_KEY)
            item = self.pending.get(ident)
        if item is not None and item.kind == HAPPENED:
            item.count += event.count
            item.first = min(item.first, first)
            item.last = max(item.last, when)
            item.last_summary = event.summary
            item.severity = max(item.severity, int(event.severity))
            self.dirty_pending.add(ident)
        else:
            self._queue(
                Item(
                    *ident,
                    HAPPENED,
                    int(event.severity),
                    event.summary,
                    dict(event.details),
                    event.count,
                    first,
                    when,
                    host=event.host,
                    last_summary=event.summary,
                ),
                now,
            )
        if ident == event.identity:
            alert = self._alert(event)
            alert.last_seen = when
            alert.events_total += event.count
            alert.severity = int(event.severity)
            alert.summary = event.summary

    def _problem(self, event: Event, when: float, now: float, by_source: bool = False) -> None:
        ident = event.identity
        alert = self.alerts.get(ident)
        if alert is not None and alert.open and alert.severity == event.severity:
            # Same problem, still there: remember the latest words, mail nothing.
            alert.last_seen = when
            alert.summary = event.summary
            alert.details = dict(event.details)
            pending = self.pending.get(ident)
            if pending is not None and pending.kind in (NEW, REMINDER):
                pending.summary, pending.details = event.summary, dict(event.details)
                self.dirty_pending.add(ident)
            self.dirty_alerts.add(ident)
            return
        alert = self._alert(event)
        previous = alert.severity if alert.open else None
        if not alert.open:
            alert.since = when
            alert.open = True
            alert.by_source = by_source
            self._open.add(ident)
        alert.severity = int(event.severity)
        alert.summary = event.summary
        alert.details = dict(event.details)
        alert.last_seen = when
        self._queue(
            Item(
                event.source,
                event.check,
                event.key,
                NEW,
                int(event.severity),
                event.summary,
                dict(event.details),
                1,
                when,
                when,
                since=alert.since,
                previous_severity=previous,
                host=event.host,
            ),
            now,
        )

    def _resolved(self, event: Event, when: float, now: float) -> None:
        ident = event.identity
        alert = self.alerts.get(ident)
        if alert is None or not alert.open:
            return  # nothing was wrong: nothing to say
        self.dirty_alerts.add(ident)
        alert.open = False
        self._open.discard(ident)
        alert.last_seen = when
        pending = self.pending.get(ident)
        if pending is not None and pending.kind == NEW:
            # It cleared before its mail went out: still tell, once, that it happened.
            pending.resolved_at = when
            self.dirty_pending.add(ident)
            return
        if not self.settings.send_resolved:
            if pending is not None:
                self._unqueue(ident)
            return
        self._queue(
            Item(
                event.source,
                event.check,
                event.key,
                CLEARED,
                int(Severity.INFO),
                event.summary,
                dict(event.details),
                1,
                when,
                when,
                since=alert.since,
                previous_severity=alert.severity,
                host=event.host,
            ),
            now,
        )

    def _unqueue(self, ident: Identity) -> None:
        self.pending.pop(ident, None)
        self.dirty_pending.discard(ident)
        self.removed_pending.add(ident)

    # -- time passes, mails out ------------------------------------------------
    def _due_reminders(self, now: float) -> None:
        interval = self.settings.repeat_interval
        if interval <= 0:
            return
        for ident in self._open:
            alert = self.alerts[ident]
            if ident in self.pending or alert.last_notified is None:
                continue
            if now - alert.last_notified >= interval:
                self._queue(
                    Item(
                        alert.source,
                        alert.check,
                        alert.key,
                        REMINDER,
                        alert.severity,
                        alert.summary,
                        dict(alert.details),
                        1,
                        alert.since,
                        now,
                        since=alert.since,
                    ),
                    now,
                )

    def next_deadline(self, now: float) -> float | None:
        """The next moment `tick` has something to do; None when nothing is waiting."""
        times = []
        if self.pending and self.group_started is not None:
            due = self.group_started + self.settings.group_wait
            if self.held_since is not None or due <= now:
                due = max(due, self.bucket.next_token(now))
            times.append(due)
        if self.settings.repeat_interval > 0:
            for ident in self._open:
                alert = self.alerts[ident]
                if alert.last_notified is not None and ident not in self.pending:
                    times.append(alert.last_notified + self.settings.repeat_interval)
        return min(times) if times else None

    def tick(self, now: float) -> list[Mail]:
        """Mails due now (at most one: everything pending goes into it)."""
        self._due_reminders(now)
        if not self.pending or self.group_started is None:
            return []
        if now < self.group_started + self.settings.group_wait:
            return []
        if not self.bucket.take(now):
            if self.held_since is None:
                self.held_since = self.group_started
            return []
        items = sorted(self.pending.values(), key=lambda i: (-i.severity, i.first))
        kind = "digest" if self.held_since is not None else "alert"
        mail = Mail(
            kind=kind,
            items=items,
            created=now,
            message_id=self.new_message_id(),
            held_since=self.held_since,
        )
        if len(items) == 1:
            alert = self.alerts.get(items[0].identity)
            if alert is not None and alert.thread_id:
                mail.in_reply_to = alert.thread_id
                mail.references = [alert.thread_id]
        for item in items:
            alert = self.alerts.get(item.identity)
            if alert is None:
                continue
            alert.last_notified = now
            if item.kind == CLEARED or item.resolved_at is not None:
                alert.thread_id = None  # the story is over; a new problem starts a new thread
            elif not alert.thread_id:
                alert.thread_id = mail.message_id
            self.dirty_alerts.add(item.identity)
        for ident in list(self.pending):
            self._unqueue(ident)
        self.group_started = None
        self.held_since = None
        return [mail]

    def forget_old(self, now: float, older_than: float = 7 * 86400) -> list[Identity]:
        """Drop closed alerts not seen for a week, and beyond MAX_ALERTS the least recently
        seen closed ones, so the table follows what is current and a botnet of distinct
        addresses cannot grow it without bound. Does the work at most once a minute."""
        if now - self._forgot_at < 60.0 and len(self.alerts) <= MAX_ALERTS:
            return []
        self._forgot_at = now
        closed = [
            (a.last_seen, ident)
            for ident, a in self.alerts.items()
            if not a.open and ident not in self.pending
        ]
        gone = [
            ident
            for seen, ident in closed
            if now - max(seen, self.alerts[ident].last_notified or 0) > older_than
        ]
        excess = len(self.alerts) - len(gone) - MAX_ALERTS
        if excess > 0:
            dropped = set(gone)
            keep_room = excess + MAX_ALERTS // 5  # make room, so this does not run every batch
            gone += [ident for _, ident in sorted(closed) if ident not in dropped][:keep_room]
        for ident in gone:
            del self.alerts[ident]
            self.dirty_alerts.discard(ident)
        return gone

    def open_alerts(self) -> list[Alert]:
        return [self.alerts[i] for i in self._open]
