"""Parsing and printing the units a sysadmin writes: 30s, 4h, 80%, 10GiB."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _scalar(value: object, what: str) -> None:
    """Refuse lists, mappings and the like before `str()`: a YAML alias bomb turned into
    text would take exponential time and memory."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        if isinstance(value, list):
            shown = "a list"
        elif isinstance(value, dict):
            shown = "a mapping"
        else:
            shown = repr(value)[:80]
        raise ValueError(f"must be {what}, got {shown}")


def parse_duration(value: object) -> float:
    """Seconds from `30s`, `5m`, `4h`, `1d`, `250ms`, or a bare number of seconds."""
    _scalar(value, "a duration like 30s, 5m, 4h")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"must be a finite duration like 30s, 5m, 4h, got {value!r}")
        if value < 0:
            raise ValueError(f"must not be negative, got {value!r}")
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"must be a duration like 30s, 5m, 4h, got {value!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]


def format_duration(seconds: float) -> str:
    """`2h 5m`, `45s`: short and readable, for mails and status."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, seconds = divmod(seconds, size)
        if n:
            parts.append(f"{n}{unit}")
    return " ".join(parts[:2])


def parse_percent(value: object) -> float:
    """A percentage from `80%` or `80`; 0..100."""
    _scalar(value, "a percentage like 80%")
    text = str(value).strip().rstrip("%").strip()
    try:
        pct = float(text)
    except ValueError:
        raise ValueError(f"must be a percentage like 80%, got {value!r}") from None
    if not 0 <= pct <= 100:
        raise ValueError(f"must be between 0% and 100%, got {value!r}")
    return pct


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?)B?\s*$", re.IGNORECASE)


def parse_size(value: object) -> int:
    """Bytes from `10GiB`, `500MB`, `1T`, or a bare number of bytes."""
    _scalar(value, "a size like 10GiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative, got {value!r}")
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"must be a size like 10GiB or 500MB, got {value!r}")
    number, prefix, binary = m.groups()
    power = "KMGTP".find(prefix.upper()) + 1 if prefix else 0
    base = 1024 if binary else 1000
    return int(float(number) * base**power)


def format_size(n: float) -> str:
    """`1.5 GiB`: binary units, as df -h prints them."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"
