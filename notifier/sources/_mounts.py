"""The mount table and statfs with a deadline: what the disk source looks at.

statvfs() on a mount whose NFS server is gone blocks in the kernel, for
minutes or forever; here it runs in a helper thread that may be left behind.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from notifier.sources._procfs import mounts

# Filesystems that hold data. Pseudo filesystems (tmpfs, proc, overlay, squashfs...) are left out.
REAL_FSTYPES = (
    "ext2", "ext3", "ext4", "xfs", "btrfs", "bcachefs", "zfs", "f2fs", "jfs", "reiserfs",
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "fuse.glusterfs",
    "vfat", "exfat", "ntfs", "ntfs3", "fuseblk", "hfsplus", "fuse.mergerfs", "fuse.sshfs",
)  # fmt: skip

NETWORK_FSTYPES = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "fuse.glusterfs",
                   "fuse.sshfs"}  # fmt: skip


@dataclass(slots=True)
class Mount:
    """A mounted filesystem as /proc/self/mounts lists it."""

    point: str
    device: str
    fstype: str


def current_mounts() -> dict[str, Mount]:
    """Mounted filesystems by mount point; the last one mounted on a point hides earlier ones."""
    return {point: Mount(point, device, fstype) for device, point, fstype in mounts()}


class StatfsPool:
    """statvfs() in helper threads with a deadline; a call still hung is not started again."""

    def __init__(self, statvfs: Any = os.statvfs) -> None:
        self._statvfs = statvfs
        self._hung: dict[str, tuple[threading.Thread, float]] = {}

    def run(self, points: list[str], timeout: float) -> dict[str, Any]:
        """Per mount point: an os.statvfs_result, an OSError, or TimeoutError (seconds waited)."""
        results: dict[str, Any] = {}
        threads: dict[str, threading.Thread] = {}
        for point in points:
            hung = self._hung.get(point)
            if hung is not None and hung[0].is_alive():
                continue  # a second statfs would hang as well and pile up threads
            self._hung.pop(point, None)
            thread = threading.Thread(
                target=self._call, args=(point, results), name=f"statfs {point}", daemon=True
            )
            thread.start()
            threads[point] = thread
        started = time.monotonic()
        deadline = started + timeout
        for point, thread in threads.items():
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self._hung[point] = (thread, started)
        now = time.monotonic()
        for point in points:
            if point in self._hung:
                results[point] = TimeoutError(now - self._hung[point][1])
        return {point: results[point] for point in points}

    def _call(self, point: str, results: dict[str, Any]) -> None:
        try:
            results[point] = self._statvfs(point)
        except Exception as exc:  # reported on the mount; never kills the check
            results[point] = exc if isinstance(exc, OSError) else OSError(str(exc))
