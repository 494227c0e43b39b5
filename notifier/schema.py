"""A small declarative schema: every option with its description, default and check.

Validation collects every problem at once, each with its line and key path,
so a sysadmin fixes the whole file in one go (borgmatic's habit, plus lines).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from notifier import units
from notifier.yamlfile import LineDict, LineList

REQUIRED = object()  # default for options that must be given
INVALID = object()  # a value that failed validation (its error is recorded)


@dataclass
class Problem:
    line: int | None
    path: str
    message: str

    def format(self, filename: str) -> str:
        where = f"{filename}:{self.line}" if self.line else filename
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class Errors:
    """Collects problems during one validation."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, line: int | None, path: str, message: str) -> None:
        self.problems.append(Problem(line, path, message))

    def __bool__(self) -> bool:
        return bool(self.problems)


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


@dataclass
class Field:
    """One option. `check` converts or refuses a value (raise ValueError with the reason)."""

    description: str = ""
    default: Any = None
    example: Any = None
    check: Callable[[Any], Any] | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def make_default(self) -> Any:
        return self.default() if callable(self.default) else self.default

    def validate(self, value: Any, path: str, line: int | None, errors: Errors) -> Any:
        try:
            value = self.convert(value, path, line, errors)
            if value is not INVALID and self.check is not None:
                value = self.check(value)
        except ValueError as exc:
            errors.add(line, path, str(exc))
            return INVALID
        return value

    def convert(self, value: Any, path: str, line: int | None, errors: Errors) -> Any:
        return value


@dataclass
class Str(Field):
    choices: tuple[str, ...] | None = None

    def convert(self, value, path, line, errors):
        if isinstance(value, bool) or value is None or isinstance(value, dict | list):
            raise ValueError(f"must be text, got {_describe(value)}")
        value = str(value)
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}, got {value!r}")
        if not value.strip():
            raise ValueError("must not be empty")
        return value


@dataclass
class Int(Field):
    min: int | None = None
    max: int | None = None

    def convert(self, value, path, line, errors):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number, got {_describe(value)}")
        lo = self.min if self.min is not None else "…"
        hi = self.max if self.max is not None else "…"
        if (self.min is not None and value < self.min) or (
            self.max is not None and value > self.max
        ):
            raise ValueError(f"must be {lo}..{hi}, got {value}")
        return value


@dataclass
class Bool(Field):
    def convert(self, value, path, line, errors):
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {_describe(value)}")
        return value


@dataclass
class Duration(Field):
    min: float = 0.0

    def convert(self, value, path, line, errors):
        seconds = units.parse_duration(value)
        if seconds < self.min:
            raise ValueError(f"must be at least {units.format_duration(self.min)}, got {value!r}")
        return seconds


@dataclass
class Percent(Field):
    def convert(self, value, path, line, errors):
        return units.parse_percent(value)


@dataclass
class Size(Field):
    def convert(self, value, path, line, errors):
        return units.parse_size(value)


@dataclass
class List(Field):
    """A list of `item`; a single value where a list is expected is taken as a list of one."""

    item: Field = field(default_factory=Str)
    min_items: int = 0

    def convert(self, value, path, line, errors):
        if value is None:
            value = []
        if not isinstance(value, list):
            value = LineList([value])
            value.lines = [line or 0]
        lines = getattr(value, "lines", [])
        out = []
        ok = True
        for i, item in enumerate(value):
            item_line = lines[i] if i < len(lines) else line
            got = self.item.validate(item, join(path, i), item_line, errors)
            ok = ok and got is not INVALID
            out.append(got)
        if len(value) < self.min_items:
            raise ValueError(f"needs at least {self.min_items} item(s)")
        return out if ok else INVALID


@dataclass
class Map(Field):
    """A mapping with known keys; unknown keys are errors that suggest the nearest known key.

    `refused` maps a key to the message explaining why it may not be used.
    """

    fields: dict[str, Field] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    def make_default(self) -> Any:
        if self.default is None:  # an absent section is an empty one: its own defaults apply
            return self.convert({}, "", None, Errors())
        return super().make_default()

    def convert(self, value, path, line, errors):
        if value is None:
            value = LineDict()
        if not isinstance(value, dict):
            raise ValueError(f"must be a mapping of options, got {_describe(value)}")
        lines = getattr(value, "lines", {})
        here = getattr(value, "line", None) or line
        out: dict[str, Any] = {}
        ok = True
        for key, raw in value.items():
            key_line = lines.get(key, here)
            key_path = join(path, str(key))
            if key in self.refused:
                errors.add(key_line, key_path, self.refused[key])
                ok = False
                continue
            spec = self.fields.get(key) if isinstance(key, str) else None
            if spec is None:
                import difflib  # only for a config with a mistake: not in the daemon's memory

                near = difflib.get_close_matches(str(key), list(self.fields), n=1, cutoff=0.6)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                known = ", ".join(self.fields)
                errors.add(key_line, key_path, f"unknown option{hint} (known here: {known})")
                ok = False
                continue
            got = spec.validate(raw, key_path, key_line, errors)
            ok = ok and got is not INVALID
            out[key] = got
        for key, spec in self.fields.items():
            if key in out or key in value:
                continue
            if spec.required:  # point at the section's own key (`smtp:`), not its first child
                errors.add(line or here, join(path, key), "is required")
                ok = False
            else:
                out[key] = spec.make_default()
        return out if ok else INVALID


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)
