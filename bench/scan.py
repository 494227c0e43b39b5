#!/usr/bin/env python3
"""Log scanning: `notifier scan` over a generated 2,000,000-line (~200 MB) sshd/cron/systemd
log with ten realistic rules, against `LC_ALL=C grep -cE` given the same patterns and against
a naive Python loop (`for line in f: rx.search(line)` with `re`, the ten rules as one
alternation).

Each is run several times over the same file (in the page cache after the first run); the
median counts, and all three must agree on how many lines matched. `notifier scan` is timed
as a whole command, start-up included. Targets: >= 0.5x grep's throughput, >= 3x the loop's.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    CACHE,
    Result,
    arguments,
    machine,
    median,
    notifier_env,
    write_config,
)
from _logdata import RULES, ere, generate_log

GREP_TARGET, NAIVE_TARGET = 0.5, 3.0


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=env)
    took = time.perf_counter() - t0
    if out.returncode not in (0, 1):  # grep says 1 when nothing matched
        raise RuntimeError(f"{argv[:4]} failed ({out.returncode}): {out.stderr[-2000:]}")
    return took, out.stdout


def naive(path: Path) -> tuple[float, int]:
    """The loop a first version would have: every line through one `re` alternation."""
    plain = [re.sub(r"\(\?P<\w+>", "(", r["match"]) for r in RULES]  # names clash when joined
    rx = re.compile("|".join(f"(?:{p})" for p in plain).encode())
    search = rx.search
    t0 = time.perf_counter()
    matched = 0
    with open(path, "rb") as f:
        for line in f:
            if search(line):
                matched += 1
    return time.perf_counter() - t0, matched


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    lines, runs = (20_000, 3) if args.quick else (2_000_000, 5)
    result = Result("scan", args.quick)
    log = generate_log(CACHE / f"syslog-{lines}.log", lines)
    size = log.stat().st_size
    with tempfile.TemporaryDirectory(prefix="notifier-bench-") as tmp:
        work = Path(tmp)
        smtp = {
            "host": "smtp.example.com",
            "port": 465,
            "security": "tls",
            "from": "bench <alerts@example.com>",
            "to": ["admin@example.com"],
        }
        config = write_config(
            work / "config.yaml",
            work / "state",
            smtp,
            sources={"logs": [{"path": str(log), "rules": RULES}]},
        )
        grep_argv = ["grep", "-cE", *[a for r in RULES for a in ("-e", ere(r["match"]))], str(log)]
        scan_argv = [sys.executable, "-m", "notifier", "scan", "-c", str(config), str(log)]
        timed(grep_argv, {"LC_ALL": "C"})  # the file into the page cache
        ours, greps, loops = [], [], []
        counts: dict[str, set[int]] = {"notifier scan": set(), "grep": set(), "naive": set()}
        for _ in range(runs):
            took, out = timed(scan_argv, notifier_env())
            ours.append(took)
            m = re.search(r"^(\d+) lines, (\d+) matched", out, re.M)
            counts["notifier scan"].add(int(m.group(2)) if m else -1)
            took, out = timed(grep_argv, {"LC_ALL": "C"})
            greps.append(took)
            counts["grep"].add(int(out.strip() or -1))
            if len(loops) < 3:  # ~5 s each: three are enough for its median
                took, matched = naive(log)
                loops.append(took)
                counts["naive"].add(matched)
    agree = len(set().union(*counts.values())) == 1
    mb = size / 1e6
    a, g, n = mb / median(ours), mb / median(greps), mb / median(loops)
    result.figures.update(
        {
            "lines": lines,
            "mb": mb,
            "scan_s": ours,
            "grep_s": greps,
            "naive_s": loops,
            "matched": {k: sorted(v) for k, v in counts.items()},
            "counts_agree": agree,
            "machine": machine(),
        }
    )
    result.target(
        f"scan {lines:,} lines ({mb:.0f} MB), 10 rules vs grep",
        ">= 0.5x grep -cE",
        f"{a:.0f} MB/s",
        f"grep -cE {g:.0f} MB/s",
        f"{a / g:.2f}x",
        a / g >= GREP_TARGET and agree,
    )
    result.target(
        "scan vs a naive Python loop",
        ">= 3x the loop",
        f"{a:.0f} MB/s",
        f"re loop {n:.0f} MB/s",
        f"{a / n:.1f}x",
        a / n >= NAIVE_TARGET and agree,
    )
    result.show()
    if not agree:
        print(f"  the matched counts differ: {counts}")
    result.save(args.json)


if __name__ == "__main__":
    main()
