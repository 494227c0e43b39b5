"""The inotify module and the DirectoryWatcher on real directories: events for what changes a
file or a name, a real queue overflow, a directory that goes away, polling, threads."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from helpers import wait_for

from notifier.sources import _inotify as ino
from notifier.sources._dirwatch import DirectoryWatcher


def max_queued_events() -> int:
    return int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())


def events_until(inotify: ino.Inotify, cond, timeout: float = 5.0) -> list[ino.InotifyEvent]:
    got: list[ino.InotifyEvent] = []
    deadline = time.monotonic() + timeout
    while not cond(got) and time.monotonic() < deadline:
        got += inotify.read()
        time.sleep(0.01)
    return got


def masks(events: list[ino.InotifyEvent], name: bytes) -> int:
    out = 0
    for e in events:
        if e.name == name:
            out |= e.mask
    return out


@pytest.fixture
def inotify():
    instance = ino.Inotify()
    yield instance
    instance.close()


@pytest.fixture
def watcher():
    w = DirectoryWatcher(poll_every=0.1)
    yield w
    w.close()
    assert not w.threads()


class Seen:
    """A callback that records the paths it was called with."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, path: str) -> None:
        with self.lock:
            self.paths.append(path)

    def has(self, path: Path | str) -> bool:
        with self.lock:
            return str(path) in self.paths

    def clear(self) -> None:
        with self.lock:
            self.paths.clear()


# -- the kernel interface ---------------------------------------------------------------------
def test_create_modify_move_delete_in_a_watched_directory(tmp_path, inotify):
    wd = inotify.add_watch(str(tmp_path))
    assert inotify.read() == []  # nothing yet, and it does not block
    log = tmp_path / "app.log"
    with open(log, "w") as f:
        f.write("one\n")
    log.rename(tmp_path / "app.log.1")
    (tmp_path / "app.log.1").unlink()
    events = events_until(inotify, lambda got: masks(got, b"app.log.1") & ino.IN_DELETE)
    assert all(e.wd == wd for e in events)
    created = masks(events, b"app.log")
    assert created & ino.IN_CREATE and created & ino.IN_MODIFY and created & ino.IN_CLOSE_WRITE
    assert created & ino.IN_MOVED_FROM and masks(events, b"app.log.1") & ino.IN_MOVED_TO
    moves = [e for e in events if e.mask & (ino.IN_MOVED_FROM | ino.IN_MOVED_TO)]
    assert len({e.cookie for e in moves}) == 1 and moves[0].cookie != 0  # the pair is linked
    assert masks(events, b"app.log.1") & ino.IN_DELETE


def test_reads_are_not_events(tmp_path, inotify):
    (tmp_path / "app.log").write_text("line\n")
    inotify.add_watch(str(tmp_path))
    (tmp_path / "app.log").read_text()
    os.listdir(tmp_path)
    time.sleep(0.05)
    assert inotify.read() == []


def test_a_deleted_directory_ends_its_watch(tmp_path, inotify):
    sub = tmp_path / "sub"
    sub.mkdir()
    wd = inotify.add_watch(str(sub))
    sub.rmdir()
    events = events_until(inotify, lambda got: any(e.mask & ino.IN_IGNORED for e in got))
    assert [e.wd for e in events] == [wd, wd]
    assert events[0].mask & ino.IN_DELETE_SELF and events[1].mask & ino.IN_IGNORED
    inotify.rm_watch(wd)  # already ended by the kernel: not an error


def test_errors_name_the_path(tmp_path, inotify):
    with pytest.raises(FileNotFoundError) as caught:
        inotify.add_watch(str(tmp_path / "missing"))
    assert caught.value.filename == str(tmp_path / "missing")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):  # IN_ONLYDIR: only directories are watched
        inotify.add_watch(str(tmp_path / "file"))


def test_a_real_queue_overflow(tmp_path, inotify):
    """More events than fs.inotify.max_queued_events while nobody reads: the last is
    IN_Q_OVERFLOW, with wd -1."""
    inotify.add_watch(str(tmp_path))
    limit = max_queued_events()
    if limit > 100_000:
        pytest.skip(f"max_queued_events is {limit}: too many files to make")
    for i in range(limit + 10):  # IN_CREATE for different names: never merged
        os.close(os.open(tmp_path / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o600))
    events: list[ino.InotifyEvent] = []
    while batch := inotify.read():
        events += batch
    assert len(events) == limit + 1
    assert events[-1].wd == -1 and events[-1].mask & ino.IN_Q_OVERFLOW


def test_parse_events_drops_a_truncated_tail():
    one = ino._HEADER.pack(3, ino.IN_CREATE, 0, 16) + b"app.log".ljust(16, b"\0")
    assert ino.parse_events(one + one[:20]) == [ino.InotifyEvent(3, ino.IN_CREATE, 0, b"app.log")]
    assert ino.parse_events(one[:10]) == []


# -- the watcher ------------------------------------------------------------------------------
def test_callbacks_get_the_changed_paths_of_their_directory(tmp_path, watcher):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    seen_a, seen_b = Seen(), Seen()
    assert watcher.add(str(a), seen_a) and watcher.add(str(b), seen_b)
    (a / "x.log").write_text("x\n")
    (a / "x.log").rename(a / "y.log")
    wait_for(lambda: seen_a.has(a / "x.log") and seen_a.has(a / "y.log"), 5, "both names")
    (b / "z.log").write_text("z\n")
    wait_for(lambda: seen_b.has(b / "z.log"), 5, "the change in b")
    assert all(p.startswith(str(a) + "/") for p in seen_a.paths)
    assert [t.name for t in watcher.threads()] == ["inotify"]  # one thread for every directory


def test_a_second_callback_on_a_directory_and_remove(tmp_path, watcher):
    first, second = Seen(), Seen()
    assert watcher.add(str(tmp_path), first) and watcher.add(str(tmp_path), second)
    (tmp_path / "one").write_text("")
    wait_for(lambda: first.has(tmp_path / "one") and second.has(tmp_path / "one"), 5, "both")
    watcher.remove(str(tmp_path), first)
    (tmp_path / "two").write_text("")
    wait_for(lambda: second.has(tmp_path / "two"), 5, "the one left")
    assert not first.has(tmp_path / "two")
    watcher.remove(str(tmp_path), second)
    assert watcher._watches == {} and watcher._by_wd == {}


def test_a_deleted_directory_calls_back_with_itself_and_can_be_watched_again(tmp_path, watcher):
    sub = tmp_path / "logs"
    sub.mkdir()
    seen, other = Seen(), Seen()
    assert watcher.add(str(sub), seen) and watcher.add(str(sub), other)
    sub.rmdir()
    wait_for(lambda: seen.has(sub) and other.has(sub), 5, "the directory's own path")
    wait_for(lambda: not watcher._watches[(str(sub), False)].alive, 5, "the watch ended")
    assert not watcher.add(str(sub), seen)  # not there: the caller watches a parent meanwhile
    sub.mkdir()
    assert watcher.add(str(sub), seen)  # renewed, with the other callback of the dead watch
    (sub / "new.log").write_text("")
    wait_for(lambda: seen.has(sub / "new.log") and other.has(sub / "new.log"), 5, "renewed")


def test_a_moved_directory_is_not_followed_under_its_old_name(tmp_path, watcher):
    sub = tmp_path / "logs"
    sub.mkdir()
    seen = Seen()
    assert watcher.add(str(sub), seen)
    sub.rename(tmp_path / "elsewhere")
    wait_for(lambda: seen.has(sub), 5, "the directory's own path")
    wait_for(lambda: not watcher._watches[(str(sub), False)].alive, 5, "the watch ended")
    seen.clear()
    (tmp_path / "elsewhere" / "app.log").write_text("not under logs/ any more\n")
    time.sleep(0.2)
    assert not seen.paths


def test_an_overflow_calls_every_directory_back(tmp_path, watcher):
    """The thread is held in a callback while more events than the kernel queues arrive:
    every directory is then told that anything in it may have changed."""
    busy, quiet = tmp_path / "busy", tmp_path / "quiet"
    busy.mkdir(), quiet.mkdir()
    limit = max_queued_events()
    if limit > 100_000:
        pytest.skip(f"max_queued_events is {limit}: too many files to make")
    hold, held = threading.Event(), threading.Event()

    def slow(path: str) -> None:
        held.set()
        hold.wait(30)

    seen = Seen()
    assert watcher.add(str(busy), slow) and watcher.add(str(quiet), seen)
    (busy / "first").write_text("")
    assert held.wait(5)
    for i in range(limit + 10):
        os.close(os.open(busy / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o600))
    hold.set()
    wait_for(lambda: seen.has(quiet), 10, "the quiet directory told to look")


def test_a_failing_callback_does_not_stop_the_watching(tmp_path, watcher):
    def broken(path: str) -> None:
        raise RuntimeError("a bug in a callback")

    seen = Seen()
    assert watcher.add(str(tmp_path), broken) and watcher.add(str(tmp_path), seen)
    for name in ("one", "two"):
        (tmp_path / name).write_text("")
        wait_for(lambda name=name: seen.has(tmp_path / name), 5, name)


def test_polling_sees_create_modify_rename_delete(tmp_path, watcher):
    log = tmp_path / "app.log"
    log.write_text("")
    seen = Seen()
    assert watcher.add(str(tmp_path), seen, poll=True)
    assert (str(tmp_path), True) in watcher._watches
    assert [t.name for t in watcher.threads()] == ["dir poll"]  # no inotify at all
    with open(log, "a") as f:
        f.write("a line\n")
    wait_for(lambda: seen.has(log), 5, "the modified file")
    log.rename(tmp_path / "app.log.1")
    wait_for(lambda: seen.has(tmp_path / "app.log.1"), 5, "the new name")
    seen.clear()
    (tmp_path / "app.log.1").unlink()
    wait_for(lambda: seen.has(tmp_path / "app.log.1"), 5, "the deleted file")


def test_polling_a_directory_that_goes_away(tmp_path, watcher):
    sub = tmp_path / "nfs"
    sub.mkdir()
    seen = Seen()
    assert watcher.add(str(sub), seen, poll=True)
    sub.rmdir()
    wait_for(lambda: seen.has(sub), 5, "the directory's own path")
    assert not watcher.add(str(sub), seen, poll=True)
    sub.mkdir()
    assert watcher.add(str(sub), seen, poll=True)
    (sub / "back").write_text("")
    wait_for(lambda: seen.has(sub / "back"), 5, "a change after the renewal")


def test_a_missing_directory_is_refused_without_falling_back(tmp_path, watcher):
    assert not watcher.add(str(tmp_path / "missing"), Seen())
    assert watcher._inotify_broken is None and watcher._watches == {}
