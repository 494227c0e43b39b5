#!/usr/bin/env python3
"""Storm: 1,000,000 matching sshd lines appended as fast as a writer can, into a file that
`notifier run` follows; against a naive Python loop (`for line in f: rx.search(line)` with
`re`, the same rule) reading the finished file once, which only finds the lines.

Measured: the time from the writer's first line until the daemon has committed the position
of the last one (events and positions commit together, so that is "ingested"), the daemon's
RSS growth (peak during the storm minus before it), the mails sent against the
`max_per_hour` budget, and the counts in those mails, which must add up to exactly the number
of lines. Targets: ingested within 10 s, RSS growth <= 20 MB, counts exact.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from email import message_from_bytes, policy
from pathlib import Path

from _common import (
    CACHE,
    Daemon,
    Result,
    arguments,
    machine,
    median,
    peak_rss_mib,
    rss_mib,
    smtp_section,
    wait_for,
    write_config,
)

INGEST_TARGET = 10.0
RSS_TARGET = 20.0
IPS = 50
RULE = {
    "name": "ssh-failed-password",
    "severity": "warning",
    "key": "{{ ip }}",
    "match": r"Failed password for (?:invalid user )?(?P<user>\S+) from (?P<ip>[0-9.]+) "
    r"port (?P<port>[0-9]+)",
}
POLICY = {"group_wait": "3s", "max_per_hour": 20, "burst": 5}
# The writer: told to go on stdin, writes blocks of 1,000 whole lines, says how long it took.
WRITER = """
import os, sys, time
src, dst = sys.argv[1], sys.argv[2]
data = open(src, "rb").read()
blocks, start = [], 0
while start < len(data):
    end = start
    for _ in range(1000):
        end = data.index(b"\\n", end) + 1 if end < len(data) else end
    blocks.append(data[start:end]); start = end
fd = os.open(dst, os.O_WRONLY | os.O_APPEND)
sys.stdin.readline()
t0 = time.perf_counter()
for b in blocks:
    os.write(fd, b)
print(time.perf_counter() - t0, flush=True)
"""


def storm_lines(n: int) -> Path:
    """`n` matching sshd lines from IPS addresses, made once and cached."""
    path = CACHE / f"storm-{n}.log"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        ips = [f"203.0.113.{i + 1}" for i in range(IPS)]
        with open(path.with_suffix(".tmp"), "w") as f:
            for start in range(0, n, 10_000):
                f.write(
                    "".join(
                        f"Mar  1 02:00:{i % 60:02d} nas01 sshd[{1000 + i % 9000}]: Failed password for "
                        f"{'invalid user ' if i % 3 else ''}admin{i % 7} from {ips[i % IPS]} port "
                        f"{1024 + i % 60000} ssh2\n"
                        for i in range(start, min(n, start + 10_000))
                    )
                )
        path.with_suffix(".tmp").rename(path)
    return path


def committed_offset(db: Path, key: str) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute("SELECT v FROM positions WHERE k = ?", (key,)).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return -1
    return json.loads(row[0]).get("offset", -1) if row else -1


def spool_quiet(db: Path) -> bool:
    """Nothing pending in the policy and nothing waiting in the outbox."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        pending = con.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
        outbox = con.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        return pending == 0 and outbox == 0
    finally:
        con.close()


def delivered_events(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute("SELECT COALESCE(SUM(events), 0) FROM delivered").fetchone()[0]
    finally:
        con.close()


def counted_in(mail: bytes) -> int:
    """The events a mail reports, read from its text part as a person would."""
    msg = message_from_bytes(mail, policy=policy.default)
    text = msg.get_body(("plain",)).get_content()
    n = sum(int(m) for m in re.findall(r"^  (\d+) times between", text, re.M))
    n += len(re.findall(r"^  at ", text, re.M))
    n += sum(int(m) for m in re.findall(r"more alerts \((\d+) events\)", text))
    return n


def grep_time(path: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            ["grep", "-c", "Failed password", str(path)],
            env={"LC_ALL": "C"},
            capture_output=True,
            check=True,
        )
        times.append(time.perf_counter() - t0)
    return median(times)


def naive_time(path: Path, runs: int) -> float:
    """Median seconds for the loop a first version would have, with Python's `re`."""
    search = re.compile(RULE["match"].encode()).search
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            found = sum(1 for line in f if search(line))
        times.append(time.perf_counter() - t0)
        if found != sum(1 for _ in open(path, "rb")):
            raise RuntimeError("the storm file has lines the rule does not match")
    return median(times)


def one_storm(work: Path, source: Path, n: int, catcher) -> dict[str, float]:
    log = work / "auth.log"
    log.write_text("Mar  1 00:00:00 nas01 sshd[1]: Server listening on 0.0.0.0 port 22.\n")
    state = work / "state"
    config = write_config(
        work / "config.yaml",
        state,
        smtp_section(catcher.port, catcher.ca_file),
        policy=POLICY,
        sources={"logs": [{"name": "storm", "path": str(log), "rules": [RULE]}]},
    )
    db, key = state / "spool.db", f"logs:storm:{log}"
    size = log.stat().st_size + source.stat().st_size
    before_mails = len(catcher.messages)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(source), str(log)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    daemon = Daemon(config, work)
    try:
        daemon.wait_ready()
        wait_for(lambda: committed_offset(db, key) >= 0, 10, "the first position")
        time.sleep(0.5)
        rss0 = rss_mib(daemon.pid)
        t0 = time.perf_counter()
        writer.stdin.write("go\n")
        writer.stdin.flush()
        wait_for(lambda: committed_offset(db, key) >= size, 120, "the storm to be ingested", 0.02)
        ingest = time.perf_counter() - t0
        wrote = float(writer.stdout.readline())
        peak = peak_rss_mib(daemon.pid)
        # The rest goes out when group_wait and the token bucket allow.
        wait_for(lambda: spool_quiet(db), 60, "the last mail to leave the outbox", 0.1)
        span = time.perf_counter() - t0
        events = delivered_events(db)
    finally:
        writer.wait(30)
        daemon.stop()
    mails = catcher.messages[before_mails:]
    counted = sum(counted_in(m.data) for m in mails)
    budget = POLICY["burst"] + span * POLICY["max_per_hour"] / 3600
    for p in work.iterdir():  # the next run starts from nothing
        if p.is_file() or p.is_socket():
            p.unlink()
    if state.exists():
        for p in state.iterdir():
            p.unlink()
        state.rmdir()
    return {
        "ingest_s": ingest,
        "writer_s": wrote,
        "rss_before_mib": rss0,
        "rss_peak_mib": peak,
        "rss_growth_mib": peak - rss0,
        "mails": len(mails),
        "mail_budget": budget,
        "events_in_mails": counted,
        "events_in_spool": events,
        "lines": n,
    }


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    n, runs = (20_000, 1) if args.quick else (1_000_000, 3)
    result = Result("storm", args.quick)
    source = storm_lines(n)
    from notifier.catcher import Catcher

    outcomes = []
    with (
        tempfile.TemporaryDirectory(prefix="notifier-bench-") as tmp,
        Catcher(tls="tls") as catcher,
    ):
        for _ in range(runs):
            outcomes.append(one_storm(Path(tmp), source, n, catcher))
    grep = grep_time(source, 5)
    loop = naive_time(source, 3)
    ingest = median([o["ingest_s"] for o in outcomes])
    growth = median([o["rss_growth_mib"] for o in outcomes])
    exact = all(o["events_in_mails"] == n and o["events_in_spool"] == n for o in outcomes)
    within = all(o["mails"] <= o["mail_budget"] for o in outcomes)
    result.figures.update(
        {"runs": outcomes, "grep_c_s": grep, "naive_re_loop_s": loop, "machine": machine()}
    )
    mb = source.stat().st_size / 1e6
    result.target(
        f"storm of {n:,} lines ({mb:.0f} MB): ingested",
        "<= 10 s",
        f"{ingest:.2f} s ({n / ingest / 1e3:.0f}k lines/s)",
        f"re loop {loop:.2f} s (grep -c {grep:.2f} s)",
        f"{ingest / loop:.1f}x the loop",
        ingest <= INGEST_TARGET,
    )
    result.target(
        "storm: RSS growth",
        "<= 20 MB",
        f"{growth:.1f} MiB",
        f"idle {median([o['rss_before_mib'] for o in outcomes]):.1f} MiB",
        "-",
        growth <= RSS_TARGET,
    )
    counts = ", ".join(f"{o['events_in_mails']:,} in {o['mails']} mails" for o in outcomes)
    result.target(
        "storm: counts in the mails",
        f"exactly {n:,}, mails within max_per_hour",
        counts,
        f"budget {outcomes[0]['mail_budget']:.1f} mails",
        "-",
        exact and within,
    )
    result.show()
    result.save(args.json)


if __name__ == "__main__":
    main()
