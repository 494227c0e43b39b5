"""`sources.logs`: rules applied to the lines appended to log files, like fail2ban, as events.

Each entry follows a file or a glob like `tail -F`. The files' directories are watched with
inotify (one instance and one thread for every entry, polling where inotify cannot serve), and
a slow stat backstop catches what an event missed. Events and the position they were read up
to are posted together, so a restart reads what was written while notifier was stopped.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import threading
import time
from typing import Any

from notifier import schema
from notifier.sources._dirwatch import shared_watcher
from notifier.sources.base import COMMON_FIELDS, Source, SourceContext
from notifier.sources.matching import EventBatch, RuleSet
from notifier.sources.rules import Rule, rules_field
from notifier.sources.tail import LogTail, TailError

log = logging.getLogger("notifier.sources")

BACKSTOP = 30.0  # seconds between looks at the files when no event came (missed events, NFS)
POSITION_EVERY = 5.0  # a position moved by lines without events is saved at most this often


def _absolute(path: str) -> str:
    if not os.path.isabs(path):
        raise ValueError(f"must be an absolute path like /var/log/auth.log, got {path!r}")
    return os.path.normpath(path)


ENTRY = schema.Map(
    description="A log file (or a glob of them) and the rules applied to each new line.",
    fields={
        **COMMON_FIELDS,
        "path": schema.Str(
            description="The file to follow, or a glob (/var/log/nginx/*error.log). Followed like "
            "tail -F: across rotation (rename, copytruncate, delete, symlink change); a file that "
            "appears later is read from its beginning.",
            default=schema.REQUIRED,
            check=_absolute,
            example="/var/log/auth.log",
        ),
        "rules": rules_field(("path",)),
        "max_catchup": schema.Size(
            description="After a restart, read at most this much of what was written while "
            "notifier was stopped (the newest part); events then note how much was skipped.",
            default=10 * 1024 * 1024,
            example="10MiB",
        ),
        "poll": schema.Bool(
            description="Look for changes by polling instead of inotify (for network filesystems "
            "where inotify sees nothing).",
            default=False,
            example=False,
        ),
    },
)


class LogsSource(Source):
    """One `sources.logs` entry: its files followed in a thread of its own."""

    key = "logs"
    entry = ENTRY

    def __init__(self, conf: dict[str, Any], index: int, ctx: SourceContext) -> None:
        super().__init__(conf, index, ctx)
        self.pattern: str = conf["path"]
        self.ruleset = RuleSet(
            [Rule.from_conf(r, origin=f"sources.logs[{index}]") for r in conf["rules"]]
        )
        self.max_catchup: int = conf["max_catchup"]
        self.poll: bool = conf["poll"]
        self.backstop = BACKSTOP
        # Positions are kept per entry label, so reordering entries keeps them.
        self._label = f"logs:{conf.get('name') or self.pattern}"
        self._is_glob = glob.has_magic(self.pattern)
        self._tails: dict[str, LogTail] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._watched: set[str] = set()
        self._names: tuple[str, ...] = ()  # file names whose changes wake us
        self._posted: dict[str, Any] = {}  # the last position posted per key
        self._unsaved: dict[str, Any] = {}  # positions moved without events, not posted yet
        self._saved_at = 0.0
        self._failures: dict[str, str] = {}
        self._watcher = shared_watcher()

    def start(self) -> None:
        self._stopping.clear()
        self._wake.set()  # the first look right away
        self._thread = threading.Thread(target=self._run, name=f"source {self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- the thread ---------------------------------------------------------------------
    def _run(self) -> None:
        first_start = self.ctx.position(self._label) is None
        if first_start:  # saved with the first positions: the next start is a restart
            self._unsaved[self._label] = {"started": self.ctx.now()}
        try:
            while not self._stopping.is_set():
                self._wake.wait(self.backstop)
                if self._stopping.is_set():
                    break
                self._wake.clear()
                try:
                    self._look(first_start)
                except Exception as exc:  # never out of the thread: report, retry next time
                    log.debug("source %s raised", self.name, exc_info=True)
                    self._failures["*"] = f"{type(exc).__name__}: {exc}"
                first_start = False
                self._save_positions(force=False)
                failures = sorted(set(self._failures.values()))
                self._failures.pop("*", None)
                if failures:
                    self.report_failure("; ".join(failures))
                else:
                    self.report_ok()
        finally:
            self._save_positions(force=True)
            for directory in self._watched:
                self._watcher.remove(directory, self._changed)
            for tail in self._tails.values():
                tail.close()

    def _look(self, first_start: bool) -> None:
        """Follow every matching file: new ones, then each one's new lines."""
        for path in self._paths():
            if path not in self._tails:
                saved = self.ctx.position(self._key(path))
                self._posted[self._key(path)] = saved
                self._tails[path] = LogTail(
                    path, saved, at_end=first_start, max_catchup=self.max_catchup
                )
        self._watch()  # before reading: a change from now on wakes us again
        for path, tail in list(self._tails.items()):
            if self._stopping.is_set():
                return
            self._drain(path, tail)
            if self._is_glob and not tail.is_open and not os.path.lexists(path):
                tail.close()
                del self._tails[path]
                # Gone for good (a dated log deleted by logrotate's maxage): forget its
                # position, so the spool does not keep one row per file ever seen.
                self._unsaved[self._key(path)] = None
                self._save_positions(force=True)

    def _paths(self) -> list[str]:
        if self._is_glob:
            return sorted(p for p in glob.glob(self.pattern) if os.path.isfile(p))
        return [self.pattern]

    def _key(self, path: str) -> str:
        return f"{self._label}:{path}"

    def _drain(self, path: str, tail: LogTail) -> None:
        key = self._key(path)
        context = {"path": path}
        while not self._stopping.is_set():
            try:
                chunk = tail.read()
            except TailError as exc:
                self._failures[key] = str(exc)
                return
            except OSError as exc:
                self._failures[key] = f"cannot read {path}: {exc.strerror or exc}"
                return
            self._failures.pop(key, None)
            if chunk is None:
                break
            note = {"catchup_cut_bytes": chunk.cut_bytes} if chunk.cut_bytes else None
            batch = EventBatch(self.key, self.ctx.host, self.ctx.now(), note)
            for rule, line, cut in self.ruleset.hits(chunk.data):
                batch.add(rule, line, cut, context)
            position = tail.position_after(chunk)
            if len(batch):
                self._unsaved.pop(key, None)
                self.ctx.post(batch.events(), positions={key: position})
                self._posted[key] = position
            tail.commit(chunk)
        position = tail.position()
        posted = self._posted.get(key) or {}
        if position is not None and position != posted:
            self._unsaved[key] = position
            if (posted.get("dev"), posted.get("ino")) != (position["dev"], position["ino"]):
                self._save_positions(force=True)  # a new file: where it starts must not be lost

    def _save_positions(self, force: bool) -> None:
        if self._unsaved and (force or time.monotonic() - self._saved_at >= POSITION_EVERY):
            self.ctx.post([], positions=dict(self._unsaved))
            self._posted.update(self._unsaved)
            self._unsaved.clear()
            self._saved_at = time.monotonic()

    # -- watching -----------------------------------------------------------------------
    def _watch(self) -> None:
        """Watch the directories of the files, of their symlinks' targets, and of the glob."""
        base = self.pattern
        while glob.has_magic(base):
            base = os.path.dirname(base)
        real = {os.path.realpath(p) for p in self._tails}
        wanted = set()
        for directory in {
            base if self._is_glob else os.path.dirname(base),
            *map(os.path.dirname, [*self._tails, *real]),
        }:
            while directory != "/" and not os.path.isdir(directory):
                directory = os.path.dirname(directory)  # a parent that will appear later
            wanted.add(os.path.realpath(directory))
        self._names = tuple({os.path.basename(p) for p in [*self._tails, *real]})
        for directory in wanted:  # again each time: a watch dies with its directory
            if self._watcher.add(directory, self._changed, poll=self.poll):
                self._watched.add(directory)
        for directory in self._watched - wanted:
            self._watcher.remove(directory, self._changed)
            self._watched.discard(directory)

    def _changed(self, path: str) -> None:
        """A DirectoryWatcher callback: wake up if the change may concern our files."""
        name = os.path.basename(path)
        if (
            path in self._watched  # the directory itself: gone, or anything in it may have changed
            or name.startswith(self._names)
            or os.path.isdir(path)
            or (self._is_glob and fnmatch.fnmatch(name, os.path.basename(self.pattern)))
        ):
            self._wake.set()


SOURCE = LogsSource
