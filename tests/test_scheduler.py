"""The Scheduler of periodic sources with real threads: runs on time, a hung run is reported
once at its timeout and not started again until it returns, and no thread waits per run."""

from __future__ import annotations

import threading
import time
from typing import Any

from helpers import wait_for

from notifier.events import Event
from notifier.sources.base import Observation, PeriodicSource, Scheduler


class Context:
    host = "nas01"

    def __init__(self) -> None:
        self.events: list[Event] = []

    def post(self, events: list[Event], positions: dict[str, Any] | None = None) -> None:
        self.events.extend(events)

    def position(self, key: str) -> Any | None:
        return None

    def now(self) -> float:
        return time.time()


class Probe(PeriodicSource):
    key = "probe"

    def __init__(self, every: float, timeout: float, hang: threading.Event | None = None):
        super().__init__({"every": every, "timeout": timeout}, 0, Context())
        self.hang = hang
        self.runs = 0

    def check(self) -> list[Observation]:
        self.runs += 1
        if self.hang is not None:
            self.hang.wait(30)
        return []


def test_runs_on_their_interval_without_a_thread_per_waiting_run():
    scheduler = Scheduler()
    fast, slow = Probe(every=1, timeout=30), Probe(every=60, timeout=30)
    scheduler.add(fast)
    scheduler.add(slow)
    before = set(threading.enumerate())
    scheduler.start()
    try:
        wait_for(lambda: fast.runs >= 3 and slow.runs == 1, 10, "three fast runs, one slow")
        time.sleep(0.2)  # the runs themselves have ended (the next is 0.8 s away)
        new = [t.name for t in set(threading.enumerate()) - before]
        assert new == ["scheduler"]  # no timer thread waits out each run's timeout
    finally:
        scheduler.stop()
    assert not scheduler.alive()


def test_a_hung_run_is_reported_once_and_not_started_again_until_it_returns():
    release = threading.Event()
    stuck = Probe(every=1, timeout=1.5, hang=release)
    scheduler = Scheduler()
    scheduler.add(stuck)
    scheduler.start()
    try:
        began = time.monotonic()
        wait_for(lambda: stuck.ctx.events, 5, "the hung report")
        assert 1.4 <= time.monotonic() - began < 3
        (event,) = stuck.ctx.events
        assert event.summary == "source probe[0] failing: check hung: no answer within 1.5s"
        assert stuck.runs == 1
        time.sleep(1.2)  # the next turns find the run still going: not started again
        assert stuck.runs == 1 and stuck.last_error.startswith("check hung: no answer for ")
        release.set()
        wait_for(lambda: stuck.runs >= 2, 5, "a new run once the hung one returned")
        wait_for(lambda: not stuck._failing, 5, "the all-clear")
    finally:
        release.set()
        scheduler.stop()
