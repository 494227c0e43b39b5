"""`notifier scan`: the configured log rules over existing files, like fail2ban-regex.

Per rule: how many lines it matched and the first few, with what the groups captured; then
the totals and the speed. It runs the daemon's RuleSet, so what it shows is what the daemon
would alert on.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from notifier.sources.matching import RuleSet
from notifier.sources.rules import Rule, default_summary, line_text
from notifier.sources.tail import complete_lines

RULE_SOURCES = ("logs", "journal")  # the sources whose entries carry `rules:`
SAMPLES = 3
SPLIT_ABOVE = 32 << 20  # inputs bigger than this are scanned by one process per CPU
MAX_WORKERS = 4
SCAN_READ = 8 << 20  # bytes per read: bigger than the daemon's, a one-off scan may use RAM


@dataclass
class Tally:
    """What the report says: bytes and lines read, lines matched, per rule a count and samples."""

    rules: int
    keep: int = SAMPLES
    bytes: int = 0
    lines: int = 0
    matched: int = 0
    counts: list[int] = field(default_factory=list)
    samples: list[list[tuple[bytes, bool]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * self.rules
        self.samples = self.samples or [[] for _ in range(self.rules)]

    def scan(self, ruleset: RuleSet, data: bytes) -> None:
        """Count the complete lines in `data`."""
        wanted = [r for r in range(self.rules) if len(self.samples[r]) < self.keep]
        part = ruleset.count(data, wanted, self.keep)
        self.bytes += len(data)
        self.lines += part.lines
        self.matched += part.matched
        for r, n in enumerate(part.counts):
            self.counts[r] += n
        for r, lines in part.samples.items():
            self.samples[r] = (self.samples[r] + lines)[: self.keep]

    def add(self, other: Tally) -> None:
        """Add what `other` counted over later lines (its samples come after ours)."""
        self.bytes += other.bytes
        self.lines += other.lines
        self.matched += other.matched
        for r in range(self.rules):
            self.counts[r] += other.counts[r]
            self.samples[r] = (self.samples[r] + other.samples[r])[: self.keep]


def configured_rules(conf: dict[str, Any], name: str | None = None) -> list[Rule]:
    """Every rule of every `sources.logs` and `sources.journal` entry (only `name`, if given)."""
    rules = []
    for source in RULE_SOURCES:
        for i, entry in enumerate(conf.get("sources", {}).get(source) or []):
            for rule in entry.get("rules") or []:
                if name is None or rule["name"] == name:
                    rules.append(Rule.from_conf(rule, origin=f"sources.{source}[{i}]"))
    return rules


def scan_range(path: str, start: int, end: int | None, ruleset: RuleSet, tally: Tally) -> None:
    """Count the lines of `path` from byte `start` (a line start) to `end` into `tally`."""
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        left = end - start if end is not None else None
        pending, skip = b"", False
        while True:
            block = f.read(SCAN_READ if left is None else min(SCAN_READ, left))
            if left is not None:
                left -= len(block)
            buf = pending + block if pending else block
            data, used, skip = complete_lines(buf, skip, final=not block)
            pending = buf[used:]
            if data:
                tally.scan(ruleset, data)
            if not block:
                return


def _ranges(files: list[str], parts: int) -> list[tuple[str, int, int | None]]:
    """The files cut into about `parts` pieces of similar size, each starting a line."""
    sizes = {f: os.path.getsize(f) for f in files}
    piece = max(sum(sizes.values()) // parts, 1)
    out: list[tuple[str, int, int | None]] = []
    for path in files:
        cuts = [0]
        with open(path, "rb") as f:
            for at in range(piece, sizes[path] - piece // 2, piece):
                f.seek(at)
                f.readline()  # to the start of the next line
                if f.tell() > cuts[-1] and f.tell() < sizes[path]:
                    cuts.append(f.tell())
        out += [(path, a, b) for a, b in zip(cuts, [*cuts[1:], None], strict=True)]
    return out


def scan_files(ruleset: RuleSet, files: list[str], workers: int = 1) -> Tally:
    """Count the lines of `files`; with `workers` > 1, in that many forked processes."""
    tally = Tally(len(ruleset.rules))
    # Pieces smaller than a worker's share: one that is slowed down (a busy CPU) takes fewer.
    ranges = _ranges(files, workers * 8) if workers > 1 else [(f, 0, None) for f in files]
    parts = _scan_forked(ranges, ruleset, workers) if workers > 1 else {}
    for i, key in enumerate(ranges):  # in file order, so the samples are the first lines
        part = parts.get(i)
        if part is None:  # one process, or a child that failed: here, then
            part = Tally(len(ruleset.rules))
            scan_range(*key, ruleset, part)
        tally.add(part)
    return tally


def _scan_forked(
    ranges: list[tuple[str, int, int | None]], ruleset: RuleSet, workers: int
) -> dict[int, Tally]:
    """The ranges scanned by `workers` child processes, each taking the next range as it is
    free (their indexes come through one pipe); what the children sent back, by index."""
    tasks_read, tasks_write = os.pipe()
    children = []
    for _ in range(workers):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: scan, send the tallies, leave without any cleanup
            try:
                os.close(read_end)
                os.close(tasks_write)
                parts = {}
                while len(task := os.read(tasks_read, 4)) == 4:  # 4 bytes: one atomic read
                    i = int.from_bytes(task, "little")
                    parts[i] = Tally(len(ruleset.rules))
                    scan_range(*ranges[i], ruleset, parts[i])
                with os.fdopen(write_end, "wb") as out:
                    pickle.dump(parts, out)
            finally:
                os._exit(0)
        os.close(write_end)
        children.append((pid, read_end))
    os.close(tasks_read)
    indexes = [i.to_bytes(4, "little") for i in range(len(ranges))]
    for at in range(0, len(indexes), 1024):  # writes of at most PIPE_BUF: each one atomic
        os.write(tasks_write, b"".join(indexes[at : at + 1024]))
    os.close(tasks_write)
    done: dict[int, Tally] = {}
    for pid, read_end in children:
        with os.fdopen(read_end, "rb") as inp:
            data = inp.read()
        os.waitpid(pid, 0)
        try:
            done.update(pickle.loads(data))
        except (EOFError, pickle.UnpicklingError, ValueError):
            pass  # that child failed; its ranges are scanned again in the parent
    return done


def run_scan(conf: dict[str, Any], files: list[str], rule: str | None, out: TextIO) -> int:
    """Scan `files` with the configured rules and print the report; the exit status."""
    rules = configured_rules(conf, rule)
    if not rules:
        known = sorted({r.name for r in configured_rules(conf)})
        if rule is not None:
            print(
                f"notifier scan: no rule named {rule!r} in {conf.get('_file', 'the config')}; "
                f"its rules: {', '.join(known) or 'none'}",
                file=sys.stderr,
            )
        else:
            print(
                f"notifier scan: {conf.get('_file', 'the config')} has no rules under "
                f"sources.logs or sources.journal; nothing to scan",
                file=sys.stderr,
            )
        return 2
    status = 0
    started = time.perf_counter()
    readable = []
    for path in files:
        try:
            with open(path, "rb") as f:
                f.read(1)
            readable.append(path)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            hint = "; run as root or check the path" if isinstance(exc, PermissionError) else ""
            print(f"notifier scan: cannot read {path}: {reason}{hint}", file=sys.stderr)
            status = 2
    big = sum(os.path.getsize(p) for p in readable) > SPLIT_ABOVE
    workers = min(len(os.sched_getaffinity(0)), MAX_WORKERS) if big else 1
    tally = scan_files(RuleSet(rules), readable, workers)
    _report(rules, tally, readable, max(time.perf_counter() - started, 1e-9), out)
    return status


def _report(rules: list[Rule], tally: Tally, files: list[str], elapsed: float, out: TextIO) -> None:
    size = sum(os.path.getsize(f) for f in files if os.path.isfile(f))
    out.write(f"{len(rules)} rule(s) over {len(files)} file(s), {size / 1e6:.1f} MB\n\n")
    for r, rule in enumerate(rules):
        count = tally.counts[r]
        matches = f"{count} match" + ("" if count == 1 else "es")
        out.write(f"{rule.name} ({rule.origin}, {rule.severity}): {matches}\n")
        for raw, cut in tally.samples[r]:
            out.write(f"  | {default_summary(line_text(raw, cut))}\n")
            groups = rule.groups(raw) or {}
            shown = [f"{k}={v!r}" for k, v in groups.items()]
            if rule.key.text:
                values = dict.fromkeys(rule.key.variables, "")  # path, unit: not known here
                values |= {**groups, "line": line_text(raw, cut), "rule": rule.name}
                try:
                    shown.append(f"key={rule.key.render(values)!r}")
                except Exception as exc:  # shown, not fatal: scan is where one finds out
                    shown.append(f"key: template failed ({exc})")
            if shown:
                out.write(f"  |   {' '.join(shown)}\n")
    rate = tally.bytes / 1e6 / elapsed
    out.write(f"\n{tally.lines} lines, {tally.matched} matched, {rate:.1f} MB/s\n")
