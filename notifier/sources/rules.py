"""Rules applied to text lines (log files, the journal): RE2 patterns, key and summary templates.

Patterns run with google-re2, in time linear in the text, because the text is written by
whoever can reach sshd. A RuleSet classifies whole chunks of lines with few calls into RE2
(see RuleSet), and only lines that match get per-line work in Python.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import re2

from notifier import schema
from notifier.events import Severity

MAX_LINE = 64 * 1024  # longer lines are cut to this many bytes and marked
SLOTS = 8  # lines classified by one RE2 Set call
# Up to SLOTS lines without their last newline; linear (no backtracking), our text only.
_BLOCKS = re.compile(rb"((?:[^\n]*\n){0,%d}[^\n]*)\n" % (SLOTS - 1))
CUT_MARK = "…[cut]"
SUMMARY_MAX = 200
RESERVED = ("line", "rule", "last_line", "catchup_cut_bytes")  # details every event carries

log = logging.getLogger("notifier.sources")
_UNANCHORED = re2._Anchor.UNANCHORED
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
