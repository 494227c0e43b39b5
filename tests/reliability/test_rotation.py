"""Rotation torture: 1,000 rotations of each mode while a writer appends numbered lines as
fast as it can; the tail must read every line exactly once. The rotations are done by the
test itself (rename + create, copytruncate, delete) so a thousand fit in seconds; a few real
`logrotate` runs through the whole daemon check that the real tool behaves the same."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from notifier.sources.tail import LogTail
from tests.helpers import wait_for

ROTATIONS = 1000
KEEP = 4  # rotated copies kept, like `rotate 4`
PAD = 40
LINE = re.compile(rb"line (\d+) x{%d}" % PAD)


class Writer(threading.Thread):
    """Appends `line N` lines in small batches, as fast as it can; reopens the path when
    told (the HUP of logrotate's postrotate), pauses when `hold` is taken (copytruncate)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.written = 0
        self.reopen = threading.Event()
        self.reopened = threading.Event()
        self.hold = threading.Lock()
        self.stop = threading.Event()

    def run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        pad = b"x" * PAD
        while not self.stop.is_set():
            if self.reopen.is_set():
                os.close(fd)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                self.reopen.clear()
                self.reopened.set()
            with self.hold:
                batch = b"".join(b"line %d %s\n" % (self.written + i, pad) for i in range(8))
                os.write(fd, batch)
                self.written += 8
        os.close(fd)


def shift(path: Path) -> None:
    """name.3 -> name.4, …, name.1 -> name.2; the oldest beyond KEEP is deleted."""
    (path.parent / f"{path.name}.{KEEP}").unlink(missing_ok=True)
    for n in range(KEEP - 1, 0, -1):
        older = path.parent / f"{path.name}.{n}"
        if older.exists():
            older.rename(path.parent / f"{path.name}.{n + 1}")


def rotate(mode: str, path: Path, writer: Writer) -> None:
    if mode == "create":  # logrotate's default: rename, create anew, HUP
        shift(path)
        path.rename(path.parent / f"{path.name}.1")
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
        writer.reopened.clear()
        writer.reopen.set()
    elif mode == "copytruncate":
        # logrotate loses what is written between its copy and its truncate; that window is
        # logrotate's, so the writer is held for it here and every line must be read.
        with writer.hold:
            shift(path)
            shutil.copyfile(path, path.parent / f"{path.name}.1")
            os.truncate(path, 0)
    elif mode == "delete":  # the old file is removed; the writer makes a new one when told
        path.unlink()
        writer.reopened.clear()
        writer.reopen.set()
    else:
        raise ValueError(mode)
    # The writer handles its HUP before anything else happens. (A file created and deleted
    # again before any reader looked cannot be read by anyone: that is not a tail's fault.)
    if mode != "copytruncate":
        assert writer.reopened.wait(10), "the writer did not reopen its log"


def line_bytes(first: int, last: int) -> int:
    """The length of lines `first`..`last` as the writer writes them."""
    total, digits = 0, 1
    while 10 ** (digits - 1) <= last:
        lo, hi = max(first, 10 ** (digits - 1) if digits > 1 else 0), min(last, 10**digits - 1)
        if lo <= hi:
            total += (hi - lo + 1) * (len(b"line  \n") + digits + PAD)
        digits += 1
    return total


class Tally:
    """The ranges of line numbers read. Each chunk comes from one file, whose lines are
    consecutive: its first and last number, its line count and its exact length prove it whole
    without parsing millions of lines one by one."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.total = 0

    def add(self, data: bytes) -> None:
        first_end = data.index(b"\n")
        last_start = data.rindex(b"\n", 0, len(data) - 1) + 1 if data.count(b"\n") > 1 else 0
        first = int(LINE.fullmatch(data[:first_end]).group(1))
        last = int(LINE.fullmatch(data[last_start:-1]).group(1))
        n = data.count(b"\n")
        assert last - first + 1 == n and len(data) == line_bytes(first, last), (
            f"a chunk that is not lines {first}..{last} whole: {n} lines, {len(data)} bytes"
        )
        self.ranges.append((first, last))
        self.total += n

    def verdict(self, written: int) -> tuple[int, int, int]:
        """(lines read twice, lines missing, ranges out of order) against `written` lines."""
        twice = missing = 0
        expected = 0
        for first, last in sorted(self.ranges):
            if first < expected:
                twice += min(last + 1, expected) - first
            elif first > expected:
                missing += first - expected
            expected = max(expected, last + 1)
        missing += max(0, written - expected)
        disorder = sum(a[0] > b[0] for a, b in zip(self.ranges, self.ranges[1:], strict=False))
        return twice, missing, disorder


@pytest.mark.parametrize("mode", ["create", "copytruncate", "delete"])
def test_a_thousand_rotations_while_writing_lose_no_line_and_read_none_twice(tmp_path, mode):
    path = tmp_path / "app.log"
    path.touch()
    tail = LogTail(str(path), None, at_end=True, max_catchup=1 << 30, retire_after=0.5)
    assert tail.read() is None  # open it (at its end, as on a first start) before any line
    writer = Writer(path)
    writer.start()
    tally = Tally()

    def drain() -> None:
        while (chunk := tail.read()) is not None:
            tally.add(chunk.data)
            tail.commit(chunk)

    started = time.monotonic()
    try:
        for _ in range(ROTATIONS):
            rotate(mode, path, writer)
            drain()  # the tail looks between rotations, as inotify would wake it
    finally:
        writer.stop.set()
        writer.join(10)
    # Everything written is there to read; rotated-away files are read to their end.
    deadline = time.monotonic() + 30
    while tally.total < writer.written and time.monotonic() < deadline:
        drain()
    elapsed = time.monotonic() - started
    tail.close()
    twice, missing, disorder = tally.verdict(writer.written)
    assert twice == 0, f"{mode}: {twice} lines read twice"
    assert missing == 0, f"{mode}: {missing} of {writer.written} lines lost"
    assert disorder == 0, f"{mode}: lines read out of order {disorder} times"
    print(f"rotation {mode}: {ROTATIONS} rotations, {writer.written} lines in {elapsed:.1f}s")


# -- real logrotate, through the whole daemon -------------------------------------------------
ROUNDS_REAL = 5
ITEM = re.compile(r"^WARNING  line \d+ x+\n(?:  (\d+) times between)?", re.M)


def counted(rig) -> int:
    """Events of the `line` rule counted in every mail caught so far."""
    total = 0
    for m in rig.catcher.messages:
        body = m.message.get_body(("plain",)).get_content().replace("\r\n", "\n")
        total += sum(int(n or 1) for n in ITEM.findall(body))
    return total


@pytest.mark.skipif(not shutil.which("logrotate"), reason="logrotate is not installed")
@pytest.mark.parametrize("mode", ["create", "copytruncate"])
def test_real_logrotate_through_the_daemon_counts_every_line_once(rig, mode):
    log = rig.tmp / "app.log"
    log.touch()
    conf = rig.tmp / "logrotate.conf"
    # Keep every copy for the test's few seconds: with `rotate 4` and five runs in quick
    # succession, a daemon starved of CPU may find the oldest copy already deleted, a loss no
    # tail can avoid (a real logrotate runs daily, not five times a second).
    keep = max(KEEP, ROUNDS_REAL + 1)
    conf.write_text(f"{log} {{\n  rotate {keep}\n  {mode}\n  missingok\n  nocompress\n}}\n")
    rule = {"name": "line", "match": r"^line \d+ x+$"}  # one alert for the rule: counted
    rig.configure(
        policy={"group_wait": "0s", "max_per_hour": 3600, "burst": 3600},
        sources={"logs": [{"path": str(log), "rules": [rule]}]},
    )
    daemon = rig.start()
    wait_for(lambda: all(s["last_check"] for s in daemon.status()["sources"]), 20, "the log opened")
    writer = Writer(log)
    writer.start()
    try:
        for _ in range(ROUNDS_REAL):
            mark = writer.written
            wait_for(lambda mark=mark: writer.written > mark + 5000, 10, "lines between rotations")
            # copytruncate loses what is written between its copy and its truncate: that
            # window is logrotate's own, so the writer is held while it runs.
            with writer.hold if mode == "copytruncate" else contextlib.nullcontext():
                run = subprocess.run(["logrotate", "-f", "-s", str(rig.tmp / "lr.state"), str(conf)],
                                     capture_output=True, text=True, timeout=30)  # fmt: skip
            assert run.returncode == 0, run.stderr
            if mode == "create":  # postrotate's HUP
                writer.reopened.clear()
                writer.reopen.set()
                assert writer.reopened.wait(10)
    finally:
        writer.stop.set()
        writer.join(10)
    wait_for(lambda: counted(rig) >= writer.written, 60, f"{writer.written} lines counted in mails")
    assert counted(rig) == writer.written
    assert daemon.stop() == 0
    print(
        f"logrotate {mode}: {ROUNDS_REAL} runs, {writer.written} lines, "
        f"{len(rig.catcher.messages)} mails, counts exact"
    )
