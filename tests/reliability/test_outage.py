"""A long SMTP outage in four acts: connection refused, a server that accepts and then hangs
mid-DATA, one that answers 421 and 451, and back. The outbox keeps everything, the backoff
stays under its cap, and when the server returns every mail arrives once, in order."""

from __future__ import annotations

import re

from notifier.sender import backoff
from tests.helpers import wait_for

from .rigging import FaultyProxy

RETRY_MAX = 2.0
TIMEOUT = 1.0


def test_backoff_is_capped_and_never_zero_over_any_number_of_attempts():
    for cap in (1.0, 2.0, 600.0, 86400.0):
        delays = [
            backoff(n, cap, rng)
            for n in range(0, 100_000, 7)
            for rng in (lambda: 0.0, lambda: 0.999)
        ]
        assert max(delays) <= cap and min(delays) >= min(1.0, cap)
    # It grows: the second try waits longer than the first, until the cap.
    assert backoff(0, 600, lambda: 0.5) < backoff(3, 600, lambda: 0.5) <= 600


def test_outage_in_four_acts_then_everything_arrives_once_in_order(rig):
    proxy = FaultyProxy(rig.catcher.port)
    rig.configure(
        smtp={"port": proxy.port, "timeout": f"{TIMEOUT:g}s"},
        policy={"retry_max": f"{RETRY_MAX:g}s", "max_per_hour": 3600, "burst": 100},
    )
    daemon = rig.start()
    sent: list[str] = []

    def event(name: str) -> None:
        sent.append(name)
        rig.send(f"outage {name}", "warning", "--key", name)

    def attempts_after(mark: int, n: int) -> None:
        wait_for(lambda: len(proxy.accepted) >= mark + n, 20, f"{n} more connection attempts")

    try:
        # Act 1: nothing listens.
        proxy.refuse()
        for i in range(3):
            event(f"refused-{i}")
        wait_for(lambda: daemon.log().count("connection refused") >= 3, 20, "refused attempts")
        # Act 2: it accepts, then hangs in the middle of DATA (and one that never greets).
        proxy.mode, proxy.after = "blackhole", 1400
        proxy.resume()
        mark = len(proxy.accepted)
        event("hang-0")
        attempts_after(mark, 2)
        proxy.mode = "silent"
        mark = len(proxy.accepted)
        event("silent-0")
        attempts_after(mark, 2)
        assert "timed out" in daemon.log()
        # Act 3: the server answers, but 421 and then 451.
        proxy.mode = "pass"
        rig.catcher.fail_mail_with = "421 4.3.2 Service shutting down, try later"
        mark = len(proxy.accepted)
        event("421-0")
        attempts_after(mark, 2)
        rig.catcher.fail_mail_with = None
        rig.catcher.fail_data_with = "451 4.3.0 Temporary lookup failure"
        mark = len(proxy.accepted)
        event("451-0")
        attempts_after(mark, 2)
        assert rig.catcher.messages == []
        status = rig.status()
        assert status["outbox"]["depth"] == len(sent), status[
            "outbox"
        ]  # nothing lost, nothing sent
        assert status["outbox"]["attempts"] >= 2 and "451" in status["last_error"]["error"]
        # The gaps between attempts never exceed the cap (plus one timeout and scheduling).
        gaps = [b - a for a, b in zip(proxy.accepted, proxy.accepted[1:], strict=False)]
        assert max(gaps) <= RETRY_MAX + TIMEOUT + 1.5, gaps
        waits = [float(x) for x in re.findall(r"next try in (\d+)s", daemon.log())]
        assert waits and max(waits) <= RETRY_MAX, waits
        print(
            f"outage: {len(proxy.accepted)} connections accepted, {len(waits)} deferrals, "
            f"longest gap {max(gaps):.1f}s (cap {RETRY_MAX:g}s + timeout {TIMEOUT:g}s)"
        )
        # Act 4: back. A new event right at that moment must not overtake the old mail.
        rig.catcher.fail_data_with = None
        event("back-0")
        event("back-1")
        wait_for(lambda: len(rig.catcher.messages) >= len(sent), 30, "every mail")
        wait_for(lambda: rig.status()["outbox"]["depth"] == 0, 15, "an empty outbox")
        got = [
            str(m.message["Subject"]).removeprefix("[nas01] WARNING: outage ")
            for m in rig.catcher.messages
        ]
        assert got == sent, f"order or count wrong:\n sent {sent}\n got  {got}"
        # The catcher received 421/451-refused and hung transactions too, but kept none of them.
        assert len({m.message["Message-ID"] for m in rig.catcher.messages}) == len(sent)
    finally:
        proxy.close()
