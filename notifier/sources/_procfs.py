"""What the disk and services sources read from /proc: the mount table, the memory size, and
processes (name, command line, state, CPU time, resident memory).

This is what psutil gave us, read the way psutil reads it on Linux, without its import and
its cache of every process on the machine (together ~1 MiB of the idle daemon).
"""

from __future__ import annotations

import os
import re

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_COMM_LENGTH = 15  # Linux truncates a process name (comm) to 15 characters


class NoSuchProcess(Exception):
    """The process is gone (or its id was never in use)."""


class AccessDenied(Exception):
    """/proc/PID is there but not readable for us (hidepid, another user namespace)."""


# -- mounts -----------------------------------------------------------------------------------
# The kernel writes these four characters of a name in octal; glibc's getmntent reads them back.
_MOUNT_ESCAPE = re.compile(rb"\\(?:040|011|012|134|\\)")
_MOUNT_CHARS = {b"\\040": b" ", b"\\011": b"\t", b"\\012": b"\n", b"\\134": b"\\", b"\\\\": b"\\"}


def mounts(path: str = "/proc/self/mounts") -> list[tuple[str, str, str]]:
    """(device, mount point, fstype) of every mount in mount order, as psutil's
    disk_partitions(all=True) gives them: no device is "", "/dev/root" the real device."""
    out = []
    with open(path, "rb") as f:
        for line in f:
            fields = [
                os.fsdecode(_MOUNT_ESCAPE.sub(lambda m: _MOUNT_CHARS[m.group()], field))
                for field in re.split(rb"[ \t]+", line.strip(b" \t\n"))[:3]
            ]
            if len(fields) < 3 or fields[0].startswith("#"):
                continue
            device, point, fstype = fields
            if device == "none":
                device = ""
            elif device in ("/dev/root", "rootfs"):
                device = _root_device() or device
            out.append((device, point, fstype))
    return out


def _root_device() -> str | None:
    """The block device of /, for a kernel that calls it /dev/root (no initramfs)."""
    dev = os.stat("/").st_dev
    major, minor = os.major(dev), os.minor(dev)
    try:
        with open("/proc/partitions") as f:
            for fields in (line.split() for line in f.readlines()[2:]):
                if len(fields) >= 4 and fields[:2] == [str(major), str(minor)]:
                    return f"/dev/{fields[3]}"
    except OSError:
        pass
    try:
        with open(f"/sys/dev/block/{major}:{minor}/uevent") as f:
            for line in f:
                if line.startswith("DEVNAME=") and line.strip()[8:]:
                    return f"/dev/{line.strip()[8:]}"
    except OSError:
        pass
    return None


def memory_total() -> int:
    """The machine's memory in bytes (MemTotal)."""
    with open("/proc/meminfo", "rb") as f:
        for line in f:
            if line.startswith(b"MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemTotal line")


# -- processes --------------------------------------------------------------------------------
def pids() -> list[int]:
    """The ids of the processes running now (not their threads), in order."""
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())


class Process:
    """One process, read from /proc/PID; NoSuchProcess once it is gone. `ident` (id and start
    time) tells a process from a later one that got the same id."""

    __slots__ = ("pid", "ident")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self.ident = (pid, int(self._stat()[19]))  # starttime, in clock ticks since boot
        except AccessDenied:
            self.ident = (pid, -1)

    def _read(self, name: str) -> bytes:
        try:
            with open(f"/proc/{self.pid}/{name}", "rb") as f:
                return f.read()
        except PermissionError:
            raise AccessDenied(self.pid) from None
        except (FileNotFoundError, ProcessLookupError):
            raise NoSuchProcess(self.pid) from None

    def _stat(self) -> list[bytes]:
        """The fields of /proc/PID/stat after the name: [0] is the state (field 3 of proc(5))."""
        data = self._read("stat")
        return data[data.rfind(b")") + 2 :].split()

    def comm(self) -> str:
        data = self._read("stat")
        return os.fsdecode(data[data.find(b"(") + 1 : data.rfind(b")")])

    def name(self) -> str:
        """psutil's name: the comm, or the base name of argv[0] when the comm is its first 15
        characters ("gnome-keyring-daemon" rather than "gnome-keyring-d")."""
        name = self.comm()
        if len(name) >= _COMM_LENGTH:
            try:
                cmdline = self.cmdline()
            except AccessDenied:
                return name
            if cmdline and os.path.basename(cmdline[0]).startswith(name):
                return os.path.basename(cmdline[0])
        return name

    def cmdline(self) -> list[str]:
        """The arguments; [] for a zombie or a kernel thread. Split like psutil splits them,
        also for programs that rewrite their command line with spaces (setproctitle)."""
        data = os.fsdecode(self._read("cmdline"))
        if not data:
            return []
        sep = "\0" if data.endswith("\0") else " "
        args = data.removesuffix(sep).split(sep)
        if sep == "\0" and len(args) == 1 and " " in data:
            args = data.removesuffix(sep).split(" ")
        return args

    def is_zombie(self) -> bool:
        return self._stat()[0] == b"Z"

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the process (not of its children), in seconds."""
        fields = self._stat()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss(self) -> int:
        """Resident memory in bytes."""
        return int(self._read("statm").split()[1]) * PAGE_SIZE
