"""The queue policy, driven through hours of simulated time with an injected clock."""

from __future__ import annotations

import itertools
import tracemalloc

import pytest

from notifier.events import EVENT, PROBLEM, RESOLVED, Event, Severity
from notifier.policy import (
    MAX_PENDING_IDENTITIES,
    OVERFLOW_KEY,
    AnchoredClock,
    Policy,
    PolicySettings,
    TokenBucket,
)

T0 = 1_750_000_000.0
HOUR = 3600.0


def make(**kw) -> Policy:
    ids = itertools.count(1)
    settings = PolicySettings(
        **{
            "group_wait": 30.0,
            "repeat_interval": 4 * HOUR,
            "send_resolved": True,
            "max_per_hour": 20,
            "burst": 5,
            **kw,
        }
    )
    return Policy(settings, T0, lambda: f"<m{next(ids)}@test>")


def ev(
    state=EVENT,
    key="k",
    severity=Severity.WARNING,
    t=T0,
    source="logs",
    check="ssh",
    count=1,
    summary="x",
):
    return Event(source, check, key, severity, state, summary, {}, t, "nas", count)


def run(p: Policy, start: float, end: float, step: float = 1.0):
    """Tick the policy every `step` seconds from start to end; all mails produced."""
    mails = []
    t = start
    while t <= end:
        mails += p.tick(t)
        t += step
    return mails


def test_group_wait_puts_events_arriving_together_into_one_mail():
    p = make()
    p.observe(ev(key="a"), T0)
    p.observe(ev(key="b", t=T0 + 10), T0 + 10)
    assert p.tick(T0 + 29) == []
    mails = p.tick(T0 + 30)
    assert len(mails) == 1
    assert sorted(i.key for i in mails[0].items) == ["a", "b"]
    assert p.tick(T0 + 31) == []


def test_repeated_one_shot_events_are_counted_not_multiplied():
    p = make()
    for n in range(57):
        p.observe(ev(key="203.0.113.7", t=T0 + n), T0 + n)
    (mail,) = run(p, T0, T0 + 120)
    (item,) = mail.items
    assert item.count == 57
    assert item.first == T0 and item.last == T0 + 56


def test_stateful_problem_is_mailed_once_then_reminded_then_resolved_in_one_thread():
    p = make()
    p.observe(ev(PROBLEM, key="/srv", severity=Severity.CRITICAL), T0)
    mails = []
    # the check keeps reporting the same problem every 5 minutes for 9 hours
    for t in range(0, int(9 * HOUR), 300):
        p.observe(ev(PROBLEM, key="/srv", severity=Severity.CRITICAL, t=T0 + t), T0 + t)
        mails += run(p, T0 + t, T0 + t + 299, step=30)
    kinds = [m.items[0].kind for m in mails]
    assert kinds == ["problem", "reminder", "reminder"]  # at 0h, 4h, 8h
    p.observe(ev(RESOLVED, key="/srv", severity=Severity.INFO, t=T0 + 9 * HOUR), T0 + 9 * HOUR)
    (resolved,) = run(p, T0 + 9 * HOUR, T0 + 9 * HOUR + 60)
    assert resolved.items[0].kind == "resolved"
    root = mails[0].message_id
    assert all(m.in_reply_to == root and m.references == [root] for m in mails[1:] + [resolved])
    assert mails[0].in_reply_to is None
    # a new problem later starts a new thread
    p.observe(ev(PROBLEM, key="/srv", severity=Severity.WARNING, t=T0 + 10 * HOUR), T0 + 10 * HOUR)
    (again,) = run(p, T0 + 10 * HOUR, T0 + 10 * HOUR + 60)
    assert again.in_reply_to is None and again.items[0].kind == "problem"


def test_escalation_is_a_new_mail_and_same_severity_is_deduplicated():
    p = make()
    p.observe(ev(PROBLEM, key="/srv"), T0)
    assert len(run(p, T0, T0 + 60)) == 1
    p.observe(ev(PROBLEM, key="/srv", t=T0 + 100), T0 + 100)
    assert run(p, T0 + 100, T0 + 200) == []
    p.observe(ev(PROBLEM, key="/srv", severity=Severity.CRITICAL, t=T0 + 300), T0 + 300)
    (mail,) = run(p, T0 + 300, T0 + 400)
    assert mail.items[0].previous_severity == Severity.WARNING


def test_resolved_without_open_problem_sends_nothing_and_send_resolved_false_is_respected():
    p = make(send_resolved=False)
    p.observe(ev(RESOLVED, key="/srv"), T0)
    assert run(p, T0, T0 + 60) == []
    p.observe(ev(PROBLEM, key="/srv"), T0 + 100)
    assert len(run(p, T0 + 100, T0 + 200)) == 1
    p.observe(ev(RESOLVED, key="/srv", t=T0 + 300), T0 + 300)
    assert run(p, T0 + 300, T0 + 400) == []
    assert not p.open_alerts()


def test_problem_that_clears_before_its_mail_is_still_told_once():
    p = make()
    p.observe(ev(PROBLEM, key="/srv"), T0)
    p.observe(ev(RESOLVED, key="/srv", t=T0 + 5), T0 + 5)
    (mail,) = run(p, T0, T0 + 60)
    assert mail.items[0].kind == "problem" and mail.items[0].resolved_at == T0 + 5


def test_token_bucket_holds_and_folds_into_a_digest_with_exact_counts():
    p = make(group_wait=0.0, max_per_hour=20, burst=5)
    sent = []
    total = 0
    # one distinct event every 10 seconds for 2 hours: 720 events
    for n in range(720):
        t = T0 + n * 10
        p.observe(ev(key=f"k{n % 50}", t=t), t)
        total += 1
        sent += run(p, t, t + 9, step=1)
    sent += run(p, T0 + 7200, T0 + 3 * HOUR, step=10)
    assert sum(m.total_events for m in sent) == total
    # within budget: burst + 20 per hour over ~3 hours
    assert len(sent) <= 5 + 20 * 3 + 1
    assert any(m.kind == "digest" for m in sent)
    # at no point more than burst + rate * window mails in any hour
    times = [m.created for m in sent]
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u < t + HOUR) <= 5 + 20


def test_storm_of_a_million_events_costs_counters_not_objects():
    p = make(group_wait=30.0)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    n = 1_000_000
    t = T0
    mails = []
    event = ev(key="203.0.113.7")
    for i in range(n):
        if i % 1000 == 0:
            t += 0.01
            mails += p.tick(t)
        event.time = t
        p.observe(event, t)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    mails += run(p, t, t + HOUR, step=30)
    assert sum(m.total_events for m in mails) == n
    assert len(mails) <= 5
    assert grown < 1_000_000  # bytes: a million events cost a few counters


def test_distinct_identities_are_bounded_by_overflow_with_exact_counts():
    p = make(group_wait=60.0)
    n = MAX_PENDING_IDENTITIES + 5000
    for i in range(n):
        p.observe(ev(key=f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"), T0)
    assert len(p.pending) == MAX_PENDING_IDENTITIES + 1
    (mail,) = run(p, T0, T0 + 120)
    assert mail.total_events == n
    assert any(i.key == OVERFLOW_KEY and i.count == 5000 for i in mail.items)


def test_repeat_interval_zero_never_reminds():
    p = make(repeat_interval=0.0)
    p.observe(ev(PROBLEM, key="/srv"), T0)
    assert len(run(p, T0, T0 + 24 * HOUR, step=600)) == 1


def test_next_deadline_is_exact_so_the_daemon_can_sleep_until_then():
    p = make()
    assert p.next_deadline(T0) is None
    p.observe(ev(), T0)
    assert p.next_deadline(T0) == T0 + 30
    run(p, T0, T0 + 30)
    assert p.next_deadline(T0 + 31) is None
    p.observe(ev(PROBLEM, key="/x"), T0 + 100)
    assert p.next_deadline(T0 + 100) == T0 + 130
    run(p, T0 + 100, T0 + 130)
    assert p.next_deadline(T0 + 131) == pytest.approx(T0 + 130 + 4 * HOUR)


def test_restore_keeps_open_alerts_so_a_restart_does_not_re_alert():
    p = make()
    p.observe(ev(PROBLEM, key="/srv"), T0)
    (first,) = run(p, T0, T0 + 60)
    q = make()
    q.restore(list(p.alerts.values()), list(p.pending.values()), p.meta(), T0 + 100)
    q.observe(ev(PROBLEM, key="/srv", t=T0 + 100), T0 + 100)
    assert run(q, T0 + 100, T0 + 200) == []
    q.observe(ev(RESOLVED, key="/srv", t=T0 + 300), T0 + 300)
    (mail,) = run(q, T0 + 300, T0 + 400)
    assert mail.items[0].kind == "resolved" and mail.in_reply_to == first.message_id


def test_token_bucket_refills_at_the_hourly_rate():
    b = TokenBucket(per_hour=60, capacity=2, now=0.0)
    assert b.take(0) and b.take(0) and not b.take(0)
    assert b.next_token(0) == pytest.approx(60.0)
    assert not b.take(59) and b.take(60.5)


def test_anchored_clock_ignores_wall_clock_steps(monkeypatch):
    import time as time_module

    clock = AnchoredClock()
    start = clock()
    real = time_module.time
    monkeypatch.setattr(time_module, "time", lambda: real() - 6 * HOUR)
    assert abs(clock() - start) < 5  # stepping the wall clock back 6 h does not move it


def test_remembered_identities_are_bounded_under_a_botnet_of_distinct_addresses():
    from notifier.policy import MAX_ALERTS

    p = make(group_wait=0.0, max_per_hour=3600, burst=3600)
    p.observe(ev(PROBLEM, key="/srv"), T0)
    t = T0
    for i in range(MAX_ALERTS + 20_000):
        if i % 5000 == 0:
            t += 60
            p.tick(t)
            p.forget_old(t)
        p.observe(ev(key=f"ip{i}", t=t), t)
    p.tick(t + 1)
    p.forget_old(t + 120)
    assert len(p.alerts) <= MAX_ALERTS  # 70,001 identities were seen
    assert ("logs", "ssh", "/srv") in p.alerts  # an open problem is never forgotten
    assert ("logs", "ssh", f"ip{MAX_ALERTS + 19_999}") in p.alerts  # the most recent stay
    assert p.forget_old(t + 130) == []  # not again within a minute
