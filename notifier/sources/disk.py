"""Disk usage: space and inodes of mounted filesystems, mounts that vanish, statfs that hangs.

Every statfs runs in a helper thread with a deadline, so a dead NFS server
costs one alert, not the daemon. Thresholds clear only `margin` points below
where they fired (hysteresis), so a disk hovering at 80% does not flap.
"""

from __future__ import annotations

import fnmatch
import os
from typing import Any

from notifier import schema, units
from notifier.events import Severity
from notifier.sources._mounts import (
    NETWORK_FSTYPES,
    REAL_FSTYPES,
    Mount,
    StatfsPool,
    current_mounts,
)
from notifier.sources.base import PERIODIC_FIELDS, Observation, PeriodicSource


class MountSelection(schema.Field):
    """`all`, or a list of mount points and globs (`/srv`, `/mnt/*`)."""

    def convert(self, value: Any, path: str, line: int | None, errors: schema.Errors) -> Any:
        if value == "all":
            return "all"
        items = schema.List(item=schema.Str(), min_items=1).convert(value, path, line, errors)
        if items is schema.INVALID:
            return items
        for item in items:
            if not item.startswith("/"):
                raise ValueError(f"must be `all` or absolute mount points or globs, got {item!r}")
        return [item if _is_glob(item) else os.path.normpath(item) for item in items]


def _check_entry(conf: dict[str, Any]) -> dict[str, Any]:
    """Refuse thresholds that contradict each other."""
    if conf["warning"] > conf["critical"]:
        raise ValueError(
            f"warning ({conf['warning']:g}%) must not be above critical ({conf['critical']:g}%)"
        )
    inodes = conf["inodes"]
    if inodes["warning"] > inodes["critical"]:
        raise ValueError(
            f"inodes.warning ({inodes['warning']:g}%) must not be above "
            f"inodes.critical ({inodes['critical']:g}%)"
        )
    low, very_low = conf["free_below"], conf["free_below_critical"]
    if low is not None and very_low is not None and very_low > low:
        raise ValueError("free_below_critical must not be larger than free_below")
    if conf["statfs_timeout"] >= conf["timeout"]:
        raise ValueError(
            f"statfs_timeout ({units.format_duration(conf['statfs_timeout'])}) must be shorter "
            f"than timeout ({units.format_duration(conf['timeout'])})"
        )
    return conf


ENTRY = schema.Map(
    description="Space and inodes of mounted filesystems.",
    check=_check_entry,
    fields={
        **PERIODIC_FIELDS,
        "every": schema.Duration(
            description="How often to check.", default=300.0, example="5m", min=1
        ),
        "mounts": MountSelection(
            description="`all` (every real filesystem, see fstypes), or a list of mount points "
            "and globs. A listed mount point that is not mounted is a critical alert.",
            default="all",
            example=["/", "/srv/*"],
        ),
        "fstypes": schema.List(
            description="Filesystem types that `all` and globs select. Default: real "
            "filesystems (" + ", ".join(REAL_FSTYPES) + ").",
            item=schema.Str(),
            default=lambda: list(REAL_FSTYPES),
            example=["ext4", "xfs", "zfs", "nfs4"],
        ),
        "exclude": schema.List(
            description="Mount points (globs) never checked.",
            item=schema.Str(),
            default=list,
            example=["/boot/efi", "/snap/*"],
        ),
        "warning": schema.Percent(
            description="Warn when this much of the space is used.", default=80.0, example="80%"
        ),
        "critical": schema.Percent(
            description="Critical when this much of the space is used.", default=90.0, example="90%"
        ),
        "free_below": schema.Size(
            description="Also warn when less than this is free.", example="10GiB"
        ),
        "free_below_critical": schema.Size(
            description="Critical when less than this is free.", example="2GiB"
        ),
        "inodes": schema.Map(
            description="Thresholds for inodes used (file systems without fixed inodes, like "
            "btrfs, are skipped).",
            fields={
                "warning": schema.Percent(
                    description="Warn at this inode usage.", default=90.0, example="90%"
                ),
                "critical": schema.Percent(
                    description="Critical at this inode usage.", default=95.0, example="95%"
                ),
            },
        ),
        "margin": schema.Percent(
            description="Hysteresis in percentage points: an alert at 80% clears only below 77%. "
            "For free_below it is taken as a share of the disk size.",
            default=3.0,
            example="3%",
        ),
        "statfs_timeout": schema.Duration(
            description="A filesystem that does not answer statfs within this (a hung NFS or "
            "CIFS server) is reported; the other mounts are still checked.",
            default=10.0,
            example="10s",
            min=0.1,
        ),
    },
)


def graded(
    value: float,
    limits: list[tuple[Severity, float | None]],
    previous: Severity | None,
    margin: float,
    above: bool = True,
) -> Severity | None:
    """The severity `value` deserves, holding `previous` until value is `margin` past its limit.

    `above`: a limit is crossed when value >= limit (percent used); otherwise when
    value < limit (free space).
    """

    def level(slack: float) -> Severity | None:
        worst = None
        for severity, limit in limits:
            if limit is None:
                continue
            crossed = value >= limit - slack if above else value < limit + slack
            if crossed and (worst is None or severity > worst):
                worst = severity
        return worst

    raw = level(0.0)
    if previous is None:
        return raw
    held = level(margin)
    held = min(held, previous) if held is not None else None
    if raw is None:
        return held
    return raw if held is None else max(raw, held)


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


class DiskSource(PeriodicSource):
    """Space, inodes and presence of the selected mounts."""

    key = "disk"
    entry = ENTRY

    def __init__(self, conf: dict[str, Any], index: int, ctx: Any) -> None:
        super().__init__(conf, index, ctx)
        self.statfs = StatfsPool()
        # Mounts seen, to notice when one disappears; kept in the spool so a mount that
        # vanished while the daemon was down is still missed (and resolved when back).
        self._known_key = f"disk:{self.name}:known"
        saved = ctx.position(self._known_key) or {}
        self._known: dict[str, Mount] = {
            p: Mount(p, d, t) for p, (d, t) in saved.items() if isinstance(p, str)
        }
        self._levels: dict[tuple[str, str], Severity | None] = {}  # for hysteresis
        self._last_used: dict[str, tuple[float, int]] = {}  # for the trend

    def select(self, mounts: dict[str, Mount]) -> tuple[dict[str, Mount], set[str]]:
        """The mounts to check, and the listed mount points that must exist."""
        wanted = self.conf["mounts"]
        patterns = ["*"] if wanted == "all" else [w for w in wanted if _is_glob(w)]
        required = set() if wanted == "all" else {w for w in wanted if not _is_glob(w)}
        fstypes = set(self.conf["fstypes"])
        chosen: dict[str, Mount] = {}
        by_device: dict[tuple[str, str], str] = {}
        # Shortest first, and mounts already known before new ones, so a deduplicated
        # filesystem keeps the key it was reported under.
        for point in sorted(mounts, key=lambda p: (p not in self._known, len(p), p)):
            mount = mounts[point]
            if any(fnmatch.fnmatchcase(point, x) for x in self.conf["exclude"]):
                continue
            if point in required:
                chosen[point] = mount
                continue
            if mount.fstype not in fstypes or not any(
                fnmatch.fnmatchcase(point, p) for p in patterns
            ):
                continue
            # Bind mounts and btrfs subvolumes show one filesystem many times: report it once.
            if mount.device.startswith("/") or ":" in mount.device:
                ident = (mount.device, mount.fstype)
                if ident in by_device:
                    continue
                by_device[ident] = point
            chosen[point] = mount
        return chosen, required

    def check(self) -> list[Observation]:
        mounts = current_mounts()
        chosen, required = self.select(mounts)
        if any(self._known.get(p) != m for p, m in chosen.items()):
            self._known.update(chosen)
            known = {p: [m.device, m.fstype] for p, m in self._known.items()}
            self.ctx.post([], positions={self._known_key: known})
        observations = self._presence(mounts, required)
        results = self.statfs.run(sorted(chosen), self.conf["statfs_timeout"])
        for point, result in results.items():
            mount = chosen[point]
            if isinstance(result, TimeoutError):
                waited = _seconds(result.args[0])
                if mount.fstype in NETWORK_FSTYPES:
                    why = f"{mount.fstype} server not responding?"
                else:
                    why = "filesystem not responding (hung FUSE daemon or failing disk?)"
                observations.append(Observation(
                    "statfs", point, Severity.CRITICAL,
                    f"{point}: statfs timed out after {waited}: {why}",
                    {"mount": point, "device": mount.device, "fstype": mount.fstype,
                     "error": f"no answer for {waited}"},
                ))  # fmt: skip
            elif isinstance(result, OSError):
                observations.append(Observation(
                    "statfs", point, Severity.CRITICAL,
                    f"{point}: statfs failed: {result.strerror or result}",
                    {"mount": point, "device": mount.device, "fstype": mount.fstype,
                     "error": str(result)},
                ))  # fmt: skip
            else:
                observations.append(
                    Observation("statfs", point, None, f"{point} answers statfs", {"mount": point})
                )
                observations.extend(self._usage(mount, result))
        return observations

    def _presence(self, mounts: dict[str, Mount], required: set[str]) -> list[Observation]:
        """`missing` for every mount seen or listed; a gone mount's statfs alert is moot."""
        out = []
        for point in sorted(set(self._known) | required):
            if point in mounts:
                out.append(
                    Observation("missing", point, None, f"{point} is mounted", {"mount": point})
                )
                continue
            out.append(Observation("statfs", point, None, f"{point} is not mounted",
                                   {"mount": point}))  # fmt: skip
            was = self._known.get(point)
            if was is None:
                summary = f"{point} is not mounted (nothing is mounted there)"
                details = {"mount": point}
            else:
                summary = f"{point} is not mounted any more (was {was.fstype} from {was.device})"
                details = {"mount": point, "device": was.device, "fstype": was.fstype}
            out.append(Observation("missing", point, Severity.CRITICAL, summary, details))
        return out

    def _usage(self, mount: Mount, st: os.statvfs_result) -> list[Observation]:
        point = mount.point
        total = st.f_blocks * st.f_frsize
        avail = st.f_bavail * st.f_frsize
        used = total - st.f_bfree * st.f_frsize
        # As df computes Use%: space reserved for root counts neither as used nor as available.
        pct = 100.0 * used / (used + avail) if used + avail > 0 else 0.0
        c = self.conf
        by_pct = graded(
            pct,
            [(Severity.WARNING, c["warning"]), (Severity.CRITICAL, c["critical"])],
            self._levels.get(("pct", point)),
            c["margin"],
        )
        margin_bytes = total * c["margin"] / 100.0
        by_free = graded(
            avail,
            [(Severity.WARNING, c["free_below"]), (Severity.CRITICAL, c["free_below_critical"])],
            self._levels.get(("free", point)),
            margin_bytes,
            above=False,
        )
        self._levels[("pct", point)] = by_pct
        self._levels[("free", point)] = by_free
        severity = _worst(by_pct, by_free)
        details: dict[str, Any] = {
            "mount": point, "device": mount.device, "fstype": mount.fstype,
            "total": units.format_size(total), "used": units.format_size(used),
            "free": units.format_size(avail), "percent": round(pct, 1),
            "total_bytes": total, "used_bytes": used, "free_bytes": avail,
        }  # fmt: skip
        details.update(self._trend(point, used, avail))
        summary = f"{point} is {pct:.1f}% full: {details['free']} free of {details['total']}"
        if severity is not None:
            threshold = self._threshold_text(pct, avail, by_pct, by_free)
            details["threshold"] = threshold
            summary += f" ({threshold})"
            if "trend" in details:
                summary += f", {details['trend']}"
        observations = [Observation("space", point, severity, summary, details)]
        inodes = self._inodes(mount, st)
        if inodes is not None:
            observations.append(inodes)
        return observations

    def _threshold_text(
        self, pct: float, avail: int, by_pct: Severity | None, by_free: Severity | None
    ) -> str:
        c = self.conf
        parts = []
        if by_pct is not None:
            limit = c["critical"] if by_pct is Severity.CRITICAL else c["warning"]
            held = "" if pct >= limit else f", clears below {limit - c['margin']:g}%"
            parts.append(f"{by_pct} at {limit:g}%{held}")
        if by_free is not None:
            key = "free_below_critical" if by_free is Severity.CRITICAL else "free_below"
            parts.append(f"{by_free} below {units.format_size(c[key])} free")
        return "; ".join(parts)

    def _trend(self, point: str, used: int, avail: int) -> dict[str, Any]:
        now = self.ctx.now()
        last = self._last_used.get(point)
        self._last_used[point] = (now, used)
        if last is None or now <= last[0]:
            return {}
        elapsed = now - last[0]
        delta = used - last[1]
        sign = "+" if delta >= 0 else "-"
        out: dict[str, Any] = {
            "trend": f"{sign}{units.format_size(abs(delta))} since "
            f"{units.format_duration(elapsed)} ago",
            "growth_bytes": delta,
        }
        if delta > 0:
            seconds_left = avail / (delta / elapsed)
            out["full_in"] = f"~{units.format_duration(seconds_left)}"
            out["trend"] += f", full in ~{units.format_duration(seconds_left)}"
        return out

    def _inodes(self, mount: Mount, st: os.statvfs_result) -> Observation | None:
        if st.f_files == 0:  # btrfs, vfat and others have no fixed inode table
            return None
        point = mount.point
        used = st.f_files - st.f_ffree
        pct = 100.0 * used / st.f_files
        limits = self.conf["inodes"]
        severity = graded(
            pct,
            [(Severity.WARNING, limits["warning"]), (Severity.CRITICAL, limits["critical"])],
            self._levels.get(("inodes", point)),
            self.conf["margin"],
        )
        self._levels[("inodes", point)] = severity
        details = {
            "mount": point,
            "device": mount.device,
            "fstype": mount.fstype,
            "inodes_total": st.f_files,
            "inodes_used": used,
            "inodes_free": st.f_ffree,
            "inodes_percent": round(pct, 1),
        }
        summary = f"{point} uses {pct:.1f}% of its inodes: {st.f_ffree:,} free of {st.f_files:,}"
        if severity is not None:
            limit = limits["critical"] if severity is Severity.CRITICAL else limits["warning"]
            details["threshold"] = f"{severity} at {limit:g}%"
            summary += f" ({details['threshold']}); many small files?"
        return Observation("inodes", point, severity, summary, details)


def _seconds(seconds: float) -> str:
    """`0.5s`, `10s`, `5m 10s`: sub-second timeouts stay readable."""
    if seconds < 9.95:
        return f"{seconds:.1f}".rstrip("0").rstrip(".") + "s"
    return units.format_duration(seconds)


def _worst(a: Severity | None, b: Severity | None) -> Severity | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


SOURCE = DiskSource
