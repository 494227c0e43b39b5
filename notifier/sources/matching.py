"""The rule engine: a RuleSet classifies whole chunks of lines with few calls into RE2,
and an EventBatch folds the matches into counted events (a storm costs counters, not objects).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import chain, compress
from operator import not_
from typing import Any

import re2

from notifier.events import EVENT, Event
from notifier.sources.rules import (  # the rules themselves, and the engine's shared bits
    _BLOCKS,
    _CONTROL,
    _NAMED_GROUP,
    _UNANCHORED,
    MAX_LINE,
    SLOTS,
    Rule,
    Template,
    _options,
    default_summary,
    line_text,
    log,
)

_FAILED_TEMPLATES: set[str] = set()  # rule templates already reported as failing


class RuleSet:
    """Rules applied together to chunks of lines (bytes, one line per `\\n`).

    Which rules match which line is told by an RE2 Set of SLOTS x patterns, anchored at the
    start of a block of SLOTS lines: pattern k of slot j matches when line j of the block
    matches pattern k. One call classifies SLOTS lines; calls, not bytes, are what cost.
    Where few lines match, a combined pattern first picks out the lines any rule may match,
    so the rest costs only RE2's DFA, no Python.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        patterns = [_for_search(r.pattern) for r in self.rules]
        self._ignored_by: dict[int, int] = {}  # pattern index of an ignore pattern -> its rule
        for r, rule in enumerate(self.rules):
            for pattern in rule.ignore:
                self._ignored_by[len(patterns)] = r
                patterns.append(_for_search(pattern))
        self.width = width = len(patterns)
        self._verdicts: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._dense = False  # most lines match: classify them all, the finder would only cost
        self._slot_of = tuple(i // width for i in range(SLOTS * width)).__getitem__
        self._ignores = frozenset(i for i in range(SLOTS * width) if i % width in self._ignored_by)
        self._of_rule = [
            frozenset(j * width + r for j in range(SLOTS)) for r in range(len(self.rules))
        ]
        self._classify: Any = lambda text: []  # no rules: nothing matches
        if not self.rules:
            return
        alternatives = "|".join(f"(?:{p})" for p in patterns[: len(self.rules)])
        # The next line any rule may match, whole (never_nl keeps every match in its line).
        finder = re2.compile(f"(?m)^[^\\n]*?(?:{alternatives})[^\\n]*", _options(False))
        self._find = finder._regexp.Match
        slots = re2.Set.MatchSet(_options(False))
        for j in range(SLOTS):
            skip = "(?:[^\\n]*$\\C)" * j
            for pattern in patterns:
                slots.Add(f"(?m){skip}[^\\n]*?(?:{pattern})")
        try:
            slots.Compile()
        except re2.error:
            raise ValueError("RE2 cannot combine these rules (too many or too big)") from None
        self._classify = slots._set.Match

    def blocks(self, data: bytes) -> tuple[list[bytes], set[int]]:
        """`data` as blocks of up to SLOTS lines to classify: all its lines where many match,
        else those some rule may match; lines cut to MAX_LINE, the indexes of those cut."""
        data = _utf8(data)
        if not data or not self.rules:
            return [], set()
        if data[-1] != 10:
            data += b"\n"
        if self._dense:
            blocks = _BLOCKS.findall(data)
        else:
            lines = self._candidates(data)
            blocks = [b"\n".join(lines[i : i + SLOTS]) for i in range(0, len(lines), SLOTS)]
        cut: set[int] = set()
        if blocks and max(map(len, blocks)) > MAX_LINE:  # rare: some line may be over-long
            for b in compress(range(len(blocks)), map(MAX_LINE.__lt__, map(len, blocks))):
                lines = blocks[b].split(b"\n")
                cut.update(b * SLOTS + j for j, line in enumerate(lines) if len(line) > MAX_LINE)
                blocks[b] = b"\n".join(line[:MAX_LINE] for line in lines)
        return blocks, cut

    def _candidates(self, data: bytes) -> list[bytes]:
        """The lines of `data` (ending in a newline) some rule may match: one call each."""
        lines: list[bytes] = []
        find, add, pos, last = self._find, lines.append, 0, len(data) - 1
        while pos <= last:
            start, end = find(_UNANCHORED, data, pos, last)[0]
            if start < 0:
                break
            add(data[start:end])  # the whole line: the pattern runs from ^ to the newline
            pos = end + 1
        return lines

    def classify(self, blocks: list[bytes]) -> list[list[int]]:
        """Per block, the indexes slot * width + pattern that matched."""
        return list(map(self._classify, blocks))

    def verdict(self, found: Sequence[int]) -> tuple[int, ...]:
        """The rules that count for a line, from its patterns' indexes (ignore applied)."""
        key = tuple(found)
        got = self._verdicts.get(key)
        if got is None:
            ignored = {self._ignored_by[i] for i in key if i in self._ignored_by}
            got = tuple(sorted(i for i in key if i < len(self.rules) and i not in ignored))
            self._verdicts[key] = got
        return got

    def _by_line(
        self, block: bytes, found: list[int]
    ) -> Iterator[tuple[int, bytes, tuple[int, ...]]]:
        """(slot, line, verdict) of each line of a block the Set matched."""
        per_slot: dict[int, list[int]] = {}
        for i in sorted(found):
            per_slot.setdefault(i // self.width, []).append(i % self.width)
        lines = block.split(b"\n")
        for slot, patterns in per_slot.items():
            yield slot, lines[slot], self.verdict(patterns)

    def _seen(self, matched: int, lines: int) -> None:
        # Hysteresis, so a log near the threshold does not flip at every chunk.
        self._dense = matched > lines * (0.05 if self._dense else 0.15)

    def hits(self, data: bytes) -> Iterator[tuple[Rule, bytes, bool]]:
        """(rule, line, cut) for every line of `data` and every rule that matches it."""
        blocks, cut = self.blocks(data)
        matched = 0
        for b, found in enumerate(self.classify(blocks)):
            for slot, line, verdict in self._by_line(blocks[b], found) if found else ():
                matched += bool(verdict)
                for r in verdict:
                    yield self.rules[r], line, b * SLOTS + slot in cut
        self._seen(matched, data.count(b"\n"))

    def match_line(self, line: str | bytes) -> list[Rule]:
        """The rules that match one line (a journal message, say)."""
        raw = line.encode("utf-8", "replace") if isinstance(line, str) else line
        if not self.rules:
            return []
        found = self._classify(_utf8(raw[:MAX_LINE]))  # one line: only slot 0 can match
        return [self.rules[r] for r in self.verdict(found)] if found else []

    def count(self, data: bytes, samples: Collection[int] = (), keep: int = 3) -> ChunkCount:
        """Lines, matched lines and matches per rule in `data`, and for the rules in `samples`
        their first `keep` lines: `notifier scan`, with no Python per line where it can."""
        total = data.count(b"\n") + (1 if data and data[-1] != 10 else 0)
        blocks, cut = self.blocks(data)
        found = self.classify(blocks)
        plain = found
        if self._ignores and found:  # blocks where an ignore pattern matched: line by line
            plain = list(compress(found, map(self._ignores.isdisjoint, found)))
        hist = Counter(chain.from_iterable(plain))
        width = self.width
        counts = [sum(hist[j * width + r] for j in range(SLOTS)) for r in range(len(self.rules))]
        matched = sum(map(len, map(set, map(partial(map, self._slot_of), plain))))
        if len(plain) < len(found):
            for b in compress(range(len(found)), map(not_, map(self._ignores.isdisjoint, found))):
                for _, _, verdict in self._by_line(blocks[b], found[b]):
                    matched += bool(verdict)
                    for r in verdict:
                        counts[r] += 1
        firsts: dict[int, list[tuple[bytes, bool]]] = {}
        for r in samples:
            if not counts[r]:
                continue
            firsts[r] = []
            of_rule = self._of_rule[r]
            for b in compress(range(len(found)), map(not_, map(of_rule.isdisjoint, found))):
                firsts[r] += [
                    (line, b * SLOTS + slot in cut)
                    for slot, line, v in self._by_line(blocks[b], found[b])
                    if r in v
                ]
                if len(firsts[r]) >= keep:
                    break
            firsts[r] = firsts[r][:keep]
        self._seen(matched, total)
        return ChunkCount(total, matched, counts, firsts)


@dataclass
class ChunkCount:
    """What `RuleSet.count` found in one chunk."""

    lines: int
    matched: int
    counts: list[int]
    samples: dict[int, list[tuple[bytes, bool]]]


def _utf8(data: bytes) -> bytes:
    """`data` as valid UTF-8, invalid bytes replaced: RE2 classes like [^\\n] match characters,
    so one stray byte would hide the rest of its line from every rule."""
    return data if data.isascii() else data.decode("utf-8", "replace").encode("utf-8")


def _for_search(pattern: str) -> str:
    """`pattern` for finding lines in a chunk: named groups made plain (RE2's never_capture
    keeps them, and capturing is slow), and \\A, \\z (the line's ends) as ^ and $."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        named = None if in_class else _NAMED_GROUP.match(pattern, i)
        if c == "\\":
            escape = pattern[i : i + 2]
            out.append(escape if in_class else {"\\A": "^", "\\z": "$"}.get(escape, escape))
            i += 2
        elif named:
            out.append("(?:")
            i = named.end()
        elif c == "[" and not in_class:
            in_class = True
            close = i + 1 + pattern.startswith("^", i + 1)
            close += pattern.startswith("]", close)  # a ] first in a class is a literal
            out.append(pattern[i:close])
            i = close
        else:
            in_class = in_class and c != "]"
            out.append(c)
            i += 1
    return "".join(out)


_MISSING = object()  # a value the key template names but the line and context do not have


# -- hits into events ------------------------------------------------------------------------
class EventBatch:
    """Folds the hits of one read into one Event per (rule, key), counting repeats, so a storm
    of a million lines costs a counter per identity, not a million objects."""

    def __init__(
        self, source: str, host: str, now: float, note: Mapping[str, Any] | None = None
    ) -> None:
        self.source, self.host, self.now = source, host, now
        self.note = dict(note or {})  # added to every event's details
        self._events: dict[tuple[str, str], Event] = {}
        self._last: dict[tuple[str, str], tuple[bytes, bool]] = {}
        self._memo: dict[tuple[Any, ...], tuple[str, str]] = {}  # key template values -> ident

    def add(
        self,
        rule: Rule,
        raw: bytes | str,
        cut: bool = False,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        """One line `rule` matched; `context` (path, unit, …) goes into details and templates."""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "replace")
        constant = rule.key.constant
        if constant is not None:
            ident = (rule.name, constant)
            event = self._events.get(ident)
            if event is not None:  # the storm path: no group extraction, no rendering
                event.count += 1
                self._last[ident] = (raw, cut)
                return
        raw = _utf8(raw[:MAX_LINE])
        groups = rule.groups(raw)
        if groups is None:
            return
        # The key depends only on the values its template names: the same values, the same
        # identity, so a repeat costs a lookup instead of a render (the storm path for keys
        # made of groups). Values as below: context over groups, `rule` over both.
        names = rule.key.variables
        memo = None
        if constant is None and "line" not in names:
            ctx = context or {}
            memo = (rule.name,) + tuple(
                rule.name if n == "rule" else ctx[n] if n in ctx else groups.get(n, _MISSING)
                for n in names
            )
            try:
                known = self._memo.get(memo)
            except TypeError:  # a context value that is not hashable: no shortcut
                memo = known = None
            if known is not None and known in self._events:
                self._events[known].count += 1
                self._last[known] = (raw, cut)
                return
        text = line_text(raw, cut)
        values = {**groups, **(context or {}), "line": text, "rule": rule.name}
        key = constant if constant is not None else self._render(rule, rule.key, values, "")
        key = key.translate(_CONTROL)  # an identity shown in mails: no raw control characters
        ident = (rule.name, key)
        event = self._events.get(ident)
        if memo is not None:
            self._memo[memo] = ident
        if event is not None:
            event.count += 1
            self._last[ident] = (raw, cut)
            return
        summary = default_summary(text)
        if rule.summary is not None:  # one line of text, whatever the groups held
            summary = default_summary(self._render(rule, rule.summary, values, summary))
        self._events[ident] = Event(
            source=self.source,
            check=rule.name,
            key=key,
            severity=rule.severity,
            state=EVENT,
            summary=summary,
            details={**values, **self.note},
            time=self.now,
            host=self.host,
            count=1,
            first_time=self.now,
        )

    @staticmethod
    def _render(rule: Rule, template: Template, values: Mapping[str, str], fallback: str) -> str:
        try:
            return template.render(values)
        except Exception as exc:  # a template failing on one odd line must not stop the source
            if template.text not in _FAILED_TEMPLATES:  # once, not once per line of a storm
                _FAILED_TEMPLATES.add(template.text)
                log.warning("rule %s: template %r failed (%s: %s); using %r instead", rule.name,
                            template.text, type(exc).__name__, exc, fallback)  # fmt: skip
            return fallback

    def events(self) -> list[Event]:
        """The folded events, in the order their first line came."""
        for ident, (raw, cut) in self._last.items():
            self._events[ident].details["last_line"] = line_text(raw, cut)
        return list(self._events.values())

    def __len__(self) -> int:
        return len(self._events)
