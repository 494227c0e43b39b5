#!/usr/bin/env python3
"""Start-up: `notifier run` to READY=1 (sd_notify), against a bare `python -c pass`.

Two configs: the smallest (SMTP only) and a typical one (all disks, a log file with ten rules,
a TCP service). Each is started several times on a warm state_dir; the median counts.
Target: <= 250 ms.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    Daemon,
    Result,
    arguments,
    machine,
    median,
    notifier_env,
    write_config,
)
from _logdata import RULES

TARGET = 0.250


def python_floor(runs: int) -> float:
    """Median seconds for the interpreter alone to start and exit."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env=notifier_env())
        times.append(time.perf_counter() - t0)
    return median(times)


def ready_times(config: Path, work: Path, runs: int) -> list[float]:
    """Seconds to READY=1 of `runs` starts (after one warm-up start)."""
    times = []
    for i in range(runs + 1):
        daemon = Daemon(config, work)
        try:
            took = daemon.wait_ready()
        finally:
            daemon.stop()
        if i:  # the first start creates the spool and warms the page cache
            times.append(took)
    return times


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    runs = 3 if args.quick else 9
    result = Result("startup", args.quick)
    with tempfile.TemporaryDirectory(prefix="notifier-bench-") as tmp:
        work = Path(tmp)
        log = work / "auth.log"
        log.write_text("Mar  1 00:00:00 nas01 sshd[1]: Server listening on 0.0.0.0 port 22.\n")
        smtp = {
            "host": "smtp.example.com",
            "port": 465,
            "security": "tls",
            "from": "bench <alerts@example.com>",
            "to": ["admin@example.com"],
        }
        configs = {
            "smallest (smtp only)": write_config(work / "small.yaml", work / "state-small", smtp),
            "typical (disks, a log, a tcp port)": write_config(
                work / "typical.yaml",
                work / "state-typical",
                smtp,
                sources={
                    "disk": [{"mounts": "all", "warning": "80%", "critical": "90%"}],
                    "logs": [{"path": str(log), "rules": RULES}],
                    "services": [{"tcp": "127.0.0.1:9", "every": "1m"}],
                },
            ),
        }
        floor = python_floor(runs)
        result.figures["python -c pass (s)"] = floor
        for label, config in configs.items():
            times = ready_times(config, work, runs)
            took = median(times)
            result.figures[f"ready {label} (s)"] = times
            result.target(
                f"start-up to READY=1, {label}",
                "<= 250 ms",
                f"{took * 1000:.0f} ms",
                f"python -c pass {floor * 1000:.0f} ms",
                f"{took / floor:.1f}x",
                took <= TARGET,
            )
    result.figures["machine"] = machine()
    result.show()
    result.save(args.json)


if __name__ == "__main__":
    main()
