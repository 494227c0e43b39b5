"""What flows from the sources to the queue: events and their identity."""

from __future__ import annotations

import enum
import math
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
    id: str | None = None  # set by `notifier send`: a hand-over retried after a crash counts once

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
            "id": self.id,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        """An event from JSON (`notifier send`, the inbox); ValueError/TypeError/KeyError if it
        is not one. Text is made safe to store and mail (see `clean_text`)."""
        state = str(d.get("state", EVENT))
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, got {state!r}")
        count = d.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a whole number of at least 1, got {count!r}")
        details = d.get("details") or {}
        if not isinstance(details, dict):
            raise ValueError(f"details must be an object, got {type(details).__name__}")
        first = d.get("first_time")
        event_id = d.get("id")
        if event_id is not None and (not isinstance(event_id, str) or not 0 < len(event_id) <= 100):
            raise ValueError(f"id must be text of 1 to 100 characters, got {event_id!r:.120}")
        event = cls(
            source=str(d["source"]),
            check=str(d["check"]),
            key=str(d.get("key", "")),
            severity=Severity.parse(str(d.get("severity", "warning"))),
            state=state,
            summary=str(d.get("summary", "")),
            details=details,
            time=_timestamp(d.get("time") or 0.0, "time"),
            host=str(d.get("host", "")),
            count=count,
            first_time=None if first is None else _timestamp(first, "first_time"),
            id=event_id,
        )
        event.clean()
        return event

    def clean(self) -> None:
        """Make every text safe to store and mail: lone surrogates (from bytes that were not
        UTF-8) would make SQLite and the mail encoder raise."""
        for name in ("source", "check", "key", "summary", "host"):
            setattr(self, name, clean_text(getattr(self, name)))
        self.details = _clean_value(self.details)


def _timestamp(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{name} must be a number of seconds, got {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{name} must be a finite, positive number of seconds, got {value!r}")
    return seconds


def clean_text(text: str) -> str:
    """`text` as valid UTF-8: an undecodable byte (a surrogate escape) becomes U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:  # a surrogate that was never a byte
            return text.encode("utf-8", "replace").decode("utf-8")


def _clean_value(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _clean_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_value(v) for v in value]
    return value
