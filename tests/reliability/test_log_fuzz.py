"""Hostile log lines: random bytes, NULs, invalid UTF-8, ANSI escapes, a 10 MB line without a
newline, a ReDoS pattern against 100 KB of `a`, captured groups full of CR and `Bcc:`. The
line path (tail, rules, events) and the journal path never raise, stay bounded, and the real
daemon keeps tailing and mails nothing but clean headers."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifier import schema
from notifier.events import Event
from notifier.sources.journal import JournalSource
from notifier.sources.matching import EventBatch, RuleSet
from notifier.sources.rules import MAX_LINE, Rule, compile_pattern
from notifier.sources.tail import LogTail
from tests.helpers import wait_for

from .rigging import check_mail_is_clean

RULES = [
    {"name": "word", "match": r"(?P<word>\S+) attack", "key": "{{ word }}"},
    {
        "name": "who",
        "match": r"user (?P<who>.*) failed",
        "key": "{{ who }}",
        "summary": "login failed for {{ who }}",
    },  # fmt: skip
    {"name": "redos", "match": r"(a+)+$"},
    {"name": "marker", "match": r"MARKER-(?P<n>\d+)", "key": "{{ n }}", "severity": "critical"},
]
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def ruleset() -> RuleSet:
    return RuleSet([Rule.from_conf({"severity": "warning", **r}) for r in RULES])


def assert_clean_event(event: Event) -> None:
    """Text that SQLite and the mail encoder take, and a summary without raw control bytes."""
    for text in (
        event.summary,
        event.key,
        event.check,
        json.dumps(event.details, ensure_ascii=False),
    ):
        text.encode("utf-8")  # no lone surrogates
    assert not CONTROL.search(event.summary) or event.check == "who", repr(event.summary)


# -- the pure line path, fuzzed ------------------------------------------------------------
hostile_bytes = st.one_of(
    st.binary(max_size=3000),
    st.lists(
        st.sampled_from(
            [
                b"\0",
                b"\xff\xfe",
                b"\xc3",
                b"\x1b[31m",
                b"\x1b]0;x\x07",
                b"\r",
                b"\n",
                b" attack",
                b"user ",
                b" failed",
                b"a" * 500,
                b"MARKER-7",
                "é✓".encode(),
                b"\xed\xa0\x80",
                b"\t",
            ]
        ),  # fmt: skip
        max_size=60,
    ).map(b"".join),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=hostile_bytes, cuts=st.lists(st.integers(0, 3000), max_size=6))
def test_any_bytes_through_tail_and_rules_raise_nothing_and_make_clean_events(
    tmp_path_factory, data, cuts
):
    path = Path(tmp_path_factory.mktemp("fuzz")) / "app.log"
    path.write_bytes(b"")
    tail = LogTail(str(path), None, at_end=True, max_catchup=1 << 20)
    assert tail.read() is None
    rules = ruleset()
    batch = EventBatch("logs", "nas01", 1.0)
    lines = 0
    with open(path, "ab") as f:
        for piece in _split(data, cuts):  # written in pieces: lines arrive cut anywhere
            f.write(piece)
            f.flush()
            while (chunk := tail.read()) is not None:
                lines += chunk.data.count(b"\n")
                for rule, line, cut in rules.hits(chunk.data):
                    batch.add(rule, line, cut, {"path": str(path)})
                tail.commit(chunk)
    tail.close()
    assert lines == data.count(b"\n")  # every complete line, once; the unfinished one waits
    for event in batch.events():
        assert_clean_event(event)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def test_redos_pattern_on_100_kb_of_a_is_linear():
    """`(a+)+$` and its cousins take exponential time in a backtracking engine (Python's re
    needs a second for 24 characters); RE2 must stay linear in the text."""
    for pattern, tail in ((r"(a+)+$", b"b"), (r"(a+)+b", b""), (r"(a|aa)+c", b"")):
        regex = compile_pattern(pattern)
        timings = []
        for size in (25_000, 100_000, 400_000):
            text = b"a" * size + tail  # no match: the worst case for backtracking
            started = time.perf_counter()
            for _ in range(5):
                assert regex.search(text) is None
            timings.append((time.perf_counter() - started) / 5)
        assert timings[1] < 0.5, f"{pattern}: 100 KB took {timings[1]:.3f}s"
        # Four times the text, about four times the time (generous for a shared machine).
        assert timings[2] < 16 * max(timings[1], 1e-4), (pattern, timings)
    rules = ruleset()
    started = time.perf_counter()
    hits = list(rules.hits(b"a" * 100_000 + b"b\n" + b"a" * 100_000 + b"\n"))
    assert time.perf_counter() - started < 1.0
    assert [r.name for r, _, _ in hits] == ["redos"]  # the all-a line, cut to MAX_LINE, matches


# -- the journal path ------------------------------------------------------------------------
class MemoryContext:
    """What a source sees of the daemon, in memory: events and positions kept in lists."""

    host = "nas01"

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.positions: dict[str, Any] = {}
        self.lock = threading.Lock()

    def post(self, events: list[Event], positions: dict[str, Any] | None = None) -> None:
        with self.lock:
            self.events += events
            self.positions.update(positions or {})

    def position(self, key: str) -> Any | None:
        return self.positions.get(key)

    def now(self) -> float:
        return time.time()


def journal_source(tmp: Path, output: Path) -> tuple[JournalSource, MemoryContext]:
    """A JournalSource whose journalctl is a script printing `output` (a JSON line each)."""
    script = tmp / "journalctl"
    script.write_text(
        f'#!/bin/sh\ncase "$*" in *--follow*) cat "{output}"; exec sleep 600;; esac\n'
    )
    script.chmod(0o755)
    errors = schema.Errors()
    conf = JournalSource.entry.validate({"rules": RULES}, "sources.journal[0]", 1, errors)
    assert not errors, errors.problems
    cls = type("FakeJournal", (JournalSource,), {"journalctl": str(script)})
    ctx = MemoryContext()
    return cls(conf, 0, ctx), ctx


journal_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=200)
    | st.lists(st.integers(-5, 300), max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(entries=st.lists(st.dictionaries(st.sampled_from(["MESSAGE", "_SYSTEMD_UNIT", "__CURSOR",
                                                         "SYSLOG_IDENTIFIER", "_HOSTNAME"]),
                                        journal_values), max_size=8),
       garbage=st.lists(st.binary(max_size=100).filter(lambda b: b"\n" not in b), max_size=3))  # fmt: skip
def test_any_journal_output_raises_nothing_and_the_source_keeps_reading(
    tmp_path_factory, entries, garbage
):
    tmp = Path(tmp_path_factory.mktemp("journal"))
    output = tmp / "out.json"
    with open(output, "wb") as f:
        for entry in entries:
            f.write(json.dumps(entry).encode() + b"\n")
        for junk in garbage:
            f.write(junk + b"\n")
        f.write(json.dumps({"MESSAGE": "MARKER-1", "__CURSOR": "c-end"}).encode() + b"\n")
    source, ctx = journal_source(tmp, output)
    source.start()
    try:
        wait_for(lambda: any(e.check == "marker" for e in ctx.events), 20, "the marker entry")
    finally:
        source.stop()
    assert source.last_error is None, source.last_error
    for event in ctx.events:
        assert_clean_event(event)


def test_a_10_mb_journal_message_is_bounded_and_what_follows_still_arrives(tmp_path):
    output = tmp_path / "out.json"
    huge = "x" * (10 * 1024 * 1024) + " attack"
    with open(output, "w") as f:
        f.write(json.dumps({"MESSAGE": huge, "__CURSOR": "c1"}) + "\n")
        f.write(json.dumps({"MESSAGE": "MARKER-2", "__CURSOR": "c2"}) + "\n")
    source, ctx = journal_source(tmp_path, output)
    started = time.monotonic()
    source.start()
    try:
        wait_for(
            lambda: any(e.check == "marker" for e in ctx.events), 30, "the entry after the huge one"
        )
    finally:
        source.stop()
    assert time.monotonic() - started < 10
    for event in ctx.events:
        assert len(event.summary) <= 400 and len(json.dumps(event.details)) < 2 * MAX_LINE + 4096


# -- the real daemon -------------------------------------------------------------------------
def mailed(rig, text: str) -> bool:
    """`text` in the subject or the plain body of a mail caught so far."""
    return any(text in str(m.message["Subject"]) + m.message.get_body(("plain",)).get_content()
               for m in rig.catcher.messages)  # fmt: skip


def vm_peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def test_the_daemon_survives_a_hostile_log_and_keeps_tailing(rig):
    log = rig.tmp / "hostile.log"
    log.touch()
    rig.configure(policy={"group_wait": "1s", "max_per_hour": 3600, "burst": 100},
                  sources={"logs": [{"path": str(log), "rules": RULES}]})  # fmt: skip
    daemon = rig.start()
    wait_for(lambda: all(s["last_check"] for s in daemon.status()["sources"]), 20, "the log opened")
    baseline = vm_peak_mb(daemon.proc.pid)
    with open(log, "ab") as f:
        f.write(os.urandom(1 << 20) + b"\n")
        f.write(b"\0" * 1000 + b" attack\n" + b"\xff\xfe\xc3 attack\n" + b"\xed\xa0\x80 attack\n")
        f.write(b"\x1b[31mred\x1b[0m attack \x1b]0;title\x07\n")
        f.write(b"user root\rBcc: cr@evil.example\x00\x1b[2J failed\n")
        f.write(b"a" * 100_000 + b"\n")  # the ReDoS line, matched by (a+)+$
        f.write(b"a" * 100_000 + b"b\n")  # and its worst case, not matched
        for _ in range(10):  # 10 MB in one line without a newline, written in pieces
            f.write(b"z" * (1 << 20))
            f.flush()
        f.write(b"\nMARKER-42 after all that\n")
    wait_for(
        lambda: mailed(rig, "MARKER-42"),
        30,
        "the marker line after the hostile ones",
    )
    assert daemon.proc.poll() is None
    grown = vm_peak_mb(daemon.proc.pid) - baseline
    assert grown < 150, f"the daemon's peak memory grew by {grown:.0f} MB"
    print(f"hostile log: 12 MB of hostile lines, peak memory of the daemon +{grown:.0f} MB")
    status = daemon.status()
    assert all(s["last_error"] is None for s in status["sources"]), status["sources"]
    for m in rig.catcher.messages:
        check_mail_is_clean(m)
    # Still tailing: one more line, one more mail.
    with open(log, "ab") as f:
        f.write(b"MARKER-43\n")
    wait_for(
        lambda: mailed(rig, "MARKER-43"),
        20,
        "a line after the check",
    )


def test_a_rule_template_cannot_build_a_huge_key():
    """A key or summary template runs for every matching line, so it needs the bounds the mail
    templates have. Fails while notifier/sources/rules.py renders rule templates with an
    unbounded sandbox: `{{ w * 10000000 }}` makes a 30 MB key per line."""
    rule = Rule.from_conf({"name": "r", "match": r"(?P<w>\S+) x", "key": "{{ w * 10000000 }}",
                           "severity": "warning"})  # fmt: skip
    batch = EventBatch("logs", "nas01", 1.0)
    started = time.perf_counter()
    batch.add(rule, b"abc x")
    (event,) = batch.events()
    assert len(event.key) <= MAX_LINE, f"a {len(event.key) >> 20} MB key from one line"
    assert time.perf_counter() - started < 1.0
