"""What flows from the sources to the queue: events and their identity."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Severity(enum.IntEnum):
    """How bad it is; ordered so that max() gives the worst."""

    INFO = 0
    WARNING = 1
    CRITICAL = 2

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"must be one of info, warning, critical, got {text!r}") from None

    def __str__(self) -> str:
        return self.name.lower()


# What an event says about its identity.
PROBLEM = "problem"  # a stateful check is failing (again, or worse)
RESOLVED = "resolved"  # a stateful check is fine again
EVENT = "event"  # a one-shot happening: a log line, `notifier send`
STATES = (PROBLEM, RESOLVED, EVENT)


@dataclass(slots=True)
class Event:
    """One observation. (source, check, key) is the alert's identity.

    `count` lets a source hand over many identical one-shot events at once
    (a storm of the same log line costs one object, not a million).
    """

    source: str
    check: str
    key: str
    severity: Severity
    state: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    time: float = 0.0
    host: str = ""
    count: int = 1
    first_time: float | None = None  # earliest of `count` folded events; default `time`

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.source, self.check, self.key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "check": self.check,
            "key": self.key,
            "severity": str(self.severity),
            "state": self.state,
            "summary": self.summary,
            "details": self.details,
            "time": self.time,
            "host": self.host,
            "count": self.count,
            "first_time": self.first_time,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        return cls(
            source=str(d["source"]),
            check=str(d["check"]),
            key=str(d.get("key", "")),
            severity=Severity.parse(str(d.get("severity", "warning"))),
            state=str(d.get("state", EVENT)),
            summary=str(d.get("summary", "")),
            details=dict(d.get("details") or {}),
            time=float(d.get("time") or 0.0),
            host=str(d.get("host", "")),
            count=int(d.get("count", 1)),
            first_time=d.get("first_time"),
        )
