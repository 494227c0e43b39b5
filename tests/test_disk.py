"""The disk source against real mounts: tmpfs filled by the test, and a FUSE mount that hangs."""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from notifier import schema
from notifier.config import parse_config
from notifier.events import PROBLEM, RESOLVED, Event, Severity
from notifier.sources import disk
from notifier.sources.disk import DiskSource, graded

MiB = 1024 * 1024


class FakeContext:
    """The daemon edge: collects posted events, keeps positions, and a clock the test moves."""

    def __init__(self) -> None:
        self.host = "testhost"
        self.events: list[Event] = []
        self.positions: dict[str, Any] = {}
        self.clock = 1_000_000.0

    def post(self, events: list[Event], positions: dict[str, Any] | None = None) -> None:
        self.events.extend(events)
        self.positions.update(positions or {})

    def position(self, key: str) -> Any | None:
        return self.positions.get(key)

    def now(self) -> float:
        return self.clock


def wait_for(cond, timeout: float) -> bool:
    """Poll `cond` until it is true or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return bool(cond())
        time.sleep(0.01)
    return True


def entry(**options: Any) -> dict[str, Any]:
    """One validated `sources.disk` entry."""
    errors = schema.Errors()
    conf = disk.ENTRY.validate(options, "sources.disk[0]", 1, errors)
    assert not errors, [p.message for p in errors.problems]
    return conf


def problems_of(options: dict[str, Any]) -> list[str]:
    errors = schema.Errors()
    disk.ENTRY.validate(options, "sources.disk[0]", 7, errors)
    return [p.format("config.yaml") for p in errors.problems]


def by_check(observations: list[Any], check: str) -> dict[str, Any]:
    return {ob.key: ob for ob in observations if ob.check == check}


@contextlib.contextmanager
def tmpfs(where: Path, options: str = "size=10m"):
    """A real tmpfs mounted for the test; skipped where mounting is not permitted."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here (needs root/CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(path: Path, size: int) -> None:
    """A file of exactly `size` bytes of real data (tmpfs counts written pages)."""
    with open(path, "wb") as f:
        f.write(b"\x5a" * size)


# -- schema -------------------------------------------------------------------------------------


def test_defaults_are_all_real_filesystems_every_five_minutes():
    conf = entry()
    assert conf["mounts"] == "all"
    assert conf["every"] == 300.0
    assert (conf["warning"], conf["critical"], conf["margin"]) == (80.0, 90.0, 3.0)
    assert conf["inodes"] == {"warning": 90.0, "critical": 95.0}
    assert "ext4" in conf["fstypes"] and "tmpfs" not in conf["fstypes"]


def test_contradicting_thresholds_are_reported_with_line_and_path():
    assert problems_of({"warning": "95%", "critical": "90%"}) == [
        "config.yaml:7: sources.disk[0]: warning (95%) must not be above critical (90%)"
    ]
    (relative,) = problems_of({"mounts": ["srv"]})
    assert "sources.disk[0].mounts" in relative and "absolute" in relative
    (slow,) = problems_of({"statfs_timeout": "40s"})
    assert "statfs_timeout (40s) must be shorter than timeout (30s)" in slow


def test_entry_validates_inside_a_whole_config_file():
    text = """
smtp: {host: smtp.example.com, from: a@example.com, to: [b@example.com]}
sources:
  disk:
    - mounts: [/, /srv/*]
      free_below: 10GiB
      inodes: {warning: 85%}
"""
    conf = parse_config(text, check_templates=False)
    (d,) = conf["sources"]["disk"]
    assert d["mounts"] == ["/", "/srv/*"]
    assert d["free_below"] == 10 * 1024**3
    assert d["inodes"] == {"warning": 85.0, "critical": 95.0}


# -- hysteresis (pure) --------------------------------------------------------------------------


def test_graded_clears_only_margin_below_the_threshold():
    limits = [(Severity.WARNING, 80.0), (Severity.CRITICAL, 90.0)]
    level = None
    seen = []
    for pct in (79.9, 80.0, 78.0, 77.0, 76.9, 91.0, 87.5, 86.9, 40.0):
        level = graded(pct, limits, level, 3.0)
        seen.append(level)
    W, C = Severity.WARNING, Severity.CRITICAL
    assert seen == [None, W, W, W, None, C, C, W, None]


def test_graded_for_free_space_is_worse_when_lower():
    limits = [(Severity.WARNING, 100.0), (Severity.CRITICAL, 20.0), (Severity.CRITICAL, None)]
    assert graded(150.0, limits, None, 10.0, above=False) is None
    assert graded(99.0, limits, None, 10.0, above=False) is Severity.WARNING
    assert graded(105.0, limits, Severity.WARNING, 10.0, above=False) is Severity.WARNING
    assert graded(111.0, limits, Severity.WARNING, 10.0, above=False) is None
    assert graded(19.0, limits, Severity.WARNING, 10.0, above=False) is Severity.CRITICAL


# -- real tmpfs mounts --------------------------------------------------------------------------


def test_filling_a_tmpfs_warns_then_escalates_then_clears_with_hysteresis(tmp_path):
    ctx = FakeContext()
    with tmpfs(tmp_path / "data") as mnt:
        point = str(mnt)
        src = DiskSource(entry(mounts=[point]), 0, ctx)

        def space():
            ctx.clock += 300
            return by_check(src.check(), "space")[point]

        assert space().severity is None
        fill(mnt / "a", int(8.5 * MiB))
        ob = space()
        assert ob.severity is Severity.WARNING
        assert ob.details["percent"] == 85.0
        assert ob.details["threshold"] == "warning at 80%"
        assert ob.details["used"] == "8.5 MiB" and ob.details["total"] == "10.0 MiB"
        assert ob.details["trend"].startswith("+8.5 MiB since 5m ago, full in ~")
        assert "85.0% full: 1.5 MiB free of 10.0 MiB (warning at 80%)" in ob.summary
        fill(mnt / "b", 1 * MiB)
        ob = space()
        assert ob.severity is Severity.CRITICAL
        assert ob.details["full_in"] == "~2m 30s"  # 0.5 MiB left, growing 1 MiB per 5m
        os.truncate(mnt / "b", int(0.3 * MiB))  # 88%: below 90 but within the 3-point margin
        ob = space()
        assert ob.severity is Severity.CRITICAL
        assert "clears below 87%" in ob.details["threshold"]
        assert ob.details["trend"] == "-716.0 KiB since 5m ago"  # 1 MiB - 0.3 MiB
        assert "full_in" not in ob.details
        os.truncate(mnt / "b", 0)  # 85%: no longer critical, still a warning
        assert space().severity is Severity.WARNING
        os.unlink(mnt / "a")
        assert space().severity is None


def test_free_below_thresholds_in_bytes(tmp_path):
    ctx = FakeContext()
    with tmpfs(tmp_path / "data") as mnt:
        point = str(mnt)
        conf = entry(mounts=[point], warning="99%", critical="100%",
                     free_below="4MiB", free_below_critical="1MiB")  # fmt: skip
        src = DiskSource(conf, 0, ctx)
        fill(mnt / "a", 7 * MiB)
        ob = by_check(src.check(), "space")[point]
        assert ob.severity is Severity.WARNING
        assert ob.details["threshold"] == "warning below 4.0 MiB free"
        fill(mnt / "b", int(2.5 * MiB))
        ob = by_check(src.check(), "space")[point]
        assert ob.severity is Severity.CRITICAL
        assert ob.details["free"] == "512.0 KiB"


def test_inode_exhaustion_is_its_own_alert(tmp_path):
    ctx = FakeContext()
    with tmpfs(tmp_path / "many", "size=10m,nr_inodes=100") as mnt:
        point = str(mnt)
        src = DiskSource(entry(mounts=[point]), 0, ctx)
        assert by_check(src.check(), "inodes")[point].severity is None
        for i in range(96):
            (mnt / f"f{i}").touch()
        obs = src.check()
        ob = by_check(obs, "inodes")[point]
        assert ob.severity is Severity.CRITICAL
        assert ob.details["inodes_total"] == 100 and ob.details["inodes_free"] <= 4
        assert "critical at 95%" in ob.summary
        assert by_check(obs, "space")[point].severity is None


def test_all_selects_real_filesystems_and_fstypes_can_add_tmpfs(tmp_path):
    ctx = FakeContext()
    with tmpfs(tmp_path / "scratch") as mnt:
        point = str(mnt)
        default = by_check(DiskSource(entry(), 0, ctx).check(), "space")
        assert point not in default  # tmpfs is not a real filesystem
        assert all(ob.details["fstype"] in disk.REAL_FSTYPES for ob in default.values())
        widened = DiskSource(
            entry(fstypes=["tmpfs"], exclude=["/dev/*", "/sys/*", "/run*"]), 1, ctx
        )
        assert point in by_check(widened.check(), "space")


@contextlib.contextmanager
def ext4_image(tmp_path: Path, where: Path):
    """A real ext4 filesystem on a loop device; skipped where loop mounts are not permitted."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(8 * MiB)
    made = subprocess.run(["mkfs.ext4", "-q", str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make an ext4 image: {made.stderr.strip()}")
    where.mkdir()
    done = subprocess.run(["mount", "-o", "loop", str(image), str(where)], capture_output=True,
                          text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a loop device here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_bind_mount_is_the_same_filesystem_reported_once(tmp_path):
    ctx = FakeContext()
    with ext4_image(tmp_path, tmp_path / "data") as data:
        assert str(data) in by_check(DiskSource(entry(), 0, ctx).check(), "space")  # real fs
        src = DiskSource(entry(mounts=[f"{tmp_path}/*"]), 1, ctx)
        assert set(by_check(src.check(), "space")) == {str(data)}
        (tmp_path / "b").mkdir()
        subprocess.run(["mount", "--bind", str(data), str(tmp_path / "b")], check=True)
        try:
            obs = src.check()
            # "b" is shorter, but the filesystem keeps the key it was first reported under.
            assert set(by_check(obs, "space")) == {str(data)}
            assert all(ob.severity is None for ob in by_check(obs, "missing").values())
        finally:
            subprocess.run(["umount", str(tmp_path / "b")], check=True)


def test_unmounted_disk_is_missing_until_it_is_back(tmp_path):
    ctx = FakeContext()
    usb = tmp_path / "usb"
    src = DiskSource(entry(mounts=[f"{tmp_path}/*"], fstypes=["tmpfs"]), 0, ctx)
    with tmpfs(usb):
        obs = src.check()
        assert by_check(obs, "missing")[str(usb)].severity is None
        assert str(usb) in by_check(obs, "space")
    obs = src.check()  # unplugged
    gone = by_check(obs, "missing")[str(usb)]
    assert gone.severity is Severity.CRITICAL
    assert gone.summary == f"{usb} is not mounted any more (was tmpfs from tmpfs)"
    assert str(usb) not in by_check(obs, "space")  # no stale usage while it is gone
    with tmpfs(usb):
        assert by_check(src.check(), "missing")[str(usb)].severity is None


def test_a_mount_that_vanished_while_the_daemon_was_down_is_still_missed(tmp_path):
    ctx = FakeContext()  # its positions stand for the spool across the restart
    usb = tmp_path / "usb"
    with tmpfs(usb):
        DiskSource(entry(mounts=[f"{tmp_path}/*"], fstypes=["tmpfs"]), 0, ctx).check()
    restarted = DiskSource(entry(mounts=[f"{tmp_path}/*"], fstypes=["tmpfs"]), 0, ctx)
    assert by_check(restarted.check(), "missing")[str(usb)].severity is Severity.CRITICAL
    with tmpfs(usb):
        assert by_check(restarted.check(), "missing")[str(usb)].severity is None


def test_listed_mount_point_that_is_not_mounted_is_critical(tmp_path):
    ctx = FakeContext()
    (tmp_path / "backup").mkdir()
    src = DiskSource(entry(mounts=[f"{tmp_path}/backup/"]), 0, ctx)
    src.run_once()
    (event,) = [e for e in ctx.events if e.check == "missing"]
    assert (event.source, event.check, event.key) == ("disk", "missing", f"{tmp_path}/backup")
    assert (event.state, event.severity) == (PROBLEM, Severity.CRITICAL)
    assert "nothing is mounted there" in event.summary


def test_debounce_and_resolved_events_through_run_once(tmp_path):
    ctx = FakeContext()
    with tmpfs(tmp_path / "data") as mnt:
        point = str(mnt)
        src = DiskSource(entry(mounts=[point], **{"for": 2}), 0, ctx)
        fill(mnt / "a", 9 * MiB)

        def space_events():
            ctx.events.clear()
            src.run_once()
            return [e for e in ctx.events if e.check == "space"]

        assert space_events() == []  # first critical check: debounced
        (event,) = space_events()
        assert (event.state, event.severity, event.key) == (PROBLEM, Severity.CRITICAL, point)
        assert event.host == "testhost" and event.time == ctx.clock
        os.unlink(mnt / "a")
        (event,) = space_events()
        assert event.state == RESOLVED


# -- a filesystem that never answers ------------------------------------------------------------


@contextlib.contextmanager
def hung_fuse(where: Path, fstype: str = "fuse"):
    """A real FUSE mount whose daemon never answers: statfs blocks as on a dead NFS server.

    Closing /dev/fuse aborts the connection, which wakes the blocked calls with ENOTCONN.
    """
    where.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as exc:
        pytest.skip(f"no FUSE here to make a hung filesystem: {exc}")
    libc = ctypes.CDLL(None, use_errno=True)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0".encode()
    if libc.mount(b"hung-test", str(where).encode(), fstype.encode(), 0, opts) != 0:
        os.close(fd)
        pytest.skip(f"cannot mount FUSE here: {os.strerror(ctypes.get_errno())}")
    state = {"fd": fd}

    def abort() -> None:
        if state["fd"] is not None:
            os.close(state["fd"])
            state["fd"] = None

    try:
        yield abort
    finally:
        abort()
        libc.umount2(str(where).encode(), 2)  # MNT_DETACH


def statfs_threads(point: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"statfs {point}" and t.is_alive()]


def test_hung_statfs_is_reported_and_other_mounts_are_still_checked(tmp_path):
    ctx = FakeContext()
    nfs, ok = tmp_path / "nfs", tmp_path / "ok"
    with tmpfs(ok), hung_fuse(nfs) as abort:
        conf = entry(mounts=[str(nfs), str(ok)], statfs_timeout="0.5s")
        src = DiskSource(conf, 0, ctx)
        started = time.monotonic()
        obs = src.check()
        took = time.monotonic() - started
        assert 0.4 < took < 3.0
        hung = by_check(obs, "statfs")[str(nfs)]
        assert hung.severity is Severity.CRITICAL
        assert hung.summary == (f"{nfs}: statfs timed out after 0.5s: filesystem not responding "
                                "(hung FUSE daemon or failing disk?)")  # fmt: skip
        assert by_check(obs, "space")[str(ok)].severity is None
        assert str(nfs) not in by_check(obs, "space")
        assert by_check(obs, "statfs")[str(ok)].severity is None

        ctx.clock += 60
        started = time.monotonic()
        obs = src.check()
        assert len(statfs_threads(str(nfs))) == 1  # the hung call was not started again
        assert "statfs timed out after" in by_check(obs, "statfs")[str(nfs)].summary

        abort()  # the server "comes back" as a broken connection
        assert wait_for(lambda: not statfs_threads(str(nfs)), 5)
        obs = src.check()
        broken = by_check(obs, "statfs")[str(nfs)]
        assert broken.severity is Severity.CRITICAL
        assert broken.summary == f"{nfs}: statfs failed: Transport endpoint is not connected"


def test_network_filesystem_timeout_names_the_server(tmp_path):
    ctx = FakeContext()
    share = tmp_path / "share"
    with hung_fuse(share, "fuse.sshfs") as abort:
        src = DiskSource(entry(mounts=[f"{tmp_path}/*"], statfs_timeout="0.2s"), 0, ctx)
        ob = by_check(src.check(), "statfs")[str(share)]
        assert (
            ob.summary == f"{share}: statfs timed out after 0.2s: fuse.sshfs server not responding?"
        )
        abort()
        assert wait_for(lambda: not statfs_threads(str(share)), 5)
