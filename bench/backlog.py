"""Outage backlog: 500 mails in the outbox delivered once the server is back, through notifier's
Sender (one SMTP session), against a plain `smtplib.SMTP_SSL` loop (one connection per mail).

Both send the same 500 messages, with the same login (AUTH PLAIN inside implicit TLS, as an
SMTPS account wants), to the same local TLS SMTP server in a process of its own. The Sender
starts while the server is still down, so the outbox is really a backlog; the clock starts
when the server answers again. Target: >= 10x faster than the loop, every mail delivered
exactly once.

Two servers, each measured the same way: `bench/_sink.py`, a thread-per-connection sink in the
spirit of Postfix's smtp-sink (OpenSSL handshake, PIPELINING, a few tens of microseconds per
mail), which is the target's server because it leaves the client's cost to measure; and
notifier.catcher (aiosmtpd, the test suite's server), which spends ~2-3 ms of Python on every
mail, more than a TLS handshake costs, so against it no client can be 10x faster than the loop.
"""

from __future__ import annotations

import email
import logging
import shutil
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

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


USER, PASSWORD = "bench", "bench-password"  # a throwaway account of a throwaway server


class SinkProcess:
    """bench/_sink.py in a child process; the Message-ID of every accepted mail in `ids`."""

    def __init__(self, work: Path, port: int, certs_dir: str) -> None:
        self.ids = work / f"sink-ids-{port}"
        self.ids.touch()
        self.port, self.ca_file = port, f"{certs_dir}/ca.pem"
        script = Path(__file__).with_name("_sink.py")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(port), certs_dir, str(self.ids), USER, PASSWORD],
            stdout=subprocess.PIPE,
        )
        if self.proc.stdout is None or self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the SMTP sink did not start")

    def received(self) -> list[str]:
        return self.ids.read_text().split()

    def count(self) -> int:
        return len(self.received())

    def ids_since(self, before: int) -> list[str]:
        return self.received()[before:]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Catcher(CatcherProcess):
    """notifier.catcher with AUTH, in a child process; every mail in `maildir`."""

    def __init__(self, work: Path, port: int, certs_dir: str) -> None:
        super().__init__(work / f"mail-{port}", port, Path(certs_dir), (USER, PASSWORD))

    def ids_since(self, before: int) -> list[str]:
        files = sorted(self.maildir.glob("*.eml"))[before:]
        return [email.message_from_bytes(p.read_bytes())["Message-ID"] for p in files]


SERVERS = {"sink": SinkProcess, "catcher": Catcher}


def notifier_run(work: Path, mails: list[tuple[str, bytes]], server: str) -> tuple[float, Any]:
    """Seconds for the Sender to empty an outbox of `mails` once the server is back; the
    server, still running."""
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
        host="localhost",
        port=port,
        security="tls",
        username=USER,
        ca_file=certs.ca_file,
        timeout=10.0,
    )
    sender = Sender(str(state), settings, lambda: PASSWORD, AnchoredClock(), retry_max=60.0)
    sender.start()
    srv = None
    try:
        # The outage: nothing listens, every mail waits for its retry.
        wait_for(lambda: spool.outbox_stats()["max_attempts"] > 0, 30, "a failed attempt")
        srv = SERVERS[server](work, port, str(certs.dir))
        # The server is back; as after `systemctl reload notifier`, the backlog is due now.
        t0 = time.perf_counter()
        spool.retry_now()
        sender.wake()
        wait_for(lambda: spool.outbox_stats()["depth"] == 0, 120, "the outbox to empty", 0.002)
        took = time.perf_counter() - t0
    except BaseException:
        if srv is not None:
            srv.stop()
        raise
    finally:
        sender.stop()
        spool.close()
        shutil.rmtree(state, ignore_errors=True)
    wait_for(lambda: srv.count() >= len(mails), 10, "the server to keep every mail")
    return took, srv


def loop_run(mails: list[tuple[str, bytes]], srv: Any) -> tuple[float, list[str]]:
    """The baseline: one verified SMTP_SSL connection and login per mail, same server. The
    TLS context is built once, as a careful loop would (building it per mail, as the naive
    one does, would add ~0.5 ms a mail to the baseline, more with the system CA store)."""
    before = srv.count()
    t0 = time.perf_counter()
    ctx = ssl.create_default_context(cafile=srv.ca_file)
    for _, data in mails:
        with smtplib.SMTP_SSL("localhost", srv.port, context=ctx, timeout=10) as smtp:
            smtp.login(USER, PASSWORD)
            smtp.sendmail("alerts@example.com", ["admin@example.com"], data)
    took = time.perf_counter() - t0
    wait_for(lambda: srv.count() >= before + len(mails), 10, "the server to keep every mail")
    return took, srv.ids_since(before)


def one_session_run(mails: list[tuple[str, bytes]], srv: Any) -> float:
    """For the record: a bare smtplib client sending every mail through one session (one
    command at a time, smtplib has no PIPELINING), no spool."""
    before = srv.count()
    t0 = time.perf_counter()
    ctx = ssl.create_default_context(cafile=srv.ca_file)
    with smtplib.SMTP_SSL("localhost", srv.port, context=ctx, timeout=10) as smtp:
        smtp.login(USER, PASSWORD)
        for _, data in mails:
            smtp.sendmail("alerts@example.com", ["admin@example.com"], data)
    took = time.perf_counter() - t0
    wait_for(lambda: srv.count() >= before + len(mails), 10, "the server to keep every mail")
    return took


def measure(work: Path, server: str, n: int, runs: int) -> dict[str, Any]:
    ours, theirs, floors, exact = [], [], [], True
    for run in range(runs):
        mails = messages(n, run)
        wanted = sorted(mid for mid, _ in mails)
        took, srv = notifier_run(work, mails, server)
        try:
            exact &= sorted(srv.ids_since(0)) == wanted
            ours.append(took)
            took, got = loop_run(mails, srv)
            exact &= sorted(got) == wanted
            theirs.append(took)
            floors.append(one_session_run(mails, srv))
        finally:
            srv.stop()
    return {
        "notifier_s": ours,
        "smtp_ssl_loop_s": theirs,
        "smtplib_one_session_s": floors,
        "each_delivered_once": exact,
    }


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    n, runs = (20, 2) if args.quick else (500, 5)
    result = Result("backlog", args.quick)
    figures: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="notifier-bench-") as tmp:
        for server in SERVERS:
            figures[server] = measure(Path(tmp), server, n, runs if server == "sink" else 3)
    result.figures.update({"mails": n, **figures, "machine": machine()})
    names = {"sink": "sink (OpenSSL, PIPELINING)", "catcher": "notifier.catcher (aiosmtpd)"}
    for server, f in figures.items():
        a, b = median(f["notifier_s"]), median(f["smtp_ssl_loop_s"])
        floor = median(f["smtplib_one_session_s"])
        result.target(
            f"outage backlog, {n} mails, {names[server]}",
            ">= 10x the per-mail loop" if server == "sink" else "(for the record)",
            f"{a:.2f} s ({n / a:.0f} mails/s)",
            f"SMTP_SSL+login loop {b:.2f} s ({n / b:.0f}/s); smtplib one session {floor:.2f} s",
            f"{b / a:.1f}x",
            (b / a >= TARGET and f["each_delivered_once"]) if server == "sink" else None,
        )
    exact = all(f["each_delivered_once"] for f in figures.values())
    result.target(
        f"outage backlog, {n} mails: nothing delivered twice",
        "exactly once",
        "exactly once, both servers" if exact else "DUPLICATES OR LOSS",
        "-",
        "-",
        exact,
    )
    result.show()
    result.save(args.json)


if __name__ == "__main__":
    main()
