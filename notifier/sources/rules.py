"""Rules applied to text lines (log files, the journal): RE2 patterns, key and summary templates.

Patterns run with google-re2, in time linear in the text, because the text is written by
whoever can reach sshd. A RuleSet classifies whole chunks of lines with few calls into RE2
(see RuleSet), and only lines that match get per-line work in Python.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, compress
from operator import not_
from typing import Any

import re2

from notifier import schema
from notifier.events import EVENT, Event, Severity

MAX_LINE = 64 * 1024  # longer lines are cut to this many bytes and marked
SLOTS = 8  # lines classified by one RE2 Set call
# Up to SLOTS lines without their last newline; linear (no backtracking), our text only.
_BLOCKS = re.compile(rb"((?:[^\n]*\n){0,%d}[^\n]*)\n" % (SLOTS - 1))
CUT_MARK = "…[cut]"
SUMMARY_MAX = 200
RESERVED = ("line", "rule", "last_line", "catchup_cut_bytes")  # details every event carries

log = logging.getLogger("notifier.sources")
_UNANCHORED = re2._Anchor.UNANCHORED
_FAILED_TEMPLATES: set[str] = set()
# Why RE2 refused a pattern, in words (RE2's own message is terse).
_UNSUPPORTED = (
    ("(?=", "RE2 does not support lookahead (?=...); rewrite without it"),
    (
        "(?!",
        "RE2 does not support negative lookahead (?!...); rewrite without it, or list the "
        "lines to skip under ignore:",
    ),
    ("(?<=", "RE2 does not support lookbehind (?<=...); rewrite without it"),
    (
        "(?<!",
        "RE2 does not support negative lookbehind (?<!...); rewrite without it, or list the "
        "lines to skip under ignore:",
    ),
    ("(?P", "RE2 does not support (?P=name) backreferences; only (?P<name>...) groups"),
    (
        "(?>",
        "RE2 does not support atomic groups (?>...); use a plain group (?:...): RE2 never "
        "backtracks",
    ),
    ("(?(", "RE2 does not support conditionals (?(...)...); use alternatives a|b"),
    ("(?R", "RE2 does not support recursion (?R)"),
    ("(?#", "RE2 does not support comments (?#...); remove them"),
    ("(?x", "RE2 does not support verbose mode (?x); write the pattern without spaces"),
)
_ANY_BYTE = re.compile(r"(?<!\\)(?:\\\\)*\\C")
_NAMED_GROUP = re.compile(r"\(\?P?<\w+>")
_GROUP_NAME = re.compile(r"\(\?P?<([^>=!]*)>")


def _options(capture: bool = True) -> re2.Options:
    opts = re2.Options()
    opts.never_capture = not capture
    opts.never_nl = True  # a match never crosses a line, also in a chunk of many lines
    opts.log_errors = False  # RE2 would print parse errors to stderr; ours say it better
    opts.max_mem = 64 << 20  # room for the DFA of ten sshd-like rules combined
    return opts


def compile_pattern(pattern: str, *, capture: bool = True) -> Any:
    """The compiled RE2 pattern, or ValueError saying why RE2 cannot run it."""
    if _ANY_BYTE.search(pattern):
        raise ValueError(r"\C (any byte) is not allowed: it can cross lines; use . instead")
    try:
        return re2.compile(pattern, _options(capture))
    except re2.error as exc:
        raise ValueError(_explain(exc)) from None


def _explain(exc: Exception) -> str:
    raw = exc.args[0] if exc.args else exc
    reason = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    what = reason.partition(": ")[2]
    if reason.startswith("invalid perl operator"):
        for token, words in _UNSUPPORTED:
            if what.startswith(token):
                return words
        return f"RE2 does not support {what}...; rewrite without it"
    if reason.startswith("invalid escape sequence") and (what[1:].isdigit() or what == r"\g"):
        return f"RE2 does not support backreferences ({what}); rewrite without them"
    if what == r"\Z":
        return r"RE2 does not support \Z; use \z (end of line) or $"
    if reason.startswith("bad repetition operator") and what.endswith("+"):
        return (
            f"RE2 does not support possessive quantifiers ({what}); drop the last +: "
            "RE2 never backtracks"
        )
    return f"invalid regular expression: {reason}"


def check_pattern(pattern: str) -> str:
    """Schema check: the pattern compiles with RE2 and its group names can be template names."""
    compile_pattern(pattern)
    names = _GROUP_NAME.findall(pattern)
    for name in names:
        if not name.isidentifier() or not name.isascii():
            raise ValueError(
                f"group name {name!r} cannot be used in a template: use letters, "
                f"digits and _, starting with a letter"
            )
        if names.count(name) > 1:
            raise ValueError(f"group name {name!r} is used twice")
    return pattern


# -- templates -------------------------------------------------------------------------------
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_FAST_TEMPLATE = re.compile(r"(?:[^{}]|\{\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}\})*\Z")


class Template:
    """A key or summary template. `{{ a }}:{{ b }}` forms are joined directly, per match;
    anything else goes through the mail templates' sandbox: undefined names are errors, and
    loops, repetition and output are bounded."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._jinja: Any = None
        self._parts: list[tuple[str, str | None]] = []
        if _FAST_TEMPLATE.match(text):
            pos = 0
            for m in _PLACEHOLDER.finditer(text):
                self._parts.append((text[pos : m.start()], m.group(1)))
                pos = m.end()
            self._parts.append((text[pos:], None))
            self.variables = frozenset(n for _, n in self._parts if n)
        else:  # imported here: `notifier scan` with plain keys never needs Jinja
            from jinja2 import DictLoader, TemplateSyntaxError, meta

            from notifier.mail.render import make_env

            self._jinja = make_env(DictLoader({"rule": text}), html=False)
            try:
                self.variables = frozenset(meta.find_undeclared_variables(self._jinja.parse(text)))
                self._jinja.get_template("rule")
            except TemplateSyntaxError as exc:
                raise ValueError(
                    f"invalid template: {exc.message} (template line {exc.lineno})"
                ) from None
        # the rendered text when no variable is used: one identity, nothing to render per line
        self.constant = self._parts[0][0] if self._jinja is None and not self.variables else None

    def render(self, values: Mapping[str, str]) -> str:
        """The text for one line, at most MAX_LINE characters."""
        if self._jinja is not None:
            from notifier.mail.render import render_bounded

            return render_bounded(self._jinja, "rule", dict(values))[:MAX_LINE]  # its budgets
        return "".join(lit + values[name] if name else lit for lit, name in self._parts)[:MAX_LINE]


def check_template(text: str) -> str:
    """Schema check: the text is a valid template."""
    Template(text)
    return text


# -- the schema of one rule ------------------------------------------------------------------
def rule_schema(context: Sequence[str] = ("path",)) -> schema.Map:
    """The schema of one rule; `context` names what each line comes with (its file, its unit)."""
    allowed = (*RESERVED[:2], *context)

    def check_rule(rule: dict[str, Any]) -> dict[str, Any]:
        groups = list(compile_pattern(rule["match"]).groupindex)
        for name in groups:
            if name in RESERVED or name in context:
                raise ValueError(
                    f"match: group name {name!r} is taken by the event details "
                    f"({', '.join((*RESERVED, *context))}); rename the group"
                )
        for what in ("key", "summary"):
            if not rule.get(what):
                continue
            unknown = sorted(Template(rule[what]).variables - set(groups) - set(allowed))
            if unknown:
                have = ", ".join(groups) or "none"
                raise ValueError(
                    f"{what} uses {unknown[0]!r}, which match does not capture "
                    f"(groups: {have}; also available: {', '.join(allowed)})"
                )
        return rule

    return schema.Map(
        description="One thing to look for in each line.",
        check=check_rule,
        fields={
            "name": schema.Str(
                description="The rule's name: the alert's check, shown in mails.",
                default=schema.REQUIRED,
                example="ssh-failed-password",
            ),
            "match": schema.Str(
                description="An RE2 regular expression searched in each line; named groups "
                "(?P<name>...) become template variables. No lookaround or backreferences: RE2 "
                "runs in time linear in the line, whoever wrote it.",
                default=schema.REQUIRED,
                check=check_pattern,
                example=r"Failed password for (?:invalid user )?(?P<user>\S+) from (?P<ip>\S+)",
            ),
            "severity": schema.Str(
                description="info, warning or critical.",
                choices=("info", "warning", "critical"),
                default="warning",
                example="warning",
            ),
            "key": schema.Str(
                description="What one alert is about, as a template over the groups: matches with "
                "the same key are counted together. Default: one alert for the whole rule.",
                default="",
                check=check_template,
                example="{{ ip }}",
            ),
            "ignore": schema.List(
                description="Lines that match the rule but also one of these patterns are skipped.",
                item=schema.Str(check=check_pattern),
                default=list,
                example=[r"from 192\.168\.1\."],
            ),
            "summary": schema.Str(
                description="The alert's one-line summary, a template over the groups and line. "
                "Default: the matched line, cut to 200 characters.",
                check=check_template,
                example="SSH login failed for {{ user }} from {{ ip }}",
            ),
        },
    )


def rules_field(context: Sequence[str] = ("path",)) -> schema.List:
    """`rules:` of a source entry: one or more rules, names unique within the entry."""

    def unique(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seen: dict[str, int] = {}
        for i, rule in enumerate(rules):
            if rule["name"] in seen:
                raise ValueError(
                    f"rules[{i}] has the same name {rule['name']!r} as "
                    f"rules[{seen[rule['name']]}]; names identify alerts"
                )
            seen[rule["name"]] = i
        return rules

    return schema.List(
        description="What to look for; each line is checked against every rule.",
        item=rule_schema(context),
        min_items=1,
        default=schema.REQUIRED,
        check=unique,
    )


# -- compiled rules --------------------------------------------------------------------------
def line_text(raw: bytes, cut: bool = False) -> str:
    """A line as text for templates and mails: invalid UTF-8 replaced, a cut line marked."""
    text = raw.decode("utf-8", "replace").rstrip("\r")
    return text + CUT_MARK if cut else text


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F) if c != 0x09}


def default_summary(text: str) -> str:
    """The line as a one-line summary: control characters shown, cut to SUMMARY_MAX."""
    text = text.strip().translate(_CONTROL)
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1] + "…"


@dataclass(eq=False)
class Rule:
    """One validated rule, compiled."""

    name: str
    pattern: str
    severity: Severity
    key: Template
    summary: Template | None = None
    ignore: tuple[str, ...] = ()
    origin: str = ""  # where it was configured, e.g. "sources.logs[0]"
    regex: Any = field(init=False, repr=False)
    groups_at: tuple[tuple[str, int], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.regex = compile_pattern(self.pattern)
        self.groups_at = tuple(sorted(self.regex.groupindex.items(), key=lambda kv: kv[1]))

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any], origin: str = "") -> Rule:
        """A Rule from a validated config mapping (keys other than the rule's are ignored)."""
        return cls(
            name=conf["name"],
            pattern=conf["match"],
            severity=Severity.parse(conf.get("severity") or "warning"),
            key=Template(conf.get("key") or ""),
            summary=Template(conf["summary"]) if conf.get("summary") else None,
            ignore=tuple(conf.get("ignore") or ()),
            origin=origin,
        )

    def groups(self, line: bytes) -> dict[str, str] | None:
        """The named groups of the first match in `line` ("" for a group that took no part)."""
        spans = self.regex._regexp.Match(_UNANCHORED, line, 0, len(line))
        if spans[0][0] < 0:
            return None
        out = {}
        for name, i in self.groups_at:
            start, end = spans[i]
            out[name] = line[start:end].decode("utf-8", "replace") if start >= 0 else ""
        return out


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
        text = line_text(raw, cut)
        values = {**groups, **(context or {}), "line": text, "rule": rule.name}
        key = constant if constant is not None else self._render(rule, rule.key, values, "")
        key = key.translate(_CONTROL)  # an identity shown in mails: no raw control characters
        ident = (rule.name, key)
        event = self._events.get(ident)
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
