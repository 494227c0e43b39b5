"""sources.logs end to end in one process: real files, real inotify, real logrotate,
and a small in-memory stand-in for the daemon's spool (events and positions)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO, wait_for

from notifier.config import parse_config
from notifier.events import EVENT, PROBLEM, RESOLVED, Event
from notifier.sources.logs import LogsSource

SMTP = {"host": "smtp.example.com", "from": "a@example.com", "to": ["b@example.com"]}
EVERY_LINE = {"name": "line", "match": r"^(?P<text>.+)$", "key": "{{ text }}"}


class MemoryContext:
    """The daemon's edge, in memory: what was posted, and positions as the spool keeps them."""

    host = "nas01"

    def __init__(self, positions: dict[str, Any] | None = None) -> None:
        self.lock = threading.Lock()
        self.posts: list[tuple[list[Event], dict[str, Any]]] = []
        self.positions: dict[str, Any] = dict(positions or {})

    def post(self, events: list[Event], positions: dict[str, Any] | None = None) -> None:
        with self.lock:
            self.posts.append((list(events), dict(positions or {})))
            # the spool stores JSON: a position that is not JSON would fail there
            self.positions.update(json.loads(json.dumps(positions or {})))

    def position(self, key: str) -> Any | None:
        with self.lock:
            return self.positions.get(key)

    def now(self) -> float:
        return time.time()

    def events(self, source: str = "logs") -> list[Event]:
        with self.lock:
            return [e for events, _ in self.posts for e in events if e.source == source]

    def seen(self) -> dict[str, int]:
        """Lines read so far (with the EVERY_LINE rule): how often each was seen."""
        out: dict[str, int] = {}
        for e in self.events():
            out[e.key] = out.get(e.key, 0) + e.count
        return out


def entry(path: Path | str, *rules: dict[str, Any], **options: Any) -> dict[str, Any]:
    """One validated sources.logs entry, as the config loader makes it."""
    raw = {"path": str(path), "rules": list(rules) or [EVERY_LINE], **options}
    conf = parse_config(yaml.safe_dump({"smtp": SMTP, "sources": {"logs": [raw]}}))
    return conf["sources"]["logs"][0]


def append(path: Path, *lines: str) -> None:
    with open(path, "a") as f:
        f.write("".join(line + "\n" for line in lines))


@pytest.fixture
def started():
    """Start sources; every one is stopped at the end, and must stop promptly."""
    sources: list[LogsSource] = []

    def start(conf: dict[str, Any], ctx: MemoryContext) -> LogsSource:
        source = LogsSource(conf, 0, ctx)
        source.start()
        sources.append(source)
        return source

    yield start
    for source in sources:
        began = time.monotonic()
        source.stop()
        assert time.monotonic() - began < 2 and not source._thread.is_alive()


def ready(ctx: MemoryContext, log: Path) -> None:
    """Wait until the source has posted where it starts in `log` (it is watching by then)."""
    wait_for(lambda: any(k.endswith(":" + str(log)) for k in ctx.positions), 10, "a first position")


def test_new_lines_become_events(tmp_path, started):
    log = tmp_path / "auth.log"
    log.write_text("Failed password for root from 198.51.100.1 port 22 (before the start)\n")
    ssh = {
        "name": "ssh-failed",
        "match": r"Failed password for (?P<user>\S+) from (?P<ip>\S+)",
        "key": "{{ ip }}",
        "summary": "{{ user }} from {{ ip }}",
        "severity": "critical",
    }
    ctx = MemoryContext()
    started(entry(log, ssh), ctx)
    ready(ctx, log)
    append(
        log,
        *[f"sshd[1]: Failed password for root from 203.0.113.{i % 2} port 22" for i in range(5)],
        "sshd[1]: Accepted password for alice",
    )
    wait_for(lambda: sum(e.count for e in ctx.events()) == 5, 10, "five failures")
    by_key = {}
    for e in ctx.events():
        by_key.setdefault(e.key, []).append(e)
    assert sorted(by_key) == ["203.0.113.0", "203.0.113.1"]
    first = by_key["203.0.113.0"][0]
    assert (first.source, first.check, first.severity.name, first.state) == (
        "logs",
        "ssh-failed",
        "CRITICAL",
        EVENT,
    )
    assert first.summary == "root from 203.0.113.0" and first.host == "nas01"
    assert first.details["path"] == str(log) and first.details["rule"] == "ssh-failed"
    assert first.details["line"] == "sshd[1]: Failed password for root from 203.0.113.0 port 22"
    # every post that carries events carries the position after them, in the same call
    for events, positions in ctx.posts:
        if events:
            assert list(positions) == [f"logs:{log}:{log}"]


def test_a_restart_reads_what_was_written_while_stopped_exactly_once(tmp_path, started):
    log = tmp_path / "app.log"
    log.write_text("")
    ctx = MemoryContext()
    first = started(entry(log), ctx)
    ready(ctx, log)
    append(log, "one", "two")
    wait_for(lambda: ctx.seen() == {"one": 1, "two": 1}, 10, "the first lines")
    first.stop()
    append(log, "three", "four")
    started(entry(log), ctx)  # a new source, the same spool
    append(log, "five")
    want = {"one": 1, "two": 1, "three": 1, "four": 1, "five": 1}
    wait_for(lambda: ctx.seen() == want, 10, "the lines written while stopped")


def test_max_catchup_reads_the_newest_and_notes_the_cut(tmp_path, started):
    log = tmp_path / "app.log"
    log.write_text("")
    ctx = MemoryContext()
    first = started(entry(log, max_catchup="1KiB"), ctx)
    ready(ctx, log)
    first.stop()
    append(log, *[f"while stopped {i:05d}" for i in range(1000)])  # 20 bytes a line
    second = MemoryContext(ctx.positions)
    started(entry(log, max_catchup="1KiB"), second)
    wait_for(lambda: len(second.seen()) >= 51, 10, "the last KiB")
    assert sorted(second.seen()) == [f"while stopped {i:05d}" for i in range(949, 1000)]
    assert {e.details["catchup_cut_bytes"] for e in second.events()} == {949 * 20}


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate is not installed")
@pytest.mark.parametrize("mode", ["create", "copytruncate"])
def test_lines_around_a_real_logrotate_arrive_once(tmp_path, started, mode):
    log = tmp_path / "app.log"
    log.write_text("")
    ctx = MemoryContext()
    started(entry(log), ctx)
    ready(ctx, log)
    conf = tmp_path / "rotate.conf"
    conf.write_text(f"{log} {{\n  rotate 2\n  {mode}\n  nocompress\n}}\n")
    want: dict[str, int] = {}
    for round_ in range(3):  # back to back: the source sees one, two or three rotations
        lines = [f"round {round_} line {i}" for i in range(50)]
        append(log, *lines)
        want.update(dict.fromkeys(lines, 1))
        done = subprocess.run(
            ["logrotate", "-f", "-s", str(tmp_path / "state"), str(conf)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    append(log, "after")
    want["after"] = 1
    wait_for(lambda: ctx.seen() == want, 15, f"every line once across {mode} rotations")


def test_a_glob_reads_new_files_from_their_start(tmp_path, started):
    (tmp_path / "a.log").write_text("old, before the first start\n")
    ctx = MemoryContext()
    started(entry(tmp_path / "*.log"), ctx)
    ready(ctx, tmp_path / "a.log")
    append(tmp_path / "b.log", "b first", "b second")
    append(tmp_path / "a.log", "a new")
    (tmp_path / "c.txt").write_text("not matched by the glob\n")
    wait_for(lambda: ctx.seen() == {"b first": 1, "b second": 1, "a new": 1}, 10, "both files")
    paths = {e.key: e.details["path"] for e in ctx.events()}
    assert paths["b first"] == str(tmp_path / "b.log")


def test_a_glob_forgets_the_position_of_a_file_gone_for_good(tmp_path, started, monkeypatch):
    from notifier.sources import tail

    monkeypatch.setattr(tail, "RETIRE_AFTER", 0.2)  # how long a deleted file is still read
    ctx = MemoryContext()
    (tmp_path / "app-0.log").write_text("")
    source = started(entry(tmp_path / "*.log"), ctx)
    ready(ctx, tmp_path / "app-0.log")
    append(tmp_path / "app-1.log", "one")  # appears later: read from its start
    wait_for(lambda: ctx.seen() == {"one": 1}, 10, "the first file")
    key = f"{source._label}:{tmp_path / 'app-1.log'}"
    wait_for(lambda: ctx.position(key), 10, "its saved position")
    (tmp_path / "app-1.log").unlink()
    lines = iter(range(1_000_000))

    def forgotten() -> bool:
        append(tmp_path / "app-2.log", f"line {next(lines)}")  # a change: the source looks again
        return key in ctx.positions and ctx.positions[key] is None

    wait_for(forgotten, 10, "the forgotten position")


def test_an_unreadable_path_is_reported_and_cleared_when_it_works(tmp_path, started):
    log = tmp_path / "app.log"
    log.mkdir()  # a directory: as root, the one thing that cannot be read as a log
    ctx = MemoryContext()
    source = started(entry(log), ctx)
    wait_for(lambda: ctx.events("notifier"), 10, "the failure")
    (problem,) = ctx.events("notifier")
    assert problem.state == PROBLEM and problem.key == source.name
    assert "it is a directory" in problem.summary and str(log) in problem.summary
    log.rmdir()
    append(log, "works now")
    wait_for(lambda: ctx.seen() == {"works now": 1}, 10, "the file once it is one")
    wait_for(lambda: len(ctx.events("notifier")) == 2, 10, "the all-clear")
    assert ctx.events("notifier")[1].state == RESOLVED


def test_poll_true_follows_without_inotify(tmp_path, started):
    log = tmp_path / "app.log"
    log.write_text("")
    ctx = MemoryContext()
    source = started(entry(log, poll=True), ctx)
    ready(ctx, log)
    directory = os.path.realpath(tmp_path)
    assert (directory, True) in source._watcher._watches
    assert (directory, False) not in source._watcher._watches
    append(log, "polled")
    wait_for(lambda: ctx.seen() == {"polled": 1}, 10, "a line seen by polling")


FALLBACK = """
import sys, time
from pathlib import Path
sys.path[:0] = [{repo!r}, {tests!r}]
from helpers import wait_for
from test_logs_source import MemoryContext, entry, append
from notifier.sources.logs import LogsSource
log = Path({log!r})
ctx = MemoryContext()
source = LogsSource(entry(log), 0, ctx)
source.start()
wait_for(lambda: ctx.positions, 10, "a first position")
append(log, "seen without inotify")
wait_for(lambda: ctx.seen() == {{"seen without inotify": 1}}, 10, "the line")
print("polling:", sorted({{p for _, p in source._watcher._watches}}))
source.stop()
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare(1) is not installed")
@pytest.mark.parametrize("limit", ["max_inotify_instances", "max_inotify_watches"])
def test_when_inotify_is_exhausted_it_falls_back_to_polling(tmp_path, limit):
    log = tmp_path / "app.log"
    log.write_text("")
    script = FALLBACK.format(repo=str(REPO), tests=str(REPO / "tests"), log=str(log))
    # A user namespace of its own, where this inotify limit is 0: only this process is short.
    shell = f'echo 0 > /proc/sys/user/{limit} && exec {sys.executable} -c "$0"'
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c", shell, script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    if "Operation not permitted" in done.stderr or "Permission denied" in done.stderr:
        pytest.skip(f"cannot set an inotify limit in a user namespace here: {done.stderr}")
    assert done.returncode == 0, done.stderr
    assert "polling: [True]" in done.stdout
    assert "inotify cannot watch" in done.stderr and "polling every" in done.stderr
