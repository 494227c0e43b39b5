"""The /proc readers of the disk and services sources, against real mounts and processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import wait_for

from notifier.sources import _procfs as procfs


def test_mount_names_with_spaces_tabs_newlines_and_backslashes(tmp_path):
    """The kernel writes these characters in octal; they must come back as they were."""
    where = tmp_path / "my disk\twith\\odd\nname"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "my tmpfs", str(where)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here (needs root/CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        found = [m for m in procfs.mounts() if m[1] == str(where)]
        assert found == [("my tmpfs", str(where), "tmpfs")]
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_mount_table_parsing(tmp_path):
    table = tmp_path / "mounts"
    table.write_bytes(
        b"/dev/sda1 / ext4 rw,relatime 0 0\n"
        b"none /sys/fs/cgroup cgroup2 rw 0 0\n"
        b"\n"
        b"server:/export /mnt/back\\134up\\040set nfs4 rw 0 0\n"
        b"/dev/sdb1 /mnt/caf\xc3\xa9\xff ext4 rw 0 0\n"
    )
    assert procfs.mounts(str(table)) == [
        ("/dev/sda1", "/", "ext4"),
        ("", "/sys/fs/cgroup", "cgroup2"),  # no device, like psutil
        ("server:/export", "/mnt/back\\up set", "nfs4"),
        ("/dev/sdb1", "/mnt/caf\xe9\udcff", "ext4"),  # not UTF-8: kept as os.fsdecode keeps it
    ]


def test_dev_root_is_the_real_block_device(tmp_path):
    table = tmp_path / "mounts"
    table.write_text("/dev/root / ext4 rw 0 0\n")
    ((device, _, _),) = procfs.mounts(str(table))
    assert device == (procfs._root_device() or "/dev/root")


def test_memory_total_is_memtotal():
    memtotal = next(line for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    assert procfs.memory_total() == int(memtotal.split()[1]) * 1024
    assert procfs.memory_total() == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def child():
    procs: list[subprocess.Popen] = []

    def start(*argv: str, exits: bool = False) -> subprocess.Popen:
        proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE)
        procs.append(proc)
        if not exits:  # Popen returns once exec began; the new command line comes a moment later
            wait_for(lambda: Path(f"/proc/{proc.pid}/cmdline").read_bytes(), 5, "the exec")
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_process_name_command_line_and_memory(child):
    proc = child(sys.executable, "-c", "import sys; sys.stdin.read()", "an argument", "x\ty")
    me = procfs.Process(proc.pid)
    assert proc.pid in procfs.pids()
    assert me.cmdline() == [sys.executable, "-c", "import sys; sys.stdin.read()", "an argument",
                            "x\ty"]  # fmt: skip
    assert me.comm() == os.path.basename(sys.executable)[:15]
    assert not me.is_zombie()
    statm = Path(f"/proc/{proc.pid}/statm").read_text().split()
    assert abs(me.rss() - int(statm[1]) * os.sysconf("SC_PAGE_SIZE")) < 1 << 20


def test_a_long_name_is_completed_from_the_command_line(tmp_path, child):
    program = tmp_path / "a-rather-long-daemon-name"
    os.symlink(shutil.which("sleep"), program)
    proc = child(str(program), "60")
    me = procfs.Process(proc.pid)
    assert me.comm() == "a-rather-long-d"  # the kernel keeps 15 characters
    assert me.name() == "a-rather-long-daemon-name"  # argv[0] starts with them: its base name
    renamed = child(sys.executable, "-c", "import ctypes, sys; ctypes.CDLL(None).prctl(15, "
                    "b'a-rather-long-daemon-name', 0, 0, 0); sys.stdin.read()")  # fmt: skip
    named = procfs.Process(renamed.pid)
    wait_for(lambda: named.comm() == "a-rather-long-d", 5, "PR_SET_NAME")
    assert named.name() == "a-rather-long-d"  # argv[0] is python: the comm as it is


@pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")
def test_a_command_line_rewritten_with_spaces_is_split_on_them(child):
    """Perl's `$0 = ...` (like setproctitle) leaves one NUL-terminated string with spaces."""
    proc = child("perl", "-e", '$0 = "my daemon: worker 3"; sleep 60')
    me = procfs.Process(proc.pid)
    wait_for(lambda: me.cmdline()[:1] not in ([], ["perl"]), 5, "the new title")  # [] meanwhile
    assert me.cmdline() == ["my", "daemon:", "worker", "3"]


def test_the_same_answers_as_psutil_for_every_process_and_mount(tmp_path, child):
    """What the sources used to ask psutil, asked of every process running now."""
    psutil = pytest.importorskip("psutil")
    if shutil.which("perl"):
        child("perl", "-e", '$0 = "titled: worker"; sleep 60')
    os.symlink(shutil.which("sleep"), tmp_path / "a-rather-long-program-name")
    child(str(tmp_path / "a-rather-long-program-name"), "60")
    zombie = child("true", exits=True)
    wait_for(lambda: procfs.Process(zombie.pid).is_zombie(), 5, "a zombie")
    time.sleep(0.2)
    compared = 0
    for theirs in psutil.process_iter(["name", "cmdline", "status"]):
        try:
            ours = procfs.Process(theirs.pid)
            zombie_now = ours.is_zombie()
            got = (ours.name(), None if zombie_now else ours.cmdline(), zombie_now)
            if not zombie_now:
                assert ours.rss() == theirs.memory_info().rss or theirs.pid == os.getpid()
        except (procfs.NoSuchProcess, psutil.NoSuchProcess):
            continue  # gone meanwhile
        info = theirs.info
        zombie_then = info["status"] == psutil.STATUS_ZOMBIE
        assert got == (info["name"], None if zombie_then else info["cmdline"], zombie_then)
        compared += 1
    assert compared > 3
    partitions = [(p.device, p.mountpoint, p.fstype) for p in psutil.disk_partitions(all=True)]
    assert procfs.mounts() == partitions
    assert procfs.memory_total() == psutil.virtual_memory().total


def test_a_zombie_and_a_gone_process(child):
    proc = child("true", exits=True)
    me = procfs.Process(proc.pid)
    wait_for(lambda: me.is_zombie(), 5, "the zombie (exited, not waited for)")
    assert me.cmdline() == []
    proc.wait()
    with pytest.raises(procfs.NoSuchProcess):
        me.is_zombie()
    with pytest.raises(procfs.NoSuchProcess):
        procfs.Process(proc.pid)


def test_cpu_seconds_grow_with_work(child):
    proc = child(sys.executable, "-c", "while True: pass")
    me = procfs.Process(proc.pid)
    first = me.cpu_seconds()
    time.sleep(0.5)
    assert me.cpu_seconds() - first > 0.1
    assert me.ident == procfs.Process(proc.pid).ident  # the same process: the same identity
