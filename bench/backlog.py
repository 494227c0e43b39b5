#!/usr/bin/env python3
"""Outage backlog: 500 mails in the outbox delivered once the server is back, through notifier's
Sender (one SMTP session), against a plain `smtplib.SMTP_SSL` loop (one connection per mail).

Both send the same 500 messages to the same local TLS SMTP server (notifier.catcher, in a
process of its own). The Sender starts while the server is still down, so the outbox is
really a backlog; the clock starts when the server answers again. Target: >= 10x faster than
the loop, and every mail delivered exactly once.
"""

from __future__ import annotations

import email
import logging
import shutil
import smtplib
import ssl
import tempfile
import time
from pathlib import Path
from tempfile import mkdtemp

from _common import CatcherProcess, Result, arguments, free_port, machine, median, wait_for

TARGET = 10.0


def messages(n: int, run: int) -> list[tuple[str, bytes]]:
    """`n` alert mails as the daemon builds them: (Message-ID, bytes)."""
    from notifier.mail.message import build_message, make_message_id

    out = []
    for i in range(n):
        mid = make_message_id("bench", f"backlog-{run}-{i}-{time.time_ns()}")
        text = (
            f"CRITICAL  /srv/media is 97% full ({i})\n  since Mar  1 02:00\n"
            "  (disk / space / /srv/media)\n  free: 12.3 GiB of 3.6 TiB\n"
        ) * 8
        data = build_message(
            mail_from="bench <alerts@example.com>",
            to=["admin@example.com"],
            subject=f"[bench] CRITICAL /srv/media is 97% full ({i})",
            text=text,
            html=f"<pre>{text}</pre>",
            message_id=mid,
            date=time.time(),
        )
        out.append((mid, data))
    return out


def caught_ids(catcher: CatcherProcess, since: int) -> list[str]:
    """Message-IDs of the mails the server accepted after its first `since`."""
    files = sorted(catcher.maildir.glob("*.eml"))[since:]
    return [email.message_from_bytes(p.read_bytes())["Message-ID"] for p in files]


def notifier_run(
    work: Path, mails: list[tuple[str, bytes]]
) -> tuple[float, list[str], CatcherProcess]:
    """Seconds for the Sender to empty an outbox of `mails` once the server is back; the
    Message-IDs the server got; the server, still running."""
    from notifier.catcher import Certs
    from notifier.mail.smtp import SmtpSettings
    from notifier.policy import AnchoredClock
    from notifier.sender import Sender
    from notifier.spool import Spool

    logging.getLogger("notifier").setLevel(logging.ERROR)  # the outage's warnings are expected

    state = work / f"state-{time.monotonic_ns()}"
    spool = Spool(state)
    with spool.transaction() as db:
        for mid, data in mails:
            spool.add_outbox(
                db,
                created=time.time(),
                message_id=mid,
                mail_from="alerts@example.com",
                rcpts=["admin@example.com"],
                data=data,
                summary="bench",
                events=1,
            )
    port = free_port()
    certs = Certs(directory=mkdtemp(dir=work))
    settings = SmtpSettings(
        host="localhost", port=port, security="tls", ca_file=certs.ca_file, timeout=10.0
    )
    sender = Sender(str(state), settings, lambda: None, AnchoredClock(), retry_max=60.0)
    sender.start()
    catcher = None
    try:
        # The outage: nothing listens, every mail waits for its retry.
        wait_for(lambda: spool.outbox_stats()["max_attempts"] > 0, 30, "a failed attempt")
        catcher = CatcherProcess(work / f"mail-{port}", port, certs.dir)
        # The server is back; as after `systemctl reload notifier`, the backlog is due now.
        t0 = time.perf_counter()
        spool.retry_now()
        sender.wake()
        wait_for(lambda: spool.outbox_stats()["depth"] == 0, 120, "the outbox to empty", 0.01)
        took = time.perf_counter() - t0
    except BaseException:
        if catcher is not None:
            catcher.stop()
        raise
    finally:
        sender.stop()
        spool.close()
        shutil.rmtree(state, ignore_errors=True)
    wait_for(lambda: catcher.count() >= len(mails), 10, "the server to keep every mail")
    return took, caught_ids(catcher, 0), catcher


def loop_run(mails: list[tuple[str, bytes]], catcher: CatcherProcess) -> tuple[float, list[str]]:
    """The baseline: one verified SMTP_SSL connection per mail, to the same server."""
    port, ca_file = catcher.port, catcher.ca_file
    before = catcher.count()
    t0 = time.perf_counter()
    for _, data in mails:
        ctx = ssl.create_default_context(cafile=ca_file)
        with smtplib.SMTP_SSL("localhost", port, context=ctx, timeout=10) as smtp:
            smtp.sendmail("alerts@example.com", ["admin@example.com"], data)
    took = time.perf_counter() - t0
    wait_for(lambda: catcher.count() >= before + len(mails), 10, "the server to keep every mail")
    return took, caught_ids(catcher, before)


def one_session_run(mails: list[tuple[str, bytes]], catcher: CatcherProcess) -> float:
    """The floor: a bare smtplib client sending every mail through one session, no spool."""
    before = catcher.count()
    t0 = time.perf_counter()
    ctx = ssl.create_default_context(cafile=catcher.ca_file)
    with smtplib.SMTP_SSL("localhost", catcher.port, context=ctx, timeout=10) as smtp:
        for _, data in mails:
            smtp.sendmail("alerts@example.com", ["admin@example.com"], data)
    took = time.perf_counter() - t0
    wait_for(lambda: catcher.count() >= before + len(mails), 10, "the server to keep every mail")
    return took


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    n, runs = (20, 2) if args.quick else (500, 3)
    result = Result("backlog", args.quick)
    ours, theirs, floors, exact = [], [], [], True
    with tempfile.TemporaryDirectory(prefix="notifier-bench-") as tmp:
        work = Path(tmp)
        for run in range(runs):
            mails = messages(n, run)
            wanted = sorted(mid for mid, _ in mails)
            took, got, catcher = notifier_run(work, mails)
            try:
                exact &= sorted(got) == wanted
                ours.append(took)
                took, got = loop_run(mails, catcher)
                exact &= sorted(got) == wanted
                theirs.append(took)
                floors.append(one_session_run(mails, catcher))
            finally:
                catcher.stop()
    a, b, f = median(ours), median(theirs), median(floors)
    result.figures.update(
        {
            "mails": n,
            "notifier_s": ours,
            "smtp_ssl_loop_s": theirs,
            "smtplib_one_session_s (floor: the server's own cost)": floors,
            "each_delivered_once": exact,
            "machine": machine(),
        }
    )
    result.target(
        f"outage backlog, {n} mails",
        ">= 10x the per-mail loop",
        f"{a:.2f} s ({n / a:.0f} mails/s)",
        f"SMTP_SSL loop {b:.2f} s ({n / b:.0f}/s); bare smtplib, one session {f:.2f} s",
        f"{b / a:.1f}x",
        b / a >= TARGET and exact,
    )
    result.target(
        f"outage backlog, {n} mails: nothing delivered twice",
        "exactly once",
        "exactly once" if exact else "DUPLICATES OR LOSS",
        "-",
        "-",
        exact,
    )
    result.show()
    result.save(args.json)


if __name__ == "__main__":
    main()
