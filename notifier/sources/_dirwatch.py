"""Changes in directories, for the log sources: one inotify instance and one thread for every
entry, stat polling (a thread of its own, started only when needed) where inotify cannot serve.

Callbacks are per directory and get the path that changed: a name in the directory, or the
directory itself when everything in it may have changed (the kernel's event queue overflowed)
or when it is gone from its path (deleted, moved, unmounted: the watch ends, and the caller
adds it again where it wants it).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
from collections.abc import Callable

from notifier.sources import _inotify as ino

log = logging.getLogger("notifier.sources")

POLL_EVERY = 2.0  # seconds between directory scans where inotify is not used
INOTIFY_EXHAUSTED = {errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOSYS}

Callback = Callable[[str], None]
Snapshot = dict[str, tuple[int, ...]]


class _Watch:
    """One watched directory: its callbacks, and its inotify descriptor or its last listing."""

    __slots__ = ("directory", "polling", "callbacks", "wd", "snapshot", "alive")

    def __init__(self, directory: str, polling: bool) -> None:
        self.directory = directory
        self.polling = polling
        self.callbacks: set[Callback] = set()
        self.wd: int | None = None
        self.snapshot: Snapshot = {}
        self.alive = False  # False once the directory left its path: the next add() renews it


class DirectoryWatcher:
    """One per process (`shared_watcher()`): callbacks per directory, inotify where it can,
    polling every `poll_every` seconds where asked to (network filesystems) or where inotify
    is unavailable or out of instances or watches (with a warning, once)."""

    def __init__(self, poll_every: float = POLL_EVERY) -> None:
        self.poll_every = poll_every
        self._lock = threading.Lock()
        self._watches: dict[tuple[str, bool], _Watch] = {}  # (directory, polling?) -> watch
        self._by_wd: dict[int, list[_Watch]] = {}  # bind mounts of one directory share a wd
        self._inotify: ino.Inotify | None = None
        self._inotify_broken: str | None = None
        self._wakeup: int | None = None  # an eventfd that ends the inotify thread's wait
        self._closed = threading.Event()
        self._threads: dict[str, threading.Thread] = {}

    def add(self, directory: str, callback: Callback, *, poll: bool = False) -> bool:
        """Call `callback(path)` on changes in `directory`; False if it cannot be watched now."""
        with self._lock:
            for polling in (True,) if poll else (False, True):
                if not polling and self._inotify_broken:
                    continue
                watch = self._watches.get((directory, polling))
                if watch is not None and watch.alive:
                    watch.callbacks.add(callback)
                    return True
                watch = watch or _Watch(directory, polling)
                try:
                    self._poll_start(watch) if polling else self._inotify_start(watch)
                except OSError as exc:
                    if exc.errno not in INOTIFY_EXHAUSTED or polling:
                        return False  # gone, or not ours to watch: the caller looks anyway
                    self._inotify_broken = exc.strerror or str(exc)
                    log.warning(
                        "inotify cannot watch %s (%s); polling every %gs instead. Raise "
                        "fs.inotify.max_user_watches / max_user_instances to fix.",
                        directory,
                        self._inotify_broken,
                        self.poll_every,
                    )
                    continue
                watch.callbacks.add(callback)  # with those of a watch that died, if any
                self._watches[(directory, polling)] = watch
                return True
        return False

    def remove(self, directory: str, callback: Callback) -> None:
        """Stop calling `callback` for `directory`; the last one out ends the watch."""
        with self._lock:
            for polling in (False, True):
                watch = self._watches.get((directory, polling))
                if watch is None:
                    continue
                watch.callbacks.discard(callback)
                if not watch.callbacks:
                    del self._watches[(directory, polling)]
                    self._end(watch)

    def close(self) -> None:
        """End every watch and the threads (for tests; the daemon's one watcher lives on)."""
        with self._lock:
            for watch in self._watches.values():
                self._end(watch)
            self._watches.clear()
            self._closed.set()
            if self._wakeup is not None:
                os.eventfd_write(self._wakeup, 1)
        for thread in self._threads.values():
            thread.join(timeout=5)
        if self._inotify is not None:
            self._inotify.close()
        if self._wakeup is not None:
            os.close(self._wakeup)
            self._wakeup = None

    def threads(self) -> list[threading.Thread]:
        return [t for t in self._threads.values() if t.is_alive()]

    # -- with the lock held ---------------------------------------------------------------
    def _inotify_start(self, watch: _Watch) -> None:
        if self._inotify is None:
            self._inotify = ino.Inotify()
            self._wakeup = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        wd = self._inotify.add_watch(watch.directory)
        watch.wd, watch.alive = wd, True
        self._by_wd.setdefault(wd, []).append(watch)
        self._thread("inotify", self._read_events)

    def _poll_start(self, watch: _Watch) -> None:
        watch.snapshot = _listing(watch.directory)
        watch.alive = True
        self._thread("dir poll", self._poll_loop)

    def _thread(self, name: str, target: Callable[[], None]) -> None:
        if name not in self._threads and not self._closed.is_set():
            self._threads[name] = threading.Thread(target=target, name=name, daemon=True)
            self._threads[name].start()

    def _end(self, watch: _Watch) -> None:
        """Forget the kernel side of a watch (its callbacks are the caller's business)."""
        watch.alive = False
        wd, watch.wd = watch.wd, None
        if wd is None:
            return
        sharing = [w for w in self._by_wd.get(wd, ()) if w is not watch]
        if sharing:
            self._by_wd[wd] = sharing
            return
        self._by_wd.pop(wd, None)
        if self._inotify is not None:
            try:
                self._inotify.rm_watch(wd)
            except OSError:
                pass  # the kernel ended it already

    # -- the inotify thread ---------------------------------------------------------------
    def _read_events(self) -> None:
        assert self._inotify is not None and self._wakeup is not None
        waiter = select.poll()
        waiter.register(self._inotify.fileno(), select.POLLIN)
        waiter.register(self._wakeup, select.POLLIN)
        while not self._closed.is_set():
            try:
                waiter.poll()
                events = self._inotify.read()
            except OSError as exc:  # never seen; without this thread, the backstop still looks
                log.error("reading inotify events failed, watching by backstop only: %s", exc)
                return
            try:
                self._call(self._inotify_changes(events))
            except Exception:  # a strange event must not end the watching
                log.exception("inotify event not understood: %r", events[:5])

    def _inotify_changes(self, events: list[ino.InotifyEvent]) -> dict[str, set[Callback]]:
        """Changed path -> the callbacks to call with it, once each for one read of events."""
        changes: dict[str, set[Callback]] = {}
        with self._lock:
            for event in events:
                if event.mask & ino.IN_Q_OVERFLOW:  # events were lost: anything may have changed
                    for watch in self._watches.values():
                        if watch.alive and not watch.polling:
                            changes.setdefault(watch.directory, set()).update(watch.callbacks)
                    continue
                for watch in list(self._by_wd.get(event.wd, ())):
                    if event.name:
                        path = os.path.join(watch.directory, os.fsdecode(event.name))
                    else:
                        path = watch.directory
                    changes.setdefault(path, set()).update(watch.callbacks)
                    if event.mask & ino.SELF_GONE:
                        self._end(watch)  # a moved directory's wd would follow it elsewhere
        return changes

    # -- the polling thread ---------------------------------------------------------------
    def _poll_loop(self) -> None:
        while not self._closed.wait(self.poll_every):
            with self._lock:
                polled = [w for w in self._watches.values() if w.polling and w.alive]
            for watch in polled:  # outside the lock: a hung NFS server stalls only this thread
                try:
                    self._call(self._poll_changes(watch))
                except Exception:
                    log.exception("polling %s failed", watch.directory)

    def _poll_changes(self, watch: _Watch) -> dict[str, set[Callback]]:
        try:
            now = _listing(watch.directory)
        except OSError:
            with self._lock:
                self._end(watch)
            return {watch.directory: set(watch.callbacks)}
        before, watch.snapshot = watch.snapshot, now
        changed = [n for n in before.keys() | now.keys() if before.get(n) != now.get(n)]
        callbacks = set(watch.callbacks)
        return {os.path.join(watch.directory, name): callbacks for name in sorted(changed)}

    @staticmethod
    def _call(changes: dict[str, set[Callback]]) -> None:
        for path, callbacks in changes.items():
            for callback in callbacks:
                try:
                    callback(path)
                except Exception:
                    log.exception("directory watch callback failed for %s", path)


def _listing(directory: str) -> Snapshot:
    """What a poll compares: each name's inode, size, times and mode (not following links)."""
    out: Snapshot = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # deleted between the listing and the stat
            out[entry.name] = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                               st.st_mode)  # fmt: skip
    return out


_watcher: DirectoryWatcher | None = None
_watcher_lock = threading.Lock()


def shared_watcher() -> DirectoryWatcher:
    """The process's one DirectoryWatcher."""
    global _watcher
    with _watcher_lock:
        if _watcher is None:
            _watcher = DirectoryWatcher()
        return _watcher
