"""Rules on lines: RE2 patterns refused with reasons at config load, templates, the chunk
engine agreeing with plain per-line matching, and storms folded into counts."""

from __future__ import annotations

import time

import pytest
import re2
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.config import ConfigInvalid, parse_config
from notifier.events import EVENT, Severity
from notifier.sources.matching import EventBatch, RuleSet, _utf8
from notifier.sources.rules import (
    CUT_MARK,
    MAX_LINE,
    Rule,
    Template,
    default_summary,
)

SMTP = "smtp: {host: smtp.example.com, from: a@example.com, to: [b@example.com]}\n"


def logs_config(*rules: str) -> str:
    """A config with one logs entry whose rules are the given YAML snippets (one per rule)."""
    body = "".join(f"        - {r}\n" for r in rules)
    return SMTP + f"sources:\n  logs:\n    - path: /var/log/auth.log\n      rules:\n{body}"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigInvalid) as info:
        parse_config(text, "config.yaml")
    return info.value.report().splitlines()


def rule(pattern: str, name: str = "r", key: str = "", **kw) -> Rule:
    return Rule(name=name, pattern=pattern, severity=Severity.WARNING, key=Template(key), **kw)


# -- config load ---------------------------------------------------------------------------
def test_patterns_re2_cannot_run_are_refused_with_the_reason_and_path():
    got = problems(
        logs_config(
            r"{name: ok, match: 'Failed password for (?P<user>\S+)'}",
            r"{name: ahead, match: 'Failed (?=password)'}",
            r"{name: back, match: '(a)\1'}",
            r"{name: behind, match: '(?<!root) login'}",
            r"{name: broken, match: 'unbalanced (paren'}",
            r"{name: possessive, match: 'a++'}",
        )
    )
    assert got == [
        "config.yaml:7: sources.logs[0].rules[1].match: RE2 does not support lookahead (?=...); "
        "rewrite without it",
        "config.yaml:8: sources.logs[0].rules[2].match: RE2 does not support backreferences (\\1); "
        "rewrite without them",
        "config.yaml:9: sources.logs[0].rules[3].match: RE2 does not support negative lookbehind "
        "(?<!...); rewrite without it, or list the lines to skip under ignore:",
        "config.yaml:10: sources.logs[0].rules[4].match: invalid regular expression: missing ): "
        "unbalanced (paren",
        "config.yaml:11: sources.logs[0].rules[5].match: RE2 does not support possessive "
        "quantifiers (++); drop the last +: RE2 never backtracks",
    ]


def test_templates_may_only_use_what_the_rule_captures():
    got = problems(
        logs_config(
            r"""{name: a, match: 'from (?P<ip>\S+)', key: "{{ ipp }}"}""",
            r"""{name: b, match: 'from (?P<line>\S+)'}""",
            r"""{name: c, match: 'x', summary: "{{ oops "}""",
            r"""{name: a, match: 'y'}""",
            r"""{name: d, match: 'z', severity: urgent, ignore: ['(?!x)']}""",
        )
    )
    assert got[0] == (
        "config.yaml:6: sources.logs[0].rules[0]: key uses 'ipp', which match does "
        "not capture (groups: ip; also available: line, rule, path)"
    )
    assert got[1].startswith(
        "config.yaml:7: sources.logs[0].rules[1]: match: group name 'line' "
        "is taken by the event details"
    )
    assert got[2].startswith("config.yaml:8: sources.logs[0].rules[2].summary: invalid template: ")
    assert "rules[4].severity: must be one of info, warning, critical, got 'urgent'" in got[3]
    assert "rules[4].ignore[0]: RE2 does not support negative lookahead" in got[4]
    assert len(got) == 5


def test_duplicate_rule_names_in_an_entry_are_refused():
    got = problems(logs_config("{name: a, match: x}", "{name: a, match: y}"))
    assert got == [
        "config.yaml:5: sources.logs[0].rules: rules[1] has the same name 'a' as "
        "rules[0]; names identify alerts"
    ]


def test_a_valid_rule_gets_its_defaults():
    conf = parse_config(logs_config(r"{name: ssh, match: 'from (?P<ip>\S+)', key: '{{ ip }}'}"))
    (entry,) = conf["sources"]["logs"]
    assert entry["max_catchup"] == 10 * 1024 * 1024 and entry["poll"] is False
    assert entry["rules"] == [
        {
            "name": "ssh",
            "match": r"from (?P<ip>\S+)",
            "key": "{{ ip }}",
            "severity": "warning",
            "ignore": [],
            "summary": None,
        }
    ]


# -- matching ------------------------------------------------------------------------------
def test_a_redos_shaped_pattern_runs_in_linear_time():
    evil = rule(r"(a+)+$")
    line = b"a" * 100_000 + b"!"
    started = time.perf_counter()
    assert evil.groups(line) is None  # Python's re would backtrack for longer than the universe
    chunk = (b"a" * 1000 + b"!\n") * 100
    assert list(RuleSet([evil]).hits(chunk)) == []
    assert [r.name for r, _, _ in RuleSet([evil]).hits(b"a" * 5000 + b"\n")] == ["r"]
    assert time.perf_counter() - started < 1.0


FRAGMENTS = [
    b"Failed password for root from 1.2.3.4",
    b"from 10.0.0.1",
    b"kernel: disk error",
    b"user=bob",
    b"foo",
    b" ",
    b"\xff\xfe",
    b"caf\xc3\xa9",
    b"\xc3",
    b"\x00\x1b[31m",
    b"\r",
    b"error",
    b"x" * 300,
]


def engine_rules() -> list[Rule]:
    return [
        rule(r"Failed password for (?P<u>\S+) from (?P<ip>\S+)", "a", ignore=(r"from 10\.",)),
        rule(r"^kernel: .*error", "b"),
        rule(r"user=(?P<u>\w+)$", "c"),
        rule(r"\Afoo\z", "d"),
        rule(r"é+|\x{FFFD}", "e"),
        rule(r"error\s+error", "f"),  # \s must not reach into the next line
    ]


def expected(rules: list[Rule], lines: list[bytes]) -> list[list[str]]:
    """Per line, the rules plain per-line RE2 says match (the cut, UTF-8 line)."""
    out = []
    for line in lines:
        text = _utf8(line[:MAX_LINE])
        out.append(
            [
                r.name
                for r in rules
                if r.regex.search(text) and not any(re2.search(i, text) for i in r.ignore)
            ]
        )
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from(FRAGMENTS), max_size=4).map(b"".join), max_size=40),
    st.booleans(),
)
def test_the_chunk_engine_finds_what_per_line_matching_finds(lines, dense):
    rules = engine_rules()
    ruleset = RuleSet(rules)
    ruleset._dense = dense  # both ways of choosing lines must agree
    data = b"".join(line + b"\n" for line in lines)
    want = expected(rules, lines)
    got = sorted((r.name, line) for r, line, _ in ruleset.hits(data))
    assert got == sorted(
        (name, _utf8(line)) for line, names in zip(lines, want, strict=True) for name in names
    )
    ruleset._dense = dense
    count = ruleset.count(data, range(len(rules)))
    assert count.lines == len(lines)
    assert count.matched == sum(1 for names in want if names)
    assert count.counts == [sum(r.name in names for names in want) for r in rules]


def test_long_lines_are_cut_and_marked_and_the_next_line_still_matches():
    ruleset = RuleSet([rule(r"tail(?P<n>\d)")])
    data = b"x" * (MAX_LINE + 100) + b" tail1\n" + b"y" * 10 + b" tail2\n"
    hits = list(ruleset.hits(data))
    assert [(len(line), cut) for _, line, cut in hits] == [(16, False)]  # tail1 lies past the cut
    head = b"tail3 " + b"z" * (MAX_LINE + 10) + b"\n"
    ((_, line, cut),) = list(ruleset.hits(head))
    assert cut and len(line) == MAX_LINE
    batch = EventBatch("logs", "nas01", 1.0)
    batch.add(ruleset.rules[0], line, cut, {"path": "/x"})
    (event,) = batch.events()
    assert event.details["line"].endswith(CUT_MARK) and event.details["n"] == "3"


def test_bytes_that_are_not_utf8_are_replaced_never_fatal():
    r = rule(r"user=(?P<user>\S+) (?P<rest>.*)$")
    ((_, line, _),) = list(RuleSet([r]).hits(b"user=\xffbob caf\xe9 \x00\x1b[0m\n"))
    batch = EventBatch("logs", "nas01", 1.0)
    batch.add(r, line, False, {"path": "/var/log/x"})
    (event,) = batch.events()
    assert event.details["user"] == "\ufffdbob" and event.details["rest"] == "caf\ufffd \x00\x1b[0m"
    assert event.summary == "user=\ufffdbob caf\ufffd \\x00\\x1b[0m"  # control characters shown


def test_match_line_for_single_messages():
    ruleset = RuleSet(engine_rules())
    assert [r.name for r in ruleset.match_line("kernel: ata1 error")] == ["b"]
    assert [r.name for r in ruleset.match_line(b"Failed password for x from 10.0.0.9")] == []
    assert [r.name for r in ruleset.match_line("foo")] == ["d"]
    assert ruleset.match_line(b"") == [] and RuleSet([]).match_line("foo") == []


# -- templates and events ------------------------------------------------------------------
def test_plain_key_templates_render_like_jinja():
    values = {"ip": "203.0.113.7", "user": "root", "line": "l", "rule": "r"}
    for text in ("{{ ip }}", "{{ip}}:{{ user }}", "ip {{ ip }} / {{ user }}!", "constant", ""):
        fast = Template(text)
        assert fast._jinja is None  # the per-match path does not go through Jinja
        slow = Template(text + "{# force jinja #}")
        assert slow._jinja is not None
        assert fast.render(values) == slow.render(values)
    assert Template("{{ user | upper }}@{{ ip }}").render(values) == "ROOT@203.0.113.7"


def test_a_template_is_sandboxed():
    with pytest.raises(Exception, match="unsafe|not safely callable|access"):
        Template("{{ ip.__class__.__mro__ }}").render({"ip": "x"})


def test_a_storm_costs_one_event_per_identity():
    r = rule(
        r"Failed password for (?P<user>\S+) from (?P<ip>\S+)",
        "ssh",
        key="{{ ip }}",
        summary=Template("{{ user }} from {{ ip }}"),
    )
    const = rule(r"Failed password", "any")
    ruleset = RuleSet([r, const])
    lines = b"".join(
        b"Failed password for root from 203.0.113.%d port 22\n" % (i % 3) for i in range(300_000)
    )
    batch = EventBatch("logs", "nas01", 100.0, note={"catchup_cut_bytes": 7})
    started = time.perf_counter()
    for hit_rule, line, cut in ruleset.hits(lines):
        batch.add(hit_rule, line, cut, {"path": "/var/log/auth.log"})
    events = batch.events()
    assert time.perf_counter() - started < 10
    assert [(e.check, e.key, e.count) for e in events] == [
        ("ssh", "203.0.113.0", 100_000),
        ("any", "", 300_000),
        ("ssh", "203.0.113.1", 100_000),
        ("ssh", "203.0.113.2", 100_000),
    ]
    first = events[0]
    assert first.state == EVENT and first.summary == "root from 203.0.113.0"
    assert first.first_time == first.time == 100.0 and first.host == "nas01"
    assert first.details == {
        "user": "root",
        "ip": "203.0.113.0",
        "path": "/var/log/auth.log",
        "line": "Failed password for root from 203.0.113.0 port 22",
        "rule": "ssh",
        "catchup_cut_bytes": 7,
        "last_line": "Failed password for root from 203.0.113.0 port 22",
    }
    assert events[1].details["last_line"] == "Failed password for root from 203.0.113.2 port 22"
    assert events[1].summary == "Failed password for root from 203.0.113.0 port 22"


def test_an_optional_group_that_took_no_part_is_empty():
    r = rule(r"Failed password for (?P<invalid>invalid user )?(?P<user>\S+)", key="{{ invalid }}")
    assert r.groups(b"Failed password for root") == {"invalid": "", "user": "root"}


def test_default_summary_is_one_trimmed_line():
    assert default_summary("  a\tb\x07c  ") == "a\tb\\x07c"
    long = default_summary("x" * 500)
    assert len(long) == 200 and long.endswith("…")


def test_a_template_that_fails_on_a_line_falls_back_and_the_source_goes_on(caplog):
    r = rule(r"user=(?P<user>\S+)(?P<rest>.*)", key="{{ rest }}",
             summary=Template("{{ user / 2 }}"))  # fmt: skip
    batch = EventBatch("logs", "nas01", 1.0)
    for line in (b"user=bob\r", b"user=eve\x1b[31m", b"user=bob\r"):
        batch.add(r, line)
    events = batch.events()
    assert [(e.key, e.count, e.summary) for e in events] == [
        ("\\x0d", 2, "user=bob"),  # control characters shown, never raw, in keys and summaries
        ("", 1, "user=eve\\x1b[31m"),  # \\S+ took the escape: nothing left for rest
    ]
    assert sum("template '{{ user / 2 }}' failed" in m for m in caplog.messages) == 1


def test_folding_by_key_values_is_exact_for_every_kind_of_key():
    """A repeat of the same key values is folded without rendering the key again; the identity
    must still be the one the template gives, whatever the key uses."""
    by_ip = rule(r"from (?P<ip>\S+)", key="{{ ip }}")
    by_path = rule(r"from (?P<ip>\S+)", name="p", key="{{ path }}/{{ ip }}")
    by_line = rule(r"from (?P<ip>\S+)", name="l", key="{{ line }}")
    by_jinja = rule(r"from (?P<ip>\S+) port (?P<port>\d+)", name="j", key="{{ ip | upper }}")
    missing = rule(r"from (?P<ip>\S+)", name="m", key="{{ nothere }}")
    batch = EventBatch("logs", "nas01", 1.0)
    lines = [b"from 10.0.0.1 port 22", b"from 10.0.0.2 port 22", b"from 10.0.0.1 port 23"]
    for path in ("/var/log/a", "/var/log/b"):
        for line in lines:
            for r in (by_ip, by_path, by_line, by_jinja, missing):
                batch.add(r, line, False, {"path": path})
    batch.add(by_ip, b"from 10.0.0.1 port 9", False, {"path": ["not", "hashable"]})
    events = batch.events()
    got = {(e.check, e.key): e.count for e in events}
    assert got == {
        ("r", "10.0.0.1"): 5,
        ("r", "10.0.0.2"): 2,
        ("p", "/var/log/a/10.0.0.1"): 2,
        ("p", "/var/log/a/10.0.0.2"): 1,
        ("p", "/var/log/b/10.0.0.1"): 2,
        ("p", "/var/log/b/10.0.0.2"): 1,
        ("l", "from 10.0.0.1 port 22"): 2,
        ("l", "from 10.0.0.2 port 22"): 2,
        ("l", "from 10.0.0.1 port 23"): 2,
        ("j", "10.0.0.1"): 4,
        ("j", "10.0.0.2"): 2,
        ("m", ""): 6,  # a key naming a value nobody has falls back to "" (and warns once)
    }
    (first,) = [e for e in events if (e.check, e.key) == ("r", "10.0.0.1")]
    assert first.details["last_line"] == "from 10.0.0.1 port 9"
