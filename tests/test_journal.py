"""The journal source against real journal files written by systemd-journal-remote."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import exited

from notifier import schema, sources
from notifier.events import EVENT, Event, Severity
from notifier.sources import journal
from notifier.sources.journal import JournalSource

REMOTE = next((p for p in ("/lib/systemd/systemd-journal-remote",
                           "/usr/lib/systemd/systemd-journal-remote") if os.path.exists(p)), None)  # fmt: skip
pytestmark = [
    pytest.mark.skipif(REMOTE is None, reason="needs systemd-journal-remote "
                       "(apt-get install systemd-journal-remote) to write real journal files"),
    pytest.mark.skipif(shutil.which("journalctl") is None, reason="needs journalctl"),
]  # fmt: skip

BOOT = uuid.uuid4().hex
MACHINE = uuid.uuid4().hex

SSH_RULES = [
    {"name": "ssh-failed-password",
     "match": r"Failed password for (?:invalid user )?(?P<user>\S+) from (?P<ip>\S+)",
     "key": "{{ ip }}", "summary": "SSH login failed for {{ user }} from {{ ip }} ({{ unit }})"},
    {"name": "kernel-io-error", "match": r"I/O error, dev (?P<dev>\w+)", "severity": "critical",
     "key": "{{ dev }}"},
]  # fmt: skip


class FakeContext:
    """The daemon edge: records every post (events with the positions saved alongside)."""

    def __init__(self, positions: dict[str, Any] | None = None) -> None:
        self.host = "testhost"
        self.posts: list[tuple[list[Event], dict[str, Any] | None]] = []
        self.positions: dict[str, Any] = dict(positions or {})
        self._lock = threading.Lock()

    def post(self, events: list[Event], positions: dict[str, Any] | None = None) -> None:
        with self._lock:
            self.posts.append((list(events), positions))
            self.positions.update(positions or {})

    def position(self, key: str) -> Any | None:
        return self.positions.get(key)

    def now(self) -> float:
        return time.time()

    def events(self, source: str = "journal") -> list[Event]:
        with self._lock:
            return [e for events, _ in self.posts for e in events if e.source == source]


def wait_for(cond, timeout: float = 10.0):
    """Poll `cond` until it returns something true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.02)


def export_entry(fields: dict[str, str | bytes]) -> bytes:
    """One entry in the journal export format (binary form for values with newlines or
    invalid UTF-8), see systemd's JOURNAL_EXPORT_FORMATS documentation."""
    now = time.time()
    base = {"__REALTIME_TIMESTAMP": str(int(now * 1e6)),
            "__MONOTONIC_TIMESTAMP": str(int(time.monotonic() * 1e6)),
            "_BOOT_ID": BOOT, "_MACHINE_ID": MACHINE, "_HOSTNAME": "nas01", "PRIORITY": "6"}  # fmt: skip
    out = b""
    for key, value in {**base, **fields}.items():
        data = value if isinstance(value, bytes) else value.encode()
        try:
            data.decode("utf-8")
            plain = b"\n" not in data
        except UnicodeDecodeError:
            plain = False
        if plain:
            out += key.encode() + b"=" + data + b"\n"
        else:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return out + b"\n"


class Journal:
    """A directory of real journal files; `append` writes entries with systemd-journal-remote."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(exist_ok=True)

    def append(self, *entries: str | dict[str, str | bytes]) -> None:
        data = b"".join(
            export_entry({"MESSAGE": e, "SYSLOG_IDENTIFIER": "sshd", "_SYSTEMD_UNIT": "ssh.service"}
                         if isinstance(e, str) else e)
            for e in entries
        )  # fmt: skip
        subprocess.run([REMOTE, f"--output={self.directory}/remote.journal", "-"], input=data,
                       check=True, capture_output=True, timeout=30)  # fmt: skip


@pytest.fixture
def jdir(tmp_path):
    return Journal(tmp_path / "journal")


@pytest.fixture
def running():
    """Start journal sources; every one is stopped at the end."""
    started: list[JournalSource] = []

    def start(ctx: FakeContext, **options: Any) -> JournalSource:
        errors = schema.Errors()
        conf = journal.ENTRY.validate({"rules": SSH_RULES, **options}, "sources.journal[0]", 1,
                                      errors)  # fmt: skip
        assert not errors, [p.message for p in errors.problems]
        src = JournalSource(conf, 0, ctx)
        src.start()
        started.append(src)
        return src

    yield start
    for src in started:
        src.stop()


def saved_cursor(ctx: FakeContext, src: JournalSource) -> str | None:
    return ctx.positions.get(src.position_key)


def seqnum(cursor: str | None) -> int:
    """The entry number in a journal cursor (`...;i=2d;...`, hexadecimal)."""
    fields = dict(part.split("=", 1) for part in (cursor or "").split(";") if "=" in part)
    return int(fields.get("i", "0"), 16)


@pytest.fixture(autouse=True)
def save_positions_promptly(monkeypatch):
    # The cursor alone (no rule matched) is saved every 10s in production; tests want it now.
    monkeypatch.setattr(journal, "POSITION_EVERY", 0.05)


def failed(password_from: str, user: str = "root") -> str:
    return f"Failed password for {user} from {password_from} port 52113 ssh2"


# -- config -------------------------------------------------------------------------------------


def test_registered_and_its_options_are_checked():
    assert sources.get("journal") is JournalSource
    errors = schema.Errors()
    journal.ENTRY.validate({"directory": "/a", "file": "/b", "priority": "loud",
                            "rules": [{"name": "x", "match": "(?P<unit>a)"}]},
                           "sources.journal[0]", 4, errors)  # fmt: skip
    messages = sorted(f"{p.path}: {p.message}" for p in errors.problems)
    assert messages[0].startswith("sources.journal[0].priority: must be a priority")
    assert "group name 'unit' is taken by the event details" in messages[1]


def test_command_line_follows_from_now_or_after_the_cursor(tmp_path):
    conf = journal.ENTRY.validate(
        {"unit": ["ssh.service"], "identifier": ["sshd", "kernel"], "priority": "err..emerg",
         "directory": str(tmp_path), "rules": SSH_RULES}, "j", 1, schema.Errors())  # fmt: skip
    src = JournalSource(conf, 0, FakeContext())
    argv = src.command(None)
    assert argv[:3] == ["journalctl", "--follow", "--output=json"]
    assert "--lines=0" in argv and f"--directory={tmp_path}" in argv and "--merge" in argv
    assert argv[-4:] == ["--unit=ssh.service", "--identifier=sshd", "--identifier=kernel",
                         "--priority=err..emerg"]  # fmt: skip
    assert "--after-cursor=s=abc;i=5" in src.command("s=abc;i=5")
    assert "--lines=0" not in src.command("s=abc;i=5")
    system = JournalSource(journal.ENTRY.validate({"rules": SSH_RULES}, "j", 1, schema.Errors()),
                           1, FakeContext())  # fmt: skip
    if os.path.exists("/etc/machine-id"):  # this machine's entries only, from every boot
        machine = Path("/etc/machine-id").read_text().strip()
        assert system.where() == ["--merge", f"_MACHINE_ID={machine}"]


# -- real journal files -------------------------------------------------------------------------


def test_first_start_is_from_now_and_repeats_fold_into_counts(jdir, running):
    jdir.append(failed("192.0.2.1"), failed("192.0.2.1"))  # before we start: history, not news
    ctx = FakeContext()
    src = running(ctx, directory=str(jdir.directory))
    first = wait_for(lambda: saved_cursor(ctx, src))  # the newest entry, saved at once
    assert seqnum(first) == 2
    jdir.append(*[failed("203.0.113.7", "admin")] * 40, failed("198.51.100.4"),
                "Accepted publickey for backup from 192.168.1.5 port 40022 ssh2",
                {"MESSAGE": "blk_update_request: I/O error, dev sdb, sector 123",
                 "SYSLOG_IDENTIFIER": "kernel", "PRIORITY": "3"})  # fmt: skip
    wait_for(lambda: sum(e.count for e in ctx.events()) == 42)
    events = ctx.events()
    assert {e.key for e in events} == {"203.0.113.7", "198.51.100.4", "sdb"}
    assert len(events) < 10  # 40 identical lines fold into a count, not 40 events
    noisy = [e for e in events if e.key == "203.0.113.7"]
    assert sum(e.count for e in noisy) == 40
    e = noisy[0]
    assert (e.source, e.check, e.state, e.severity) == ("journal", "ssh-failed-password", EVENT,
                                                        Severity.WARNING)  # fmt: skip
    assert e.summary == "SSH login failed for admin from 203.0.113.7 (ssh.service)"
    assert e.details["identifier"] == "sshd" and e.details["hostname"] == "nas01"
    assert e.details["user"] == "admin" and e.host == "testhost"
    (disk,) = [e for e in events if e.key == "sdb"]
    assert (disk.check, disk.severity, disk.details["unit"]) == ("kernel-io-error",
                                                                 Severity.CRITICAL, "")  # fmt: skip
    assert disk.summary == "blk_update_request: I/O error, dev sdb, sector 123"
    # Every post with events also moved the saved cursor, in the same call.
    for events_posted, positions in ctx.posts:
        if events_posted:
            assert positions and positions[src.position_key] != first
    assert wait_for(lambda: seqnum(saved_cursor(ctx, src)) == 45)


def test_restart_neither_misses_nor_repeats_and_stop_kills_journalctl(jdir, running):
    jdir.append("sshd starting")  # an entry to start after, so no append can race the start
    ctx = FakeContext()
    src = running(ctx, directory=str(jdir.directory))
    wait_for(lambda: src._proc is not None)
    jdir.append(failed("203.0.113.1"))
    wait_for(lambda: ctx.events())
    child = src._proc.pid
    src.stop()
    assert exited(child)
    assert not src._thread.is_alive()

    jdir.append(failed("203.0.113.2"), failed("203.0.113.3"))  # while the daemon is down
    again = running(ctx, directory=str(jdir.directory))  # same saved positions
    wait_for(lambda: len({e.key for e in ctx.events()}) == 3)
    jdir.append(failed("203.0.113.4"))
    wait_for(lambda: len({e.key for e in ctx.events()}) == 4)
    keys = [e.key for e in ctx.events()]
    assert sorted(keys) == ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"]
    assert again.position_key == src.position_key


def test_unit_identifier_and_priority_select_entries(jdir, running):
    jdir.append("sshd starting")
    ctx = FakeContext()
    src = running(ctx, directory=str(jdir.directory), identifier=["kernel"], priority="err")
    wait_for(lambda: saved_cursor(ctx, src))
    jdir.append(
        {"MESSAGE": "I/O error, dev sda, sector 1", "SYSLOG_IDENTIFIER": "smartd", "PRIORITY": "2"},
        {"MESSAGE": "I/O error, dev sdb, sector 1", "SYSLOG_IDENTIFIER": "kernel", "PRIORITY": "6"},
        {"MESSAGE": "I/O error, dev sdc, sector 1", "SYSLOG_IDENTIFIER": "kernel", "PRIORITY": "3"},
        {"MESSAGE": "end marker", "SYSLOG_IDENTIFIER": "kernel", "PRIORITY": "3"},
    )  # fmt: skip
    wait_for(lambda: seqnum(saved_cursor(ctx, src)) == 5)  # all read
    assert [e.key for e in ctx.events()] == ["sdc"]


def test_binary_and_multi_line_messages(jdir, running):
    jdir.append("sshd starting")
    ctx = FakeContext()
    src = running(ctx, directory=str(jdir.directory))
    wait_for(lambda: saved_cursor(ctx, src))
    jdir.append(
        {"MESSAGE": b"Failed password for \xff\xfeuser from 203.0.113.9 port 1 ssh2",
         "SYSLOG_IDENTIFIER": "sshd"},
        {"MESSAGE": "panic report:\nI/O error, dev nvme0n1, sector 8\nend", "SYSLOG_IDENTIFIER":
         "kernel"},
    )  # fmt: skip
    wait_for(lambda: len(ctx.events()) == 2)
    by_key = {e.key: e for e in ctx.events()}
    assert by_key["203.0.113.9"].details["user"] == "\ufffd\ufffduser"
    assert by_key["nvme0n1"].details["line"] == "I/O error, dev nvme0n1, sector 8"


def test_journalctl_failure_is_a_source_failure(tmp_path, running):
    ctx = FakeContext()
    src = running(ctx, directory=str(tmp_path / "nowhere"))
    failure = wait_for(lambda: ctx.events("notifier"))[0]
    assert (failure.check, failure.key) == ("source-failing", src.name)
    assert "journalctl failed: Failed to open" in failure.summary
    started = time.monotonic()
    src.stop()
    assert time.monotonic() - started < 2


def test_an_unusable_saved_cursor_is_reported_and_reading_goes_on(jdir, running):
    jdir.append("sshd starting")
    key = "journal:journal[0]"
    ctx = FakeContext({key: "not-a-cursor"})
    src = running(ctx, directory=str(jdir.directory))
    assert src.position_key == key
    failure = wait_for(lambda: ctx.events("notifier"))[0]
    assert "journalctl refused the saved position (Failed to seek to cursor" in failure.summary
    wait_for(lambda: src._proc is not None and seqnum(saved_cursor(ctx, src)) == 1, 15)
    jdir.append(failed("203.0.113.77"))
    assert wait_for(lambda: ctx.events())[0].key == "203.0.113.77"
