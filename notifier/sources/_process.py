"""Finding a program's processes (by name, command line or pidfile) and measuring them."""

from __future__ import annotations

import os
import re
import time
from typing import Any

from notifier import units
from notifier.events import Severity
from notifier.sources._procfs import AccessDenied, NoSuchProcess, Process, pids
from notifier.sources.base import Observation

_COMM_LENGTH = 15  # Linux truncates a process name (comm) to 15 characters


def name_matches(name: str, proc_name: str, cmdline: list[str] | None) -> bool:
    """Whether a process called `proc_name` with `cmdline` is the program `name`."""
    if proc_name == name:
        return True
    if len(proc_name) == _COMM_LENGTH and name.startswith(proc_name):
        return True
    return bool(cmdline) and os.path.basename(cmdline[0]) == name


class ProcessWatch:
    """The processes of one program across checks; keeps each one's CPU time so CPU use can be
    measured between two checks instead of with a sleep."""

    def __init__(self, name: str, cmdline: str | None = None, pidfile: str | None = None) -> None:
        self.name = name
        self.cmdline = re.compile(cmdline) if cmdline else None
        self.pidfile = pidfile
        self._cpu_seen: dict[tuple[int, int], tuple[float, float]] = {}  # ident -> (when, cpu)

    def find(self) -> tuple[list[Process], str]:
        """The running processes, and if there are none, why."""
        if self.pidfile:
            return self._from_pidfile()
        me = os.getpid()
        found = []
        for pid in pids():
            if pid == me:
                continue
            try:
                proc = Process(pid)
                if _or_none(proc.is_zombie):
                    continue
                cmdline = _or_none(proc.cmdline)
                if self.cmdline is not None:
                    if self.cmdline.search(" ".join(cmdline or [])):
                        found.append(proc)
                elif name_matches(self.name, _or_none(proc.name) or "", cmdline):
                    found.append(proc)
            except NoSuchProcess:
                continue  # gone while we looked
        if found:
            return found, ""
        if self.cmdline is not None:
            return [], f"no process has a command line matching {self.cmdline.pattern!r}"
        return [], f"no process named {self.name} is running"

    def _from_pidfile(self) -> tuple[list[Process], str]:
        try:
            with open(self.pidfile, encoding="ascii", errors="replace") as f:
                text = f.read(64)
        except FileNotFoundError:
            return [], f"pidfile {self.pidfile} does not exist ({self.name} not running?)"
        except OSError as exc:
            return [], f"cannot read pidfile {self.pidfile}: {exc.strerror}"
        pid_text = text.strip().split("\n")[0].strip()
        if not pid_text.isdigit():
            return [], f"pidfile {self.pidfile} holds no process id: {pid_text[:40]!r}"
        pid = int(pid_text)
        try:
            proc = Process(pid)
            if proc.is_zombie():
                raise NoSuchProcess(pid)
            proc_name, cmdline = proc.name(), proc.cmdline()
        except NoSuchProcess:
            return [], f"process {pid} from {self.pidfile} is not running (stale pidfile)"
        except AccessDenied:
            return [proc], ""
        if not name_matches(self.name, proc_name, cmdline):
            return [], (f"process {pid} from {self.pidfile} is {proc_name!r}, not {self.name} "
                        "(stale pidfile, the id was reused)")  # fmt: skip
        return [proc], ""

    def observe(self, cpu_limit: float | None, memory_limit: int | None) -> list[Observation]:
        """The `process` state, plus `process-cpu` and `process-memory` when limits are set."""
        procs, why = self.find()
        if not procs:
            return [Observation("process", self.name, Severity.CRITICAL, why,
                                {"process": self.name, "error": why})]  # fmt: skip
        pids = sorted(p.pid for p in procs)
        details: dict[str, Any] = {"process": self.name, "pids": pids[:20], "count": len(pids)}
        out = [Observation("process", self.name, None,
                           f"{self.name} is running ({_count(len(pids))})", details)]  # fmt: skip
        if cpu_limit is not None:
            cpu = self._cpu(procs)
            if cpu is not None:  # None: first sight of these processes, nothing to compare yet
                out.append(self._judge("process-cpu", cpu, cpu_limit, f"{cpu:.0f}% CPU",
                                       f"{cpu_limit:g}%", {**details, "cpu_percent": cpu}))  # fmt: skip
        if memory_limit is not None:
            rss = self._rss(procs)
            out.append(self._judge("process-memory", rss, memory_limit,
                                   f"{units.format_size(rss)} of memory (RSS)",
                                   units.format_size(memory_limit),
                                   {**details, "rss": units.format_size(rss), "rss_bytes": rss}))  # fmt: skip
        return out

    def _judge(self, check: str, value: float, limit: float, what: str, limit_text: str,
               details: dict[str, Any]) -> Observation:  # fmt: skip
        details["limit"] = limit_text
        if value > limit:
            return Observation(check, self.name, Severity.WARNING,
                               f"{self.name} uses {what}, more than {limit_text}", details)  # fmt: skip
        return Observation(check, self.name, None, f"{self.name} uses {what}", details)

    def _cpu(self, procs: list[Process]) -> float | None:
        """Summed CPU percent since the previous check (above 100 on several cores, like top),
        each process's rounded to 0.1 like psutil's cpu_percent."""
        total, measured = 0.0, 0
        seen: dict[tuple[int, int], tuple[float, float]] = {}
        for proc in procs:
            try:
                now, cpu = time.monotonic(), proc.cpu_seconds()
            except (NoSuchProcess, AccessDenied):
                continue
            before = self._cpu_seen.get(proc.ident)
            if before is not None:  # else: the first sight starts the measurement
                elapsed = now - before[0]
                total += round((cpu - before[1]) / elapsed * 100, 1) if elapsed > 0 else 0.0
                measured += 1
            seen[proc.ident] = (now, cpu)
        self._cpu_seen = seen  # forget processes that are gone
        return total if measured else None

    @staticmethod
    def _rss(procs: list[Process]) -> int:
        total = 0
        for proc in procs:
            try:
                total += proc.rss()
            except (NoSuchProcess, AccessDenied):
                continue
        return total


def _or_none(read: Any) -> Any:
    """What `read()` returns, or None where /proc does not let us read it (as psutil's
    process_iter gives an attribute it cannot read)."""
    try:
        return read()
    except AccessDenied:
        return None


def _count(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"
