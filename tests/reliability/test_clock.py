"""Clock jumps: the wall clock stepped back or forward by hours neither fires nor silences a
reminder, nor freezes the rate limit, while the daemon runs (monotonic time drives intervals)
or across a restart (times from the future found in the spool are brought back to now)."""

from __future__ import annotations

import json
import sqlite3
import time

from notifier import policy as policy_module
from notifier.events import PROBLEM, Event, Severity
from notifier.policy import REMINDER, AnchoredClock, Policy, PolicySettings

HOUR = 3600.0
T0 = 1_750_000_000.0


class FakeTime:
    """time.time and time.monotonic for the policy module: the wall clock can be stepped."""

    def __init__(self) -> None:
        self.wall = T0
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def step_wall(self, seconds: float) -> None:
        self.wall += seconds  # what `date -s` or a bad NTP server does


def problem(t: float) -> Event:
    return Event(
        "disk", "usage", "/srv", Severity.CRITICAL, PROBLEM, "/srv is 95% full", {}, t, "nas"
    )


def reminders_with(clock, fake: FakeTime, steps: list[tuple[float, float]]) -> list[float]:
    """Open a problem, then walk through (advance, step) pairs; monotonic hours of reminders."""
    settings = PolicySettings(group_wait=30.0, repeat_interval=4 * HOUR, max_per_hour=20, burst=5)
    p = Policy(settings, clock(), lambda: "<m@test>")
    start = fake.mono
    p.observe(problem(clock()), clock())
    fake.advance(30)
    assert len(p.tick(clock())) == 1  # the problem mail
    fired = []
    for advance, step in steps:
        fake.step_wall(step)
        for _ in range(int(advance // 60)):
            fake.advance(60)
            for mail in p.tick(clock()):
                if mail.items[0].kind == REMINDER:
                    fired.append(round((fake.mono - start) / HOUR, 2))
    return fired


def test_stepping_the_wall_clock_neither_fires_nor_silences_reminders(monkeypatch):
    # Back 5 h after one hour, forward 7 h after two more, back 3 h later: 13 h of real time.
    steps = [(1 * HOUR, 0), (2 * HOUR, -5 * HOUR), (3 * HOUR, +7 * HOUR), (7 * HOUR, -3 * HOUR)]
    fake = FakeTime()
    monkeypatch.setattr(policy_module.time, "time", lambda: fake.wall)
    monkeypatch.setattr(policy_module.time, "monotonic", lambda: fake.mono)
    anchored = reminders_with(AnchoredClock(), fake, steps)
    # Every 4 h of real time (plus the group_wait of each reminder), however the wall clock moved.
    assert len(anchored) == 3 and all(abs(h - 4 * (n + 1)) < 0.1 for n, h in enumerate(anchored)), (
        anchored
    )
    # The same walk with the plain wall clock shows what the anchoring prevents.
    fake = FakeTime()
    naive = reminders_with(lambda: fake.wall, fake, steps)
    assert naive != anchored


def test_times_from_the_future_in_the_spool_are_brought_back_to_now():
    """The clock was stepped back while notifier was stopped: what it saved looks like the
    future. Reminders must not wait those hours out, and the rate limit must not freeze."""
    settings = PolicySettings(group_wait=0.0, repeat_interval=HOUR, max_per_hour=20, burst=1)
    before = Policy(settings, T0, lambda: "<m@test>")
    before.observe(problem(T0), T0)
    assert before.tick(T0)  # sent: last_notified = T0, the bucket is empty
    alerts, meta = list(before.alerts.values()), before.meta()
    now = T0 - 5 * HOUR  # restarted after the wall clock went back five hours
    after = Policy(settings, now, lambda: "<m@test>")
    after.restore(alerts, [], meta, now)
    mails = [m for t in range(0, int(2 * HOUR), 60) for m in after.tick(now + t)]
    assert [m.items[0].kind for m in mails] == [REMINDER], "the reminder came an hour later, once"
    assert after.bucket.next_token(now) <= now + HOUR / 20 + 1


def test_a_restart_after_the_clock_went_back_still_reminds_on_time(rig):
    rig.configure(policy={"group_wait": "0s", "repeat_interval": "3s"})
    daemon = rig.start()
    rig.send("pool degraded", "critical", "--state", "problem", "--key", "tank")
    rig.catcher.wait_for(1, timeout=20)
    assert daemon.stop() == 0
    # What the spool holds now looks five hours ahead of the stepped-back clock.
    db = sqlite3.connect(rig.state / "spool.db")
    (data,) = db.execute("SELECT data FROM alerts").fetchone()
    alert = json.loads(data)
    alert["last_notified"] += 5 * HOUR
    db.execute("UPDATE alerts SET data = ?", (json.dumps(alert),))
    db.commit()
    db.close()
    started = time.monotonic()
    rig.start()
    (_, reminder) = rig.catcher.wait_for(2, timeout=20)
    assert "still CRITICAL" in str(reminder.message["Subject"])
    assert time.monotonic() - started < 15
