"""The systemd journal: the same rules as log files, applied to each entry's MESSAGE.

Debian 12 sends sshd and the kernel only to journald. This source follows
`journalctl --follow --output=json` and saves the journal cursor together with the
events it posts, so a restart continues after the last entry read: nothing is
missed and nothing is counted twice.
"""

from __future__ import annotations

import json
import logging
import os
import re
import selectors
import subprocess
import threading
import time
from typing import Any

from notifier import schema
from notifier.sources.base import COMMON_FIELDS, Source
from notifier.sources.matching import EventBatch, RuleSet
from notifier.sources.rules import MAX_LINE, Rule, rules_field

log = logging.getLogger("notifier.sources")

# What each entry comes with, for templates and details (besides the rule's groups).
CONTEXT = ("unit", "identifier", "hostname")
PRIORITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_PRIORITY = re.compile(r"^([a-z]+|[0-7])(?:\.\.([a-z]+|[0-7]))?$")

FLUSH_IDLE = 0.2  # post a batch once journalctl has been quiet this long
FLUSH_EVERY = 1.0  # and at least this often while entries keep coming
BATCH_ENTRIES = 5000
POSITION_EVERY = 10.0  # save the cursor this often when no rule matched
BACKOFF_MAX = 60.0


def _priority(value: str) -> str:
    m = _PRIORITY.match(value.strip())
    if not m or not all(p is None or p.isdigit() or p in PRIORITIES for p in m.groups()):
        raise ValueError(f"must be a priority ({', '.join(PRIORITIES)}, or 0-7) or a range "
                         f"like err..emerg, got {value!r}")  # fmt: skip
    return value.strip()


def _check_entry(conf: dict[str, Any]) -> dict[str, Any]:
    if conf.get("directory") and conf.get("file"):
        raise ValueError("give directory: or file:, not both")
    return conf


ENTRY = schema.Map(
    description="Rules applied to the systemd journal, entry by entry (journalctl --follow).",
    check=_check_entry,
    fields={
        **COMMON_FIELDS,
        "unit": schema.List(description="Only entries of these systemd units (journalctl -u); "
                            "with identifier:, an entry must match both.", item=schema.Str(),
                            default=list, example=["ssh.service"]),
        "identifier": schema.List(description="Only entries with these syslog identifiers "
                                  "(journalctl -t), e.g. kernel, sshd.", item=schema.Str(),
                                  default=list, example=["sshd"]),
        "priority": schema.Str(description="Only entries at least this important (journalctl "
                               "-p): emerg, alert, crit, err, warning, notice, info, debug, or "
                               "a range like err..emerg.", check=_priority, example="warning"),
        "directory": schema.Str(description="Read the journal files in this directory instead "
                                "of this machine's journal (another machine's, a copy).",
                                example="/var/log/journal/remote"),
        "file": schema.Str(description="Read this journal file (a glob is allowed) instead of "
                           "this machine's journal.", example="/srv/backup/nas02/system.journal"),
        "rules": rules_field(CONTEXT),
    },
)  # fmt: skip


class JournalError(Exception):
    """journalctl could not run or stopped; the message is its own explanation."""


def field_bytes(value: Any) -> bytes:
    """A journal field from journalctl's JSON as bytes: text, a byte array (not UTF-8),
    or a list of either (the field was given several times)."""
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode("utf-8", "replace")
    if isinstance(value, list):
        if all(isinstance(x, int) for x in value):
            # Not UTF-8: made valid (U+FFFD) so that \S+ and . still match the bad bytes;
            # RE2 would not, and a user name with one odd byte would slip past every rule.
            return bytes(x & 0xFF for x in value).decode("utf-8", "replace").encode()
        return b"\n".join(field_bytes(x) for x in value)
    return str(value).encode()


def field_text(value: Any) -> str:
    return field_bytes(value).decode("utf-8", "replace")


def _machine_id() -> str | None:
    try:
        with open("/etc/machine-id", encoding="ascii") as f:
            text = f.read().strip()
    except OSError:
        return None
    return text if re.fullmatch(r"[0-9a-f]{32}", text) else None


class JournalSource(Source):
    """Follows journalctl and posts one-shot events for messages that match the rules."""

    key = "journal"
    entry = ENTRY
    journalctl = "journalctl"

    def __init__(self, conf: dict[str, Any], index: int, ctx: Any) -> None:
        super().__init__(conf, index, ctx)
        origin = f"sources.journal[{index}]"
        self.rules = RuleSet([Rule.from_conf(r, f"{origin}.rules[{i}]")
                              for i, r in enumerate(conf["rules"])])  # fmt: skip
        self.position_key = f"journal:{self.name}"
        self._cursor: str | None = None
        self._saved_cursor: str | None = None
        self._saved_at = 0.0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._batch: EventBatch | None = None
        self._batch_entries = 0
        self._batch_started = 0.0

    # -- the command line -------------------------------------------------------------------
    def where(self) -> list[str]:
        """Which journal: --directory/--file, or this machine's own entries."""
        # --merge: without it --follow implies --boot (systemd 251-253), so entries of the
        # previous boot after our cursor would be skipped after a reboot.
        args = ["--merge"]
        if self.conf.get("directory"):
            return [*args, f"--directory={self.conf['directory']}"]
        if self.conf.get("file"):
            return [*args, f"--file={self.conf['file']}"]
        machine = _machine_id()
        return [*args, f"_MACHINE_ID={machine}"] if machine else args

    def command(self, cursor: str | None) -> list[str]:
        """The journalctl command that follows from `cursor` (or from now)."""
        argv = [self.journalctl, "--follow", "--output=json", "--all", "--quiet", "--no-pager",
                *self.where()]  # fmt: skip
        argv.append(f"--after-cursor={cursor}" if cursor else "--lines=0")
        argv += [f"--unit={u}" for u in self.conf.get("unit") or ()]
        argv += [f"--identifier={t}" for t in self.conf.get("identifier") or ()]
        if self.conf.get("priority"):
            argv.append(f"--priority={self.conf['priority']}")
        return argv

    def tail_cursor(self) -> str | None:
        """The cursor of the newest entry now, so that a first start that is restarted before
        any entry came still continues from here; None for an empty journal."""
        argv = [self.journalctl, "--lines=1", "--output=json", "--quiet", "--no-pager",
                *self.where()]  # fmt: skip
        try:
            done = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise JournalError("journalctl not found: install systemd (it reads the journal)") \
                from None  # fmt: skip
        except subprocess.TimeoutExpired:
            raise JournalError("journalctl gave no answer within 30s") from None
        if done.returncode != 0:
            raise JournalError(f"journalctl failed: {_last_words(done.stderr)}")
        for line in done.stdout.splitlines():
            try:
                return json.loads(line).get("__CURSOR") or None
            except ValueError:
                continue
        return None

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._cursor = self.ctx.position(self.position_key)
        self._saved_cursor = self._cursor
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"source {self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                self._follow()
            except JournalError as exc:
                self.report_failure(str(exc))
            except Exception as exc:  # a bug here must not take the daemon down
                log.debug("source %s raised", self.name, exc_info=True)
                self.report_failure(f"{type(exc).__name__}: {exc}")
            if time.monotonic() - started > 30:
                backoff = 1.0  # it ran for a while: the next failure is news, retry soon
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _follow(self) -> None:
        if self._cursor is None:
            self._cursor = self.tail_cursor()
            if self._cursor is not None:
                self._save_position()
        argv = self.command(self._cursor)
        # journalctl's stderr, read if it fails (an anonymous file: tempfile costs 0.3 MiB)
        with open(os.memfd_create("journalctl-stderr", os.MFD_CLOEXEC), "w+b") as errors:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=errors)  # fmt: skip
            except FileNotFoundError:
                raise JournalError("journalctl not found: install systemd") from None
            with self._lock:
                self._proc = proc
            if self._stopping.is_set():
                proc.kill()
            try:
                self._read(proc)
            finally:
                proc.kill()
                status = proc.wait()
                with self._lock:
                    self._proc = None
                self._flush(force_position=True)
            if self._stopping.is_set():
                return
            errors.seek(0)
            why = _last_words(errors.read())
        if "cursor" in why.lower():
            self._cursor = None  # unusable; start again from the newest entry
            raise JournalError(f"journalctl refused the saved position ({why}); continuing "
                               "from the newest entry")  # fmt: skip
        raise JournalError(f"journalctl stopped (exit status {status}): {why or 'no message'}")

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        pending = b""
        with proc.stdout, selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                if not sel.select(FLUSH_IDLE if self._batch is not None else 1.0):
                    self._flush()
                    self.report_ok()
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    self._entry(line)
                busy_for = time.monotonic() - self._batch_started
                if self._batch_entries >= BATCH_ENTRIES or busy_for > FLUSH_EVERY:
                    self._flush()

    # -- entries into events ----------------------------------------------------------------
    def _entry(self, line: bytes) -> None:
        try:
            entry = json.loads(line)
        except ValueError:
            log.debug("source %s: not JSON from journalctl: %.200r", self.name, line)
            return
        if not isinstance(entry, dict):
            return
        if self._batch is None:
            self._batch = EventBatch(self.key, self.ctx.host, self.ctx.now())
            self._batch_entries = 0
            self._batch_started = time.monotonic()
        self._batch_entries += 1
        cursor = entry.get("__CURSOR")
        if isinstance(cursor, str):
            self._cursor = cursor
        context: dict[str, str] | None = None
        for raw in field_bytes(entry.get("MESSAGE")).split(b"\n"):
            rules = self.rules.match_line(raw)
            if not rules:
                continue
            if context is None:
                context = {
                    "unit": field_text(entry.get("_SYSTEMD_UNIT")),
                    "identifier": field_text(entry.get("SYSLOG_IDENTIFIER") or entry.get("_COMM")),
                    "hostname": field_text(entry.get("_HOSTNAME")),
                }
            for rule in rules:
                self._batch.add(rule, raw[:MAX_LINE], len(raw) > MAX_LINE, context)

    def _flush(self, force_position: bool = False) -> None:
        """Post the batch's events with the cursor after its last entry, in one step."""
        events = self._batch.events() if self._batch is not None else []
        self._batch = None
        moved = self._cursor is not None and self._cursor != self._saved_cursor
        if events:
            self.ctx.post(events, positions={self.position_key: self._cursor} if moved else None)
            if moved:
                self._saved_cursor, self._saved_at = self._cursor, time.monotonic()
        elif moved and (force_position or time.monotonic() - self._saved_at > POSITION_EVERY):
            self._save_position()

    def _save_position(self) -> None:
        self.ctx.post([], positions={self.position_key: self._cursor})
        self._saved_cursor, self._saved_at = self._cursor, time.monotonic()


def _last_words(stderr: bytes) -> str:
    """The last few lines journalctl wrote to stderr, as one line."""
    lines = [x.strip() for x in stderr.decode("utf-8", "replace").splitlines() if x.strip()]
    return "; ".join(lines[-3:])[:500]


SOURCE = JournalSource
