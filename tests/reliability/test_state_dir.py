"""The state_dir fails under the daemon: a full disk (a real tmpfs filled up), a read-only
mount, and a damaged spool found at start-up. The daemon says so loudly (log, status and a
mail), keeps mailing from memory, and recovers without damage when the disk is back."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_for

from .rigging import scan_tree


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs to use as state_dir."""
    mnt = tmp_path / "state"
    mnt.mkdir(mode=0o700)
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {out.stderr.strip()}"
        )
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(directory: Path) -> Path:
    """Write zeros until the filesystem is full; the filler file."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        for size in (4096, 512, 1):  # the last crumbs too
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return filler


def subjects(rig) -> list[str]:
    return [str(m.message["Subject"]) for m in rig.catcher.messages]


def integrity(state: Path) -> str:
    db = sqlite3.connect(f"file:{state / 'spool.db'}?mode=ro", uri=True)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def test_full_state_dir_is_loud_keeps_mailing_and_recovers(rig, small_tmpfs):
    rig.state = small_tmpfs
    rig.configure(policy={"group_wait": "0s", "max_per_hour": 3600, "burst": 100})
    daemon = rig.start()
    rig.send("before", "warning")
    wait_for(lambda: "[nas01] WARNING: before" in subjects(rig), 20, "the first mail")
    # One mail waits in the outbox (the server says 451) when the disk fills up.
    rig.catcher.fail_data_with = "451 4.3.0 Try again later"
    rig.send("queued before", "warning")
    wait_for(lambda: "delivery failed" in daemon.log(), 20, "a deferred mail")
    filler = fill(small_tmpfs)
    rig.catcher.fail_data_with = None
    out = rig.send("while broken", "critical")
    assert "spool is unwritable" in out.stderr, out.stderr
    # Loud: the log, status, and a mail about the spool itself.
    wait_for(lambda: "SPOOL UNWRITABLE" in daemon.log(), 10, "the loud log line")
    status = rig.status()
    assert status["spool_error"] and "full" in status["spool_error"]
    text = rig.cli("status", "-c", str(rig.config)).stdout
    assert "SPOOL UNWRITABLE" in text
    # Still mailing, from memory.
    wait_for(
        lambda: "[nas01] CRITICAL: while broken" in subjects(rig), 20, "a mail sent from memory"
    )
    wait_for(lambda: "[nas01] WARNING: queued before" in subjects(rig), 20, "the stored mail")
    wait_for(
        lambda: any("CRITICAL: cannot write the spool" in s for s in subjects(rig)),
        20,
        "a mail about the spool itself",
    )
    # Space returns: the daemon notices, writes what it held, and goes on as before.
    filler.unlink()
    rig.send("after", "warning")
    wait_for(lambda: "[nas01] WARNING: after" in subjects(rig), 20, "a mail after recovery")
    wait_for(lambda: "writable again" in daemon.log(), 10, "the recovery log line")
    wait_for(lambda: not rig.status()["spool_error"], 10, "status without a spool error")
    wait_for(
        lambda: any("RESOLVED: the spool in" in s for s in subjects(rig)), 20, "the all-clear mail"
    )
    assert integrity(small_tmpfs) == "ok"
    # Nothing was sent twice, also not after a restart that reads the recovered spool.
    assert daemon.stop() == 0
    again = rig.start()
    rig.send("marker", "info")
    wait_for(lambda: "[nas01] INFO: marker" in subjects(rig), 20, "the marker")
    assert again.stop() == 0
    got = subjects(rig)
    for subject in (
        "[nas01] WARNING: before",
        "[nas01] WARNING: queued before",
        "[nas01] CRITICAL: while broken",
        "[nas01] WARNING: after",
    ):
        assert got.count(subject) == 1, got
    assert len(got) == len(set(got)), got
    scan_tree(small_tmpfs, set())


@pytest.mark.parametrize("damage", ["garbage", "truncated", "zeroed-header"])
def test_damaged_spool_at_start_is_moved_aside_and_the_daemon_starts(rig, damage):
    daemon = rig.start()
    rig.send("an alert before the damage", "warning", "--state", "problem", "--key", "k")
    rig.catcher.wait_for(1, timeout=20)
    assert daemon.stop() == 0
    spool = rig.state / "spool.db"
    data = spool.read_bytes()
    assert len(data) > 4096
    if damage == "garbage":
        spool.write_bytes(os.urandom(len(data)))
    elif damage == "truncated":
        spool.write_bytes(data[: len(data) // 2 - 100])
    else:
        spool.write_bytes(b"\0" * 100 + data[100:])
    for extra in ("spool.db-wal", "spool.db-shm"):
        (rig.state / extra).unlink(missing_ok=True)
    started = rig.start()
    log = started.log()
    assert "is damaged" in log and "moved it aside to" in log, log
    aside = list(rig.state.glob("spool.db.corrupt-*"))
    assert aside, list(rig.state.iterdir())
    rig.send("after the damage", "critical")
    wait_for(
        lambda: "[nas01] CRITICAL: after the damage" in subjects(rig), 20, "a mail after the damage"
    )
    assert integrity(rig.state) == "ok"
    assert started.stop() == 0


def test_read_only_state_dir_is_refused_at_start_in_words(rig, small_tmpfs):
    """A running daemon holds the spool open for writing, so the kernel refuses to remount it
    read-only (EBUSY); a state_dir that is read-only when notifier starts is refused clearly."""
    rig.state = small_tmpfs
    rig.configure()
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    daemon = rig.start(wait=False)
    assert daemon.proc.wait(timeout=30) == 1
    log = daemon.log()
    assert f"state_dir {small_tmpfs} is not writable" in log and "Traceback" not in log, log
    daemon.stop()
    out = rig.cli("send", "-c", str(rig.config), "--severity", "critical", "--subject", "x")
    assert out.returncode == 1 and "Traceback" not in out.stderr and str(small_tmpfs) in out.stderr
    subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], check=True)
