#!/usr/bin/env python3
"""Latency: a line appended to a watched file, with `group_wait: 0s`, until the local TLS SMTP
server has accepted the mail; against one plain `smtplib.SMTP_SSL` send to the same server.

The daemon runs as `notifier run`; the server (notifier.catcher, implicit TLS) runs here and
stamps each mail when it answers 250. One event at a time: a line is appended only after the
mail of the one before has arrived. Targets over 100 events: p50 <= 50 ms, p99 <= 200 ms.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import tempfile
import time
from pathlib import Path

from _common import (
    Daemon,
    Result,
    arguments,
    machine,
    median,
    percentile,
    smtp_section,
    write_config,
)

P50, P99 = 0.050, 0.200
RULE = {
    "name": "disk-io-error",
    "severity": "critical",
    "key": "{{ dev }}",
    "match": r"kernel: .*I/O error, dev (?P<dev>[a-z0-9]+)",
}


def append(fd: int, n: int) -> float:
    """Write one matching line; the wall-clock time just before the write."""
    line = (
        f"Mar  1 00:00:00 nas01 kernel: [{n}.000] blk_update_request: I/O error, dev sdb, "
        f"sector {n}\n".encode()
    )
    t = time.time()
    os.write(fd, line)
    return t


def smtp_floor(catcher, runs: int) -> float:
    """Median seconds of one verified SMTP_SSL connection sending one mail."""
    data = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: floor\r\n\r\nbody\r\n"
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        ctx = ssl.create_default_context(cafile=catcher.ca_file)
        with smtplib.SMTP_SSL("localhost", catcher.port, context=ctx, timeout=10) as s:
            s.sendmail("alerts@example.com", ["admin@example.com"], data)
        times.append(time.perf_counter() - t0)
    return median(times)


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    events, warmup = (10, 2) if args.quick else (100, 5)
    result = Result("latency", args.quick)
    from notifier.catcher import Catcher

    with (
        tempfile.TemporaryDirectory(prefix="notifier-bench-") as tmp,
        Catcher(tls="tls") as catcher,
    ):
        work = Path(tmp)
        log = work / "kern.log"
        log.write_text("Mar  1 00:00:00 nas01 kernel: booting\n")
        config = write_config(
            work / "config.yaml",
            work / "state",
            smtp_section(catcher.port, catcher.ca_file),
            policy={"group_wait": "0s", "max_per_hour": 3600, "burst": 3600},
            sources={"logs": [{"path": str(log), "rules": [RULE]}]},
        )
        daemon = Daemon(config, work)
        latencies = []
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        try:
            daemon.wait_ready()
            time.sleep(0.5)  # the log source's first look (it starts at the end of the file)
            for n in range(warmup + events):
                sent = append(fd, n)
                try:
                    got = catcher.wait_for(
                        n + 1, timeout=float(os.environ.get("LAT_TIMEOUT", "10"))
                    )[n]
                except TimeoutError:
                    raise RuntimeError(
                        f"mail {n + 1} did not arrive:\n{daemon.log()[-3000:]}"
                    ) from None
                if n >= warmup:  # the first mails load the templates and the TLS stack
                    latencies.append(got.time - sent)
        finally:
            os.close(fd)
            daemon.stop()
        floor = smtp_floor(catcher, 20 if args.quick else 50)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    result.figures.update(
        {
            "events": len(latencies),
            "p50_s": p50,
            "p99_s": p99,
            "max_s": max(latencies),
            "smtp_ssl_one_mail_s": floor,
            "latencies_s": latencies,
            "machine": machine(),
        }
    )
    result.target(
        f"latency p50, {len(latencies)} events",
        "<= 50 ms",
        f"{p50 * 1000:.1f} ms",
        f"one SMTP_SSL send {floor * 1000:.1f} ms",
        f"{p50 / floor:.1f}x",
        p50 <= P50,
    )
    result.target(
        f"latency p99, {len(latencies)} events",
        "<= 200 ms",
        f"{p99 * 1000:.1f} ms",
        f"one SMTP_SSL send {floor * 1000:.1f} ms",
        f"{p99 / floor:.1f}x",
        p99 <= P99,
    )
    result.show()
    result.save(args.json)


if __name__ == "__main__":
    main()
