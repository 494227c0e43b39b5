"""What every benchmark shares: medians, the machine, configs, the daemon and its SMTP server.

The benchmarks run the real thing (`notifier run` as a subprocess, a real TLS SMTP server on
127.0.0.1, real files and inotify) and compare it with a baseline run in the same process
tree, because absolute times on a shared machine are noise; ratios are what they report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/x.py` from anywhere imports this tree's notifier
    sys.path.insert(0, str(REPO))
CACHE = Path(os.environ.get("NOTIFIER_BENCH_CACHE", tempfile.gettempdir())) / "notifier-bench"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


# -- figures ---------------------------------------------------------------------------------
def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by the nearest-rank method: a value that was measured."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.005) -> Any:
    """Poll `cond` until it is truthy; RuntimeError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def machine() -> dict[str, Any]:
    """Where the figures come from: cores, CPU model, RAM, Python, date."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "ram_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


class Result:
    """One benchmark's figures: lines for the README table and everything measured."""

    def __init__(self, name: str, quick: bool) -> None:
        self.name = name
        self.quick = quick
        self.targets: list[dict[str, Any]] = []
        self.figures: dict[str, Any] = {}

    def target(
        self,
        what: str,
        target: str,
        measured: str,
        baseline: str,
        ratio: str,
        passed: bool | None,
    ) -> None:
        """One line of the table: a target, what was measured, against what, and the verdict
        (None: a figure for the record, with no target of its own)."""
        self.targets.append(
            {
                "what": what,
                "target": target,
                "measured": measured,
                "baseline": baseline,
                "ratio": ratio,
                "pass": None if passed is None else bool(passed),
            }
        )

    def show(self) -> None:
        print(f"\n== {self.name}{' (quick)' if self.quick else ''}")
        for t in self.targets:
            verdict = {True: "PASS", False: "MISS", None: "INFO"}[t["pass"]]
            print(
                f"  {verdict}  {t['what']}: {t['measured']} (target {t['target']}; "
                f"baseline {t['baseline']}; ratio {t['ratio']})"
            )

    def save(self, path: str | None) -> None:
        if path:
            Path(path).write_text(
                json.dumps(
                    {
                        "name": self.name,
                        "quick": self.quick,
                        "targets": self.targets,
                        "figures": self.figures,
                    },
                    indent=1,
                    default=str,
                )
            )


def arguments(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a tiny run (seconds), to prove it works")
    p.add_argument("--json", help="also write the figures to this file")
    return p.parse_args()


# -- processes --------------------------------------------------------------------------------
def rss_mib(pid: int) -> float:
    """Resident memory of `pid` now, in MiB."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def peak_rss_mib(pid: int) -> float:
    """The highest resident memory `pid` has had (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def children_of(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def notifier_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env


def write_config(path: Path, state_dir: Path, smtp: dict[str, Any], **top: Any) -> Path:
    """A config file for `notifier run`; `top` keys replace (or, for policy, update) defaults."""
    conf: dict[str, Any] = {
        "host_label": "bench",
        "state_dir": str(state_dir),
        "smtp": smtp,
        "policy": {"group_wait": "0s", "retry_max": "2s"},
    }
    for key, value in top.items():
        if key == "policy":
            conf["policy"].update(value)
        else:
            conf[key] = value
    path.write_text(yaml.safe_dump(conf, sort_keys=False))
    os.chmod(path, 0o600)
    return path


def smtp_section(port: int, ca_file: str) -> dict[str, Any]:
    """An smtp: section for the local TLS SMTP server (implicit TLS, no AUTH)."""
    return {
        "host": "localhost",
        "port": port,
        "security": "tls",
        "ca_file": ca_file,
        "from": "bench <alerts@example.com>",
        "to": ["admin@example.com"],
        "timeout": "10s",
    }


class Daemon:
    """`notifier run` as a subprocess that tells READY=1 over its own NOTIFY_SOCKET.

    The socket is read all the time, as systemd does: a daemon whose status datagrams are
    not read blocks in sendto() once the socket's queue is full.
    """

    def __init__(self, config: Path, workdir: Path) -> None:
        self.notify_path = workdir / f"notify-{os.getpid()}-{time.monotonic_ns()}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.notify_path))
        self.ready_at: float | None = None
        self._ready = threading.Event()
        self.log_path = workdir / "daemon.log"
        self._log = open(self.log_path, "ab")
        env = {**notifier_env(), "NOTIFY_SOCKET": str(self.notify_path)}
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "notifier", "run", "-q", "-c", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(workdir),
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read_notifications, daemon=True)
        self._reader.start()

    def _read_notifications(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            if self.ready_at is None and b"READY=1" in data.split(b"\n"):
                self.ready_at = time.perf_counter()
                self._ready.set()

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Seconds from the start of the process to its READY=1."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(
                    f"notifier run did not become ready (exit {self.proc.poll()}):"
                    f"\n{self.log()[-3000:]}"
                )
        return (self.ready_at or 0.0) - self.started

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.notify_path.unlink(missing_ok=True)


# -- the local TLS SMTP server in a process of its own -----------------------------------------
_CATCHER_CHILD = """
import json, sys
from notifier.catcher import Catcher, Certs
certs = None
if sys.argv[3]:  # reuse a certificate made earlier (its CA is already trusted by a client)
    certs = Certs.__new__(Certs)
    certs._tmp, certs.dir, certs.hostnames = None, sys.argv[3], ("localhost", "127.0.0.1")
    certs.ca_file, certs.server_pem = sys.argv[3] + "/ca.pem", sys.argv[3] + "/server.pem"
auth = {sys.argv[4]: sys.argv[5]} if len(sys.argv) > 5 else None  # a throwaway bench account
c = Catcher(sys.argv[1], tls="tls", port=int(sys.argv[2]), cert=certs, auth=auth).start()
print(json.dumps({"port": c.port, "ca_file": c.ca_file}), flush=True)
sys.stdin.read()
c.stop()
"""


class CatcherProcess:
    """notifier.catcher's TLS server in a child process (so it does not share our GIL); every
    mail it accepts lands in `maildir` as NNNN.eml."""

    def __init__(
        self,
        maildir: Path,
        port: int = 0,
        certs_dir: Path | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.maildir = maildir
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CATCHER_CHILD,
                str(maildir),
                str(port),
                str(certs_dir or ""),
                *(auth or ()),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=notifier_env(),
        )
        line = self.proc.stdout.readline() if self.proc.stdout else b""
        if not line:
            raise RuntimeError("the SMTP catcher did not start")
        info = json.loads(line)
        self.port: int = info["port"]
        self.ca_file: str = info["ca_file"]

    def count(self) -> int:
        return sum(1 for e in os.scandir(self.maildir) if e.name.endswith(".eml"))

    def mails(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.maildir.glob("*.eml"))]

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
