"""What every source shares: identity, the context it posts into, and failure handling.

Two shapes: a `PeriodicSource` reports the state of each key every `every`
seconds (disk, services); a streaming source (logs, journal) runs its own
thread and posts one-shot events as they come. A source that raises or hangs
becomes an alert about itself and is retried; it never stops the daemon.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from notifier import schema
from notifier.events import EVENT, PROBLEM, RESOLVED, Event, Severity

log = logging.getLogger("notifier.sources")


class SourceContext(Protocol):
    """What the daemon gives a source."""

    host: str

    def post(self, events: list[Event], positions: dict[str, Any] | None = None) -> None:
        """Hand events to the queue; `positions` (log offsets, journal cursors) are saved
        in the same transaction, so a crash neither loses nor repeats them."""

    def position(self, key: str) -> Any | None:
        """A position saved by an earlier `post`, or None."""

    def now(self) -> float:
        """Wall-clock seconds, immune to clock steps while the daemon runs."""


@dataclass(slots=True)
class Observation:
    """The current state of one key of a stateful check; severity None means fine."""

    check: str
    key: str
    severity: Severity | None
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


COMMON_FIELDS: dict[str, schema.Field] = {
    "name": schema.Str(
        description="A label for this entry, used in status and in mails about the source itself.",
        example="auth",
    ),
}

PERIODIC_FIELDS: dict[str, schema.Field] = {
    **COMMON_FIELDS,
    "every": schema.Duration(description="How often to check.", default=60.0, example="1m", min=1),
    "for": schema.Int(
        description="Consecutive failing checks before a problem is reported (debounce).",
        default=1,
        min=1,
        example=2,
    ),
    "timeout": schema.Duration(
        description="A check that takes longer is reported as hung.",
        default=30.0,
        example="30s",
        min=0.1,
    ),
}


class Source:
    """Base of all sources. Subclasses set `key` (= module name) and `entry` (schema of one entry)."""

    key: ClassVar[str] = ""
    entry: ClassVar[schema.Map] = schema.Map()

    def __init__(self, conf: dict[str, Any], index: int, ctx: SourceContext) -> None:
        self.conf = conf
        self.index = index
        self.ctx = ctx
        self.name = f"{self.key}[{conf.get('name') or index}]"
        self.last_check: float | None = None
        self.last_error: str | None = None
        self._failing = False

    def start(self) -> None:
        """Begin watching (streaming sources start their thread here)."""

    def stop(self) -> None:
        """Stop watching; must return promptly."""

    def identity_of_config(self) -> Any:
        """What decides whether a reload changed this source (then it is restarted)."""
        return (self.key, repr(sorted(self.conf.items())))

    # -- failure reporting, shared by every shape of source -----------------
    def report_ok(self) -> None:
        self.last_check = self.ctx.now()
        if self._failing:
            self._failing = False
            self.last_error = None
            self.ctx.post([self._self_event(RESOLVED, "source works again")])

    def report_failure(self, message: str) -> None:
        self.last_check = self.ctx.now()
        first = not self._failing or self.last_error != message
        self._failing = True
        self.last_error = message
        if first:
            log.warning("source %s failing: %s", self.name, message)
            self.ctx.post([self._self_event(PROBLEM, f"source {self.name} failing: {message}")])

    def _self_event(self, state: str, summary: str) -> Event:
        return Event(
            source="notifier",
            check="source-failing",
            key=self.name,
            severity=Severity.WARNING,
            state=state,
            summary=summary,
            details={"source": self.name, "error": self.last_error or ""},
            time=self.ctx.now(),
            host=self.ctx.host,
        )


class PeriodicSource(Source):
    """A stateful source: `check()` returns the state of each key, every `every` seconds."""

    def __init__(self, conf: dict[str, Any], index: int, ctx: SourceContext) -> None:
        super().__init__(conf, index, ctx)
        self.every: float = conf.get("every") or 60.0
        self.debounce: int = conf.get("for") or 1
        self.timeout: float = conf.get("timeout") or 30.0
        self._streak: dict[tuple[str, str], tuple[Severity | None, int]] = {}
        self.completed_runs = 0  # successful checks since start
        self.last_keys: set[tuple[str, str]] = set()  # (check, key) the latest check reported

    def check(self) -> list[Observation]:
        raise NotImplementedError

    def run_once(self) -> None:
        """One check, its observations turned into events (called by the Scheduler)."""
        try:
            observations = self.check()
        except Exception as exc:  # a broken check must not kill the daemon
            log.debug("source %s raised", self.name, exc_info=True)
            self.report_failure(f"{type(exc).__name__}: {exc}")
            return
        events = self.to_events(observations)
        self.last_keys = {(ob.check, ob.key) for ob in observations}
        self.completed_runs += 1
        if events:
            self.ctx.post(events)
        self.report_ok()

    def to_events(self, observations: list[Observation]) -> list[Event]:
        """Apply `for: N`: a problem counts once it was seen N checks in a row."""
        now = self.ctx.now()
        events = []
        for ob in observations:
            ident = (ob.check, ob.key)
            prev, n = self._streak.get(ident, (None, 0))
            n = n + 1 if ob.severity == prev else 1
            self._streak[ident] = (ob.severity, n)
            if ob.severity is None:
                state, severity = RESOLVED, Severity.INFO
            elif n >= self.debounce:
                state, severity = PROBLEM, ob.severity
            else:
                continue
            events.append(
                Event(
                    source=self.key,
                    check=ob.check,
                    key=ob.key,
                    severity=severity,
                    state=state,
                    summary=ob.summary,
                    details=ob.details,
                    time=now,
                    host=self.ctx.host,
                )
            )
        return events


def one_shot(
    source: Source,
    check: str,
    key: str,
    severity: Severity,
    summary: str,
    details: dict[str, Any] | None = None,
    count: int = 1,
) -> Event:
    """A one-shot event (a log line) from `source`."""
    return Event(
        source=source.key,
        check=check,
        key=key,
        severity=severity,
        state=EVENT,
        summary=summary,
        details=details or {},
        time=source.ctx.now(),
        host=source.ctx.host,
        count=count,
    )


class Scheduler:
    """Runs every PeriodicSource on its interval, each run in its own thread with a timeout.

    One thread sleeps until the next run is due or a run's timeout ends: no polling
    while idle, and no timer thread per run. A run that has not finished within the
    source's `timeout` is reported as hung and the source is not started again until
    that run returns.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, PeriodicSource]] = []
        self._cond = threading.Condition()
        self._running: dict[int, tuple[threading.Thread, float]] = {}
        self._deadlines: list[tuple[float, int, PeriodicSource, threading.Thread]] = []  # heap
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._seq = 0

    def add(self, source: PeriodicSource, delay: float = 0.0) -> None:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (self._clock() + delay, self._seq, source))
            self._cond.notify()

    def remove(self, source: PeriodicSource) -> None:
        with self._cond:
            self._heap = [item for item in self._heap if item[2] is not source]
            heapq.heapify(self._heap)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread:
            self._thread.join(timeout=5)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            due: PeriodicSource | None = None
            with self._cond:
                while not self._stopped:
                    now = self._clock()
                    overdue = self._overdue(now)
                    if overdue or (self._heap and self._heap[0][0] <= now):
                        break
                    wake = min([when for when, *_ in self._heap[:1] + self._deadlines[:1]],
                               default=None)  # fmt: skip
                    self._cond.wait(timeout=None if wake is None else wake - now)
                if self._stopped:
                    return
                if self._heap and self._heap[0][0] <= now:
                    _, _, due = heapq.heappop(self._heap)
                    self._seq += 1
                    heapq.heappush(self._heap, (now + due.every, self._seq, due))
            for source in overdue:  # outside the lock: reporting posts an event
                source.report_failure(f"check hung: no answer within {source.timeout:g}s")
            if due is not None:
                self._launch(due)

    def _overdue(self, now: float) -> list[PeriodicSource]:
        """Sources whose run passed its timeout just now (each run reported once)."""
        overdue = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, source, thread = heapq.heappop(self._deadlines)
            if thread.is_alive():
                overdue.append(source)
        return overdue

    def _launch(self, source: PeriodicSource) -> None:
        running = self._running.get(id(source))
        if running and running[0].is_alive():
            thread, started = running
            waited = self._clock() - started
            if waited > source.timeout:
                source.report_failure(
                    f"check hung: no answer for {waited:.0f}s (timeout {source.timeout:g}s)"
                )
            return
        thread = threading.Thread(target=source.run_once, name=f"check {source.name}", daemon=True)
        started = self._clock()
        self._running[id(source)] = (thread, started)
        thread.start()
        with self._cond:  # the loop wakes at the deadline to see whether the run is still going
            self._seq += 1
            heapq.heappush(self._deadlines, (started + source.timeout, self._seq, source, thread))
