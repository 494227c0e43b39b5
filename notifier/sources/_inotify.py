"""Linux inotify through libc: one instance, its watches, and its events parsed from os.read.

What the log sources used watchdog for, without its three threads and 17 modules: the caller
decides how to wait (poll `fileno()`) and what an event means.
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import NamedTuple

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# What changes a file or a name in a directory. Not opens and reads: our own would wake us.
DIRECTORY_CHANGES = (
    IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
    | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
)  # fmt: skip
# The watched directory itself is gone from its path (the watch then ends, or follows it away).
SELF_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
READ_SIZE = 64 * 1024  # many events per read; more than one event of the longest name (4 KiB)


class InotifyEvent(NamedTuple):
    wd: int  # -1 for IN_Q_OVERFLOW
    mask: int
    cookie: int
    name: bytes  # empty for events about the watched directory itself


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        for name, args in (
            ("inotify_init1", [ctypes.c_int]),
            ("inotify_add_watch", [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]),
            ("inotify_rm_watch", [ctypes.c_int, ctypes.c_int]),
        ):
            func = getattr(libc, name)  # AttributeError: not Linux, or a libc without inotify
            func.argtypes, func.restype = args, ctypes.c_int
        _libc = libc
    return _libc


def _error(what: str, path: str | None = None) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}", path)


class Inotify:
    """One inotify instance (a file descriptor, non-blocking); OSError when the kernel refuses
    one (EMFILE: fs.inotify.max_user_instances reached; ENOSYS: no inotify)."""

    def __init__(self) -> None:
        try:
            lib = _lib()
        except (OSError, AttributeError) as exc:
            raise OSError(38, f"inotify is not available: {exc}") from None  # ENOSYS
        fd = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise _error("inotify_init1")
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def add_watch(self, path: str, mask: int = DIRECTORY_CHANGES) -> int:
        """The watch descriptor for `path` (the same one again for a path already watched);
        OSError: ENOENT, ENOTDIR with IN_ONLYDIR, ENOSPC (fs.inotify.max_user_watches)."""
        wd = _lib().inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            raise _error("inotify_add_watch", path)
        return wd

    def rm_watch(self, wd: int) -> None:
        """End a watch; a watch the kernel already ended (EINVAL) is not an error."""
        if _lib().inotify_rm_watch(self.fd, wd) < 0 and ctypes.get_errno() != 22:  # EINVAL
            raise _error("inotify_rm_watch")

    def read(self) -> list[InotifyEvent]:
        """The events queued now, in order; [] when there are none (it never blocks)."""
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return []
        return parse_events(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def parse_events(data: bytes) -> list[InotifyEvent]:
    """Events from the bytes of one read(); a truncated tail (never sent by Linux) is dropped."""
    events = []
    offset, end = 0, len(data)
    while offset + _HEADER.size <= end:
        wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        if offset + length > end:
            break
        name = data[offset : offset + length].rstrip(b"\0")
        offset += length
        events.append(InotifyEvent(wd, mask, cookie, name))
    return events
