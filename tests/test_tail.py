"""LogTail against real files and a real logrotate: every line once, none lost, across rotation,
truncation, deletion, late files, symlinks and restarts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from notifier.sources.rules import MAX_LINE
from notifier.sources.tail import LogTail, TailError, complete_lines

pytestmark = pytest.mark.skipif(
    shutil.which("logrotate") is None,
    reason="logrotate is not installed (apt-get install logrotate)",
)


def append(path: Path, *lines: str) -> None:
    with open(path, "a") as f:  # reopened per write, like a writer that follows rotation
        f.write("".join(line + "\n" for line in lines))


def drain(tail: LogTail) -> list[str]:
    """Every line the tail has now, committing as the source does."""
    out: list[str] = []
    while (chunk := tail.read()) is not None:
        out += chunk.data.decode("utf-8", "replace").splitlines()
        tail.commit(chunk)
    return out


def logrotate(tmp_path: Path, log: Path, *directives: str) -> None:
    conf = tmp_path / "logrotate.conf"
    conf.write_text(f"{log} {{\n" + "".join(f"    {d}\n" for d in directives) + "}\n")
    done = subprocess.run(
        ["logrotate", "-f", "-s", str(tmp_path / "state"), str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def new_tail(log: Path, saved=None, at_end=False, **kw) -> LogTail:
    kw.setdefault("max_catchup", 10 << 20)
    kw.setdefault("retire_after", 0.0)
    return LogTail(str(log), saved, at_end=at_end, **kw)


def test_first_start_begins_at_the_end_and_a_partial_line_waits(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("old 1\nold 2\nhalf")
    tail = new_tail(log, at_end=True)
    assert drain(tail) == []
    with open(log, "a") as f:
        f.write(" done\nnew 1\npartial")
    assert drain(tail) == ["half done", "new 1"]
    append(log, " too")
    assert drain(tail) == ["partial too"]


@pytest.mark.parametrize("mode", ["create", "copytruncate", "delete"])
def test_logrotate_loses_no_line_and_repeats_none(tmp_path, mode):
    log = tmp_path / "app.log"
    append(log, "a1", "a2")
    tail = new_tail(log, at_end=True)
    assert drain(tail) == []
    append(log, "b1", "b2")
    assert drain(tail) == ["b1", "b2"]
    append(log, "c1", "c2")  # written before the rotation, not read yet
    directives = {
        "create": ["rotate 2", "create"],
        "copytruncate": ["rotate 2", "copytruncate"],
        "delete": ["rotate 0", "create"],
    }[mode]
    logrotate(tmp_path, log, *directives, "missingok", "nocompress")
    assert mode == "delete" or (tmp_path / "app.log.1").exists()
    append(log, "d1", "d2")
    assert drain(tail) == ["c1", "c2", "d1", "d2"]
    append(log, "e1")
    assert drain(tail) == ["e1"]
    tail.close()


def test_a_rotated_file_is_still_read_while_its_writer_catches_up(tmp_path):
    log = tmp_path / "app.log"
    now = [0.0]
    log.write_text("")
    tail = new_tail(log, at_end=True, retire_after=30.0, clock=lambda: now[0])
    assert drain(tail) == []
    append(log, "x")
    assert drain(tail) == ["x"]
    writer = open(log, "a")  # a daemon that reopens its log only on SIGHUP
    logrotate(tmp_path, log, "rotate 1", "create", "nocompress")
    writer.write("late 1\nlate, no newline")
    writer.flush()
    append(log, "new 1")
    assert drain(tail) == ["late 1", "new 1"]
    now[0] = 31.0  # the grace period is over: the old file's last line is taken as it is
    assert drain(tail) == ["late, no newline"]
    writer.close()
    assert drain(tail) == []


def test_a_file_that_appears_later_is_read_from_its_start(tmp_path):
    log = tmp_path / "later" / "app.log"
    tail = new_tail(log, at_end=True)
    assert drain(tail) == [] and tail.position() is None
    log.parent.mkdir()
    append(log, "first", "second")
    assert drain(tail) == ["first", "second"]


def test_a_symlink_whose_target_changes(tmp_path):
    (tmp_path / "a.log").write_text("a-old\n")
    link = tmp_path / "current"
    link.symlink_to("a.log")
    tail = new_tail(link, at_end=True)
    assert drain(tail) == []
    append(tmp_path / "a.log", "a1")
    assert drain(tail) == ["a1"]
    append(tmp_path / "a.log", "a2")
    (tmp_path / "b.log").write_text("b1\n")
    (tmp_path / "next").symlink_to("b.log")
    os.replace(tmp_path / "next", link)
    assert drain(tail) == ["a2", "b1"]
    assert tail.position()["file"] == str(tmp_path / "b.log")


def test_restart_resumes_where_the_last_run_stopped(tmp_path):
    log = tmp_path / "app.log"
    append(log, "seen")
    first = new_tail(log)
    assert drain(first) == ["seen"]
    saved = first.position()
    first.close()
    append(log, "while stopped 1", "while stopped 2")
    second = new_tail(log, saved)
    assert drain(second) == ["while stopped 1", "while stopped 2"]


def test_restart_after_a_rotation_reads_the_rest_of_the_old_file_first(tmp_path):
    log = tmp_path / "app.log"
    append(log, "seen")
    first = new_tail(log)
    assert drain(first) == ["seen"]
    saved = first.position()
    first.close()
    append(log, "old rest")
    logrotate(tmp_path, log, "rotate 3", "create", "nocompress")
    append(log, "new 1")
    assert drain(new_tail(log, saved)) == ["old rest", "new 1"]


def test_restart_after_a_truncation_reads_from_the_start(tmp_path):
    log = tmp_path / "app.log"
    append(log, "a very long first line that will be gone", "x")
    first = new_tail(log)
    drain(first)
    saved = first.position()
    first.close()
    log.write_text("new\n")  # same inode, shorter and different
    assert drain(new_tail(log, saved)) == ["new"]


def test_max_catchup_keeps_the_newest_lines_and_says_how_much_was_skipped(tmp_path):
    log = tmp_path / "app.log"
    append(log, "seen")
    first = new_tail(log)
    drain(first)
    saved = first.position()
    lines = [f"line {i:04d}" for i in range(1000)]  # 10 bytes each
    append(log, *lines)
    tail = new_tail(log, saved, max_catchup=105)
    chunk = tail.read()
    got = chunk.data.decode().splitlines()
    assert got == lines[-10:]  # 105 bytes back lands mid-line: that line is skipped too
    assert chunk.cut_bytes == 990 * 10
    tail.commit(chunk)
    append(log, "after")
    chunk = tail.read()
    assert chunk.data == b"after\n" and chunk.cut_bytes == 0


def test_an_overlong_line_is_cut_and_the_rest_of_it_skipped(tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    tail = new_tail(log)
    with open(log, "ab") as f:
        f.write(b"A" * (MAX_LINE * 3))
    chunk = tail.read()
    assert chunk.data == b"A" * (MAX_LINE + 1) + b"\n" and chunk.skip
    tail.commit(chunk)
    with open(log, "ab") as f:
        f.write(b"AAA tail of the long line\nnext\n")
    assert drain(tail) == ["next"]
    assert tail.position()["skip"] is False


def test_complete_lines_handles_what_a_buffer_can_hold():
    assert complete_lines(b"a\nb\npart", False, False) == (b"a\nb\n", 4, False)
    assert complete_lines(b"a\nb\npart", False, True) == (b"a\nb\npart\n", 8, False)
    assert complete_lines(b"rest of long\nx\n", True, False) == (b"x\n", 15, False)
    assert complete_lines(b"still long", True, False) == (b"", 10, True)


def test_a_path_that_is_not_a_file_is_an_error_that_says_so(tmp_path):
    (tmp_path / "dir.log").mkdir()
    tail = new_tail(tmp_path / "dir.log")
    with pytest.raises(TailError, match=r"cannot follow .*dir\.log: it is a directory"):
        tail.read()


@pytest.mark.parametrize("mode", ["create", "copytruncate"])
@pytest.mark.parametrize("restart", [False, True])
def test_two_rotations_between_two_looks_lose_nothing(tmp_path, mode, restart):
    log = tmp_path / "app.log"
    append(log, "a")
    tail = new_tail(log)
    assert drain(tail) == ["a"]
    saved = tail.position()
    append(log, "b")
    logrotate(tmp_path, log, "rotate 5", mode, "nocompress")
    append(log, "c")
    logrotate(tmp_path, log, "rotate 5", mode, "nocompress")
    append(log, "d")
    if restart:
        tail.close()
        tail = new_tail(log, saved)
    assert drain(tail) == ["b", "c", "d"]


def test_fingerprint_is_the_sha1_of_the_first_line_as_saved_positions_hold_it(tmp_path):
    """Positions saved by earlier versions hold hashlib's sha1: the digest must not change,
    whichever implementation computes it (CPython's own, so that OpenSSL is not loaded)."""
    import hashlib

    from notifier.sources.tail import FINGERPRINT_SIZE, fingerprint

    path = tmp_path / "app.log"
    path.write_bytes(b"Mar  1 00:00:00 nas01 sshd[1]: first\nsecond\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert fingerprint(fd) == hashlib.sha1(b"Mar  1 00:00:00 nas01 sshd[1]: first").hexdigest()
        path.write_bytes(b"x" * (FINGERPRINT_SIZE + 10))  # no newline in the first KiB
        assert fingerprint(fd) == hashlib.sha1(b"x" * FINGERPRINT_SIZE).hexdigest()
        path.write_bytes(b"incomplete")
        assert fingerprint(fd) is None
    finally:
        os.close(fd)
