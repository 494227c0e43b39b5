#!/usr/bin/env python3
"""Idle footprint: the daemon with a realistic config, idle; its RSS and CPU beside Monit's.

notifier watches all disks, two log files, the journal and three services; Monit (Debian's
`monit`, a C daemon) runs at the same time with similar checks (a filesystem, two files, a
process, a host port), both on a 60 s cycle. After a settling pause both are left alone for
the measuring window. Targets: RSS <= 30 MB, CPU <= 0.1 % of one core.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    CatcherProcess,
    Daemon,
    Result,
    arguments,
    children_of,
    cpu_seconds,
    machine,
    notifier_env,
    peak_rss_mib,
    rss_mib,
    smtp_section,
    wait_for,
    write_config,
)
from _logdata import RULES

RSS_TARGET = 30.0  # MiB
CPU_TARGET = 0.1  # percent of one core
# The libraries the daemon needs with this config, imported by a bare interpreter: the part
# of its RSS that any Python program doing the same work would have. Exactly the modules the
# idle daemon has loaded (sys.modules, its own package aside), no more and no fewer.
FLOOR = """
import argparse, ctypes, dataclasses, encodings.ascii, encodings.idna, gc, glob, json, logging
import pkgutil, queue, random, runpy, _sha1, selectors, shlex, shutil, socket, sqlite3
import subprocess, threading, yaml, re2
print(int(open("/proc/self/statm").read().split()[1]) * __import__("os").sysconf("SC_PAGE_SIZE"))
"""


def monit_config(work: Path, files: list[Path], port: int, process: str) -> Path:
    conf = work / "monitrc"
    checks = "\n".join(
        f'check file log{i} with path {p}\n  if content = "Failed password|I/O error" then alert'
        for i, p in enumerate(files)
    )
    conf.write_text(f"""set daemon 60
set logfile {work}/monit.log
set pidfile {work}/monit.pid
set idfile {work}/monit.id
set statefile {work}/monit.state
check filesystem rootfs with path /
  if space usage > 90% then alert
{checks}
check process listener matching "{process}"
check host local with address 127.0.0.1
  if failed port {port} type tcp then alert
""")
    conf.chmod(0o600)
    return conf


def services(port: int, marker: str) -> list[dict[str, object]]:
    """Three services: systemd units where systemd runs, else a process and a command."""
    state = subprocess.run(["systemctl", "is-system-running"], capture_output=True, text=True)
    if state.stdout.strip() in ("running", "degraded"):
        return [
            {"systemd": "systemd-journald.service"},
            {"systemd": "cron.service"},
            {"tcp": f"127.0.0.1:{port}"},
        ]
    return [
        {"tcp": f"127.0.0.1:{port}"},
        {"process": os.path.basename(sys.executable)[:15], "cmdline": marker},
        {"command": ["/bin/true"]},
    ]


def python_floor() -> float:
    """MiB resident in an interpreter that only imported the libraries the daemon uses."""
    out = subprocess.run([sys.executable, "-c", FLOOR], capture_output=True, text=True, check=True)
    return int(out.stdout) / 2**20


def pss_mib(pid: int) -> float:
    """Proportional set size: shared library pages split among the processes mapping them."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    settle, window = (2.0, 3.0) if args.quick else (8.0, 60.0)
    result = Result("idle", args.quick)
    monit = shutil.which("monit") or (
        "/usr/bin/monit" if os.path.exists("/usr/bin/monit") else None
    )
    with tempfile.TemporaryDirectory(prefix="notifier-bench-") as tmp:
        work = Path(tmp)
        logs = [work / "auth.log", work / "syslog"]
        for p in logs:
            p.write_text("Mar  1 00:00:00 nas01 sshd[1]: Server listening on 0.0.0.0 port 22.\n")
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        marker = f"notifier-bench-idle-{os.getpid()}"
        # A long-lived process for the process checks of both daemons to find.
        sleeper = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()", marker], stdin=subprocess.PIPE
        )
        # A mail would mean an alert fired: it must reach a server (no retry loop), and count.
        catcher = CatcherProcess(work / "mail")
        config = write_config(
            work / "config.yaml",
            work / "state",
            smtp_section(catcher.port, catcher.ca_file),
            sources={
                "disk": [{"mounts": "all", "warning": "80%", "critical": "90%"}],
                "logs": [
                    {"path": str(logs[0]), "rules": RULES[:4]},
                    {"path": str(logs[1]), "rules": RULES[4:]},
                ],
                "journal": [{"rules": RULES[:2]}],
                "services": services(port, marker),
            },
        )
        daemon = Daemon(config, work)
        monit_proc = None
        try:
            daemon.wait_ready()
            if monit:
                monit_proc = subprocess.Popen(
                    [monit, "-I", "-c", str(monit_config(work, logs, port, marker))],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            time.sleep(settle)  # let start-up work (first checks, first reads) finish
            kids = children_of(daemon.pid)
            cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
            mcpu0 = cpu_seconds(monit_proc.pid) if monit_proc else 0.0
            samples, msamples = [], []
            deadline = t0 + window
            while time.monotonic() < deadline:  # a sample a second: our own cost stays tiny
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                samples.append(rss_mib(daemon.pid))
                if monit_proc:
                    msamples.append(rss_mib(monit_proc.pid))
            elapsed = time.monotonic() - t0
            cpu = (cpu_seconds(daemon.pid) - cpu0) / elapsed * 100
            mcpu = (cpu_seconds(monit_proc.pid) - mcpu0) / elapsed * 100 if monit_proc else None
            kids_rss = sum(rss_mib(k) for k in kids if os.path.exists(f"/proc/{k}"))
            rss = max(samples)
            pss = pss_mib(daemon.pid)
            peak = peak_rss_mib(daemon.pid)
            alive = daemon.proc.poll() is None
            mails = catcher.count()
            # For the record: what the first mail adds for good (templates, the TLS client).
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "notifier",
                    "send",
                    "-c",
                    str(config),
                    "--severity",
                    "info",
                    "--subject",
                    "bench: one mail",
                ],
                env=notifier_env(),
                check=True,
                capture_output=True,
            )
            wait_for(lambda: catcher.count() > mails, 30, "the mail of `notifier send`")
            time.sleep(1.0)  # the sender's session ends after the 250
            after_mail = rss_mib(daemon.pid)
        finally:
            daemon.stop()
            if monit_proc:
                monit_proc.terminate()
                monit_proc.wait(10)
            catcher.stop()
            sleeper.kill()
            sleeper.wait()
            listener.close()
        mrss = max(msamples) if msamples else None
        floor = python_floor()
        result.figures.update(
            {
                "window_s": elapsed,
                "rss_mib_samples": samples,
                "peak_rss_mib (start-up included)": peak,
                "cpu_percent": cpu,
                "pss_mib": pss,
                "python_floor_rss_mib": floor,
                "children_rss_mib (journalctl)": kids_rss,
                "monit_rss_mib": mrss,
                "monit_cpu_percent": mcpu,
                "daemon_alive": alive,
                "mails_sent (alerts that fired)": mails,
                "rss_mib_after_one_mail": after_mail,
                "machine": machine(),
            }
        )
        base = (
            f"Monit {mrss:.1f} MiB" if mrss else "Monit not installed"
        ) + f"; Python + the same libraries {floor:.1f} MiB"
        result.target(
            f"idle RSS ({elapsed:.0f} s; journalctl child +{kids_rss:.1f} MiB)",
            "<= 30 MB",
            f"{rss:.1f} MiB (PSS {pss:.1f})",
            base,
            f"{rss / mrss:.1f}x Monit" if mrss else "n/a",
            rss <= RSS_TARGET and alive,
        )
        mbase = f"Monit {mcpu:.3f} %" if mcpu is not None else "Monit not installed"
        result.target(
            f"idle CPU ({elapsed:.0f} s)",
            "<= 0.1 % of a core",
            f"{cpu:.3f} %",
            mbase,
            f"{cpu / mcpu:.1f}x Monit" if mcpu else "n/a",
            cpu <= CPU_TARGET and alive,
        )
    result.show()
    result.save(args.json)


if __name__ == "__main__":
    main()
