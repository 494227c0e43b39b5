"""Following a log file like `tail -F`: complete lines only, across rotation, from a saved position.

A LogTail does no waiting itself: its owner calls `read()` when the file may have changed
(inotify, or a slow backstop) and `commit()` once the lines are posted together with
`position()`, so a crash between the two re-reads those lines instead of losing them.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from notifier.sources.rules import MAX_LINE

log = logging.getLogger("notifier.sources")

READ_SIZE = 1 << 20  # bytes read at once: big enough for the rules to be fast, small for RSS
FINGERPRINT_SIZE = 1024
RETIRE_AFTER = 30.0  # seconds a rotated-away file is still read: writers reopen late (HUP races)
_COMPRESSED = (".gz", ".xz", ".bz2", ".zst", ".lz4", ".Z")


try:  # CPython's own sha1: the same digest as hashlib's without loading OpenSSL (+3.6 MiB RSS)
    from _sha1 import sha1 as _sha1
except ImportError:  # a Python built without it
    from hashlib import sha1 as _sha1


class TailError(Exception):
    """The file exists but cannot be read; the message says why and what to do."""


def fingerprint(fd: int) -> str | None:
    """sha1 of the file's first line (at most 1 KiB); None while that line is incomplete."""
    head = os.pread(fd, FINGERPRINT_SIZE, 0)
    newline = head.find(b"\n")
    if newline >= 0:
        head = head[:newline]
    elif len(head) < FINGERPRINT_SIZE:
        return None
    return _sha1(head, usedforsecurity=False).hexdigest()


@dataclass(eq=False)
class _OpenFile:
    """One open file and how far it has been read."""

    fd: int
    dev: int
    ino: int
    name: str  # its real path when opened, for messages and for finding it after a restart
    offset: int = 0
    skip: bool = False  # inside an over-long line: drop the bytes up to its newline
    fp: str | None = None
    cut_bytes: int = 0  # catch-up bytes skipped; noted on what is read before `cut_until`
    cut_until: int = 0
    retire_at: float | None = None  # set once the path leads elsewhere

    def position(self) -> dict[str, Any]:
        return {
            "dev": self.dev,
            "ino": self.ino,
            "offset": self.offset,
            "fp": self.fp,
            "file": self.name,
            "skip": self.skip,
        }


@dataclass(eq=False)
class Chunk:
    """Complete lines read from one file; `LogTail.commit(chunk)` once they are handled."""

    data: bytes  # lines, each ending in \n; an over-long one is cut to MAX_LINE + 1 bytes
    file: str
    end: int
    skip: bool
    cut_bytes: int  # catch-up bytes skipped before these lines (0: none)
    source: _OpenFile


class LogTail:
    """Follows one path: what is appended, the rest of a rotated file, a truncated file from
    its start, and a file that appears later from its start (it is new).

    Rotated copies of the log (name.1, name-20240101) that appear between two looks are
    generations not read yet: copytruncate's copy holds the lines written before the
    truncation, and logrotate may have run twice. They are read, oldest first, before the
    current file; the position remembers which copies were already there.
    """

    def __init__(
        self,
        path: str,
        saved: dict[str, Any] | None,
        *,
        at_end: bool,
        max_catchup: int,
        retire_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`saved`: the position of a previous run. Without one, start at the end of the file
        when `at_end` (the first start), else at its beginning (the file is new)."""
        self.path = path
        self.max_catchup = max_catchup
        self.retire_after = RETIRE_AFTER if retire_after is None else retire_after
        self._clock = clock
        self._first: tuple[dict[str, Any] | None, bool] | None = (saved, at_end)
        self._cur: _OpenFile | None = None
        self._retired: list[_OpenFile] = []
        # The rotated copies seen (inode, fingerprint: inodes are reused), at the last look.
        self._known: set[tuple[int, str | None]] | None = None
        self._scanned: set[tuple[int, str | None]] = set()
        self._lost: list[dict[str, Any]] = []  # truncated contents whose copy is not found yet
        self._listed: int | None = None  # the directory's mtime when its copies were listed
        self._saved = saved  # what the last run was reading, until the first look has used it
        self._last_position = saved
        numbered = re.escape(os.path.basename(path))
        self._copy_name = re.compile(numbered + r"[._-]\d[\w.-]*")

    def read(self) -> Chunk | None:
        """The next lines to handle, or None when there is nothing new now."""
        chunk = self._read_retired()
        if chunk is not None:
            return chunk
        for _ in range(3):  # again when the file turns out rotated, or truncated as we read
            if self._cur is None:
                self._cur = self._open_first() if self._first else self._open_new()
            if self._cur is None:
                self._look_around(None)  # a rotation may have left copies and no file
                return self._read_retired()
            cur = self._cur
            self._look_around(cur)
            chunk = self._read_retired()  # unread rotated copies come first
            if chunk is not None:
                return chunk
            before = cur.fp or fingerprint(cur.fd)
            chunk = self._next(cur, final=False)
            if chunk is not None:
                if fingerprint(cur.fd) == before:
                    cur.fp = before  # the first line of what was read: tells a truncation
                    return chunk
                continue  # truncated (and written again) while we read: look again
            if self._leads_here(cur):
                return None
            # Rotated, deleted or relinked: the old file is read a while longer (its writer
            # may not have reopened yet), the new one from its start.
            cur.retire_at = self._clock() + self.retire_after
            self._retired.append(cur)
            self._cur = self._open_new()
        return None

    def commit(self, chunk: Chunk) -> None:
        """The lines of `chunk` are handled (posted with `position()`): move past them."""
        chunk.source.offset = chunk.end
        chunk.source.skip = chunk.skip
        if chunk.source is self._cur or self._cur is None:
            self._last_position = self._position(chunk.source)

    @property
    def is_open(self) -> bool:
        """Whether a file (current, or rotated away and still read) is open."""
        return self._cur is not None or bool(self._retired)

    def position_after(self, chunk: Chunk) -> dict[str, Any] | None:
        """What `position()` will be once `chunk` is committed: to post with its lines."""
        if chunk.source is self._cur or self._cur is None:
            return {**self._position(chunk.source), "offset": chunk.end, "skip": chunk.skip}
        return self.position()

    def position(self) -> dict[str, Any] | None:
        """Where to resume after a restart: the current file's identity and offset, and the
        rotated copies already seen."""
        if self._cur is not None:
            self._last_position = self._position(self._cur)
        return self._last_position

    def _position(self, f: _OpenFile) -> dict[str, Any]:
        return {**f.position(), "rotated": [list(k) for k in sorted(self._known or (), key=str)]}

    def close(self) -> None:
        for f in [*self._retired, *([self._cur] if self._cur else [])]:
            os.close(f.fd)
        self._retired, self._cur = [], None

    # -- opening ------------------------------------------------------------------------
    def _open(self, path: str) -> _OpenFile | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PermissionError:
            raise TailError(
                f"cannot read {path}: permission denied; run notifier as root or "
                f"give its user read access (on Debian, the adm group)"
            ) from None
        except OSError as exc:
            raise TailError(f"cannot open {path}: {exc.strerror}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise TailError(f"cannot follow {path}: it is {what}; give the path of a log file")
        return _OpenFile(fd, st.st_dev, st.st_ino, os.path.realpath(path))

    def _open_new(self) -> _OpenFile | None:
        f = self._open(self.path)
        if f is not None:
            self._start(f, 0, False, self.max_catchup)
        return f

    def _open_first(self) -> _OpenFile | None:
        saved, at_end = self._first or (None, False)
        self._first = None
        if saved is None:
            copies = self._copies()
            self._known = {(f.ino, fp) for f, fp, _ in copies}
            for f, _, _ in copies:
                os.close(f.fd)
            f = self._open(self.path)
            if f is not None:
                size = os.fstat(f.fd).st_size
                start = self._line_start_before(f, size) if at_end else 0
                self._start(f, start, False, self.max_catchup)
            return f
        if "rotated" in saved:
            self._known = {(ino, fp) for ino, fp in saved["rotated"]}
        f = self._open(self.path)
        if f is not None and (f.dev, f.ino) == (saved["dev"], saved["ino"]):
            offset, skip, fp = saved["offset"], bool(saved.get("skip")), saved.get("fp")
            if os.fstat(f.fd).st_size >= offset and fp in (None, fingerprint(f.fd)):
                self._start(f, offset, skip, self.max_catchup)  # on from where we were
            else:  # truncated while we were away: the first look finds where its lines went
                f.offset, f.skip, f.fp = offset, skip, fp
            self._saved = None
        elif f is not None:
            self._start(f, 0, False, self.max_catchup)  # a new file; ours is among the copies
        return f

    # -- rotated copies -----------------------------------------------------------------
    def _copies(self) -> list[tuple[_OpenFile, str | None, str]]:
        """This log's rotated copies (name.1, name-20240101), opened, with their fingerprint
        and name; compressed ones cannot be read and are left out."""
        directory = os.path.dirname(self.path) or "."
        try:
            with os.scandir(directory) as entries:
                names = [e.name for e in entries if self._copy_name.fullmatch(e.name)
                         and not e.name.endswith(_COMPRESSED) and e.is_file()]  # fmt: skip
        except OSError:
            return []
        opened = [(self._open_quietly(name), name) for name in names]
        return [(f, fingerprint(f.fd), name) for f, name in opened if f is not None]

    def _look_around(self, cur: _OpenFile | None) -> None:
        """Queue, before `cur`, the rotated copies that appeared since the last look and hold
        lines not read yet; read `cur` from its start if it was truncated."""
        if cur is not None and not self._leads_here(cur):
            return  # rotated away: its rest comes first, the copies once we switched
        # The file first, then its copies: logrotate copies before it truncates, so the copy
        # of a truncation seen here is in the directory by the time we list it.
        now_fp = fingerprint(cur.fd) if cur is not None else None
        truncated = cur is not None and (
            os.fstat(cur.fd).st_size < cur.offset or (cur.fp is not None and now_fp != cur.fp)
        )
        try:
            listed = os.stat(os.path.dirname(self.path) or ".").st_mtime_ns
        except OSError:
            listed = None
        if not truncated and listed == self._listed and not self._saved and self._known is not None:
            return  # no name in the directory changed: no new copy to look at
        self._listed = listed
        # What we were reading: the current file, or after a restart, what the last run read.
        prev = self._saved or (cur.position() if cur is not None else None)
        self._saved = None
        if truncated and prev is not None:
            self._lost = [prev, *self._lost][:4]  # its copy holds what we had not read
        known, held = self._known, {f.ino for f in [*self._retired, *([cur] if cur else [])]}
        copies = self._copies()
        queue, waiting = [], set()
        for f, fp, _ in sorted(copies, key=lambda c: self._age(c[2])):
            if fp is None:
                # Empty, or still being copied (copytruncate): its first line, and so which
                # generation it is, is not known yet. The next look sees it whole.
                os.close(f.fd)
                continue
            if f.ino in held or (known is not None and (f.ino, fp) in known):
                os.close(f.fd)
                continue
            lost = next((p for p in self._lost if fp is not None and fp == p.get("fp")), None)
            if prev is not None and f.ino == prev["ino"]:
                lost = prev  # ours, renamed while we were away
            elif fp is not None and fp == now_fp:
                waiting.add((f.ino, fp))  # copied, not truncated yet: its lines are in `cur`
                os.close(f.fd)
                continue
            elif lost is not None:
                self._lost.remove(lost)
            elif known is None:
                os.close(f.fd)  # no record of what was there before: not ours to guess
                continue
            if lost is not None and os.fstat(f.fd).st_size >= lost["offset"]:
                queue.append((f, lost["offset"], bool(lost.get("skip"))))  # the unread rest
            else:
                queue.append((f, 0, False))  # a whole generation written since we looked
        # A copy missed by one listing (being renamed just then) is still known.
        seen = {(f.ino, fp) for f, fp, _ in copies if fp is not None}
        self._known = (seen | ((known or set()) & self._scanned)) - waiting
        self._scanned = seen
        if truncated:
            log.info("%s was truncated (copytruncate?); reading it from the start", self.path)
        if queue or truncated:
            self._catch_up(queue, cur if truncated else None)

    def _age(self, name: str) -> tuple[int, int, str]:
        """Sorts copies oldest first: name.N, where a bigger N is older, then dated names."""
        suffix = name[len(os.path.basename(self.path)) + 1 :]
        return (0, -int(suffix), "") if suffix.isdigit() else (1, 0, name)

    def _open_quietly(self, name: str) -> _OpenFile | None:
        try:
            return self._open(os.path.join(os.path.dirname(self.path), name))
        except TailError:
            return None

    def _catch_up(self, old: list[tuple[_OpenFile, int, bool]], cur: _OpenFile | None) -> None:
        """Read the finished files `old` (oldest first, each from its offset) before `cur`
        (from 0), all together within max_catchup: the newest lines are kept."""
        budget = self.max_catchup
        if cur is not None:
            size = os.fstat(cur.fd).st_size
            self._start(cur, 0, False, budget)
            budget -= min(size, budget)
        for f, offset, skip in reversed(old):
            unread = max(0, os.fstat(f.fd).st_size - offset)
            self._start(f, offset, skip, budget)
            budget -= min(unread, budget)
            f.retire_at = self._clock()  # finished: no waiting for more lines
        self._retired += [f for f, _, _ in old]

    def _start(self, f: _OpenFile, offset: int, skip: bool, budget: int) -> None:
        """Read `f` from `offset`, but at most `budget` bytes of what is there now."""
        size = os.fstat(f.fd).st_size
        f.fp = fingerprint(f.fd)  # now: a copytruncate from here on is told by it
        if size - offset > budget:
            start = self._line_start_after(f, size - budget)
            skip = start is None
            start = size - budget if start is None else start
            f.cut_bytes, f.cut_until = start - offset, size
            log.warning(
                "%s: %d bytes were written while they could not be read; reading only "
                "the last %d (max_catchup)",
                f.name,
                size - offset,
                size - start,
            )
            offset = start
        f.offset, f.skip = offset, skip

    @staticmethod
    def _line_start_after(f: _OpenFile, pos: int) -> int | None:
        """The first line start at or after `pos`; None if the line there is over-long."""
        head = os.pread(f.fd, MAX_LINE + 1, pos - 1)
        newline = head.find(b"\n")
        return pos + newline if newline >= 0 else None

    @staticmethod
    def _line_start_before(f: _OpenFile, size: int) -> int:
        """Where the last (maybe still incomplete) line of the first `size` bytes starts."""
        tail = os.pread(f.fd, MAX_LINE, max(0, size - MAX_LINE))
        newline = tail.rfind(b"\n")
        return size if newline < 0 and size > MAX_LINE else size - len(tail) + newline + 1

    # -- reading ------------------------------------------------------------------------
    def _leads_here(self, f: _OpenFile) -> bool:
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError:
            return True  # cannot tell now; keep reading what we have
        return (st.st_dev, st.st_ino) == (f.dev, f.ino)

    def _read_retired(self) -> Chunk | None:
        for old in list(self._retired):
            expired = self._clock() >= (old.retire_at or 0)
            chunk = self._next(old, final=expired)
            if chunk is not None:
                return chunk
            if expired:
                self._retired.remove(old)
                os.close(old.fd)
        return None

    def _next(self, f: _OpenFile, final: bool) -> Chunk | None:
        """The complete lines after `f.offset`; with `final`, a last line without newline too."""
        buf = os.pread(f.fd, READ_SIZE, f.offset)
        data, used, skip = complete_lines(buf, f.skip, final)
        if not used:
            return None
        note = f.cut_bytes if f.offset < f.cut_until else 0
        return Chunk(data, f.name, f.offset + used, skip, note, f)


def complete_lines(buf: bytes, skip: bool, final: bool) -> tuple[bytes, int, bool]:
    """(lines, bytes used, skip after) from the start of `buf`: the complete lines, an
    over-long line cut to its head (its rest skipped, `skip`), with `final` the last line too."""
    start = 0
    if skip:
        newline = buf.find(b"\n")
        if newline < 0:  # all of it still belongs to the over-long line
            return b"", len(buf), True
        start = newline + 1
    whole = buf.rfind(b"\n") + 1
    if whole <= start:
        whole = start
    data = buf[start:whole]
    rest = len(buf) - whole
    if rest > MAX_LINE:  # a line too long to keep: its head now, the rest is dropped
        return data + buf[whole : whole + MAX_LINE + 1] + b"\n", len(buf), True
    if final and rest:  # the file is finished: its last line gets no newline any more
        return data + buf[whole:] + b"\n", len(buf), False
    return data, whole, False
