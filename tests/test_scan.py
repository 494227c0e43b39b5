"""`notifier scan`: the configured rules over existing files, like fail2ban-regex."""

from __future__ import annotations

import io
import re

import yaml
from helpers import run_cli

from notifier.config import parse_config
from notifier.scan import configured_rules, run_scan, scan_files
from notifier.sources.matching import RuleSet
from notifier.sources.rules import MAX_LINE

SMTP = {"host": "smtp.example.com", "from": "a@example.com", "to": ["b@example.com"]}
SSH = {
    "name": "ssh-failed",
    "match": r"Failed password for (?P<user>\S+) from (?P<ip>\S+)",
    "key": "{{ ip }}",
    "ignore": [r"from 192\.168\."],
}
DISK = {"name": "disk-error", "match": r"(?P<dev>ata\d+): failed command", "severity": "critical"}
OOM = {"name": "oom", "match": r"Out of memory: Killed process (?P<pid>\d+)"}

LOG = """\
Jan  1 00:00:01 nas01 sshd[1]: Failed password for root from 203.0.113.7 port 22 ssh2
Jan  1 00:00:02 nas01 sshd[1]: Accepted publickey for alice from 192.168.1.2
Jan  1 00:00:03 nas01 kernel: ata3: failed command: READ FPDMA QUEUED
Jan  1 00:00:04 nas01 sshd[1]: Failed password for admin from 198.51.100.9 port 22 ssh2
Jan  1 00:00:05 nas01 sshd[1]: Failed password for bob from 192.168.1.5 port 22 ssh2
Jan  1 00:00:06 nas01 sshd[1]: Failed password for pi from 198.51.100.9 port 22 ssh2
Jan  1 00:00:07 nas01 sshd[1]: Failed password for oracle from 203.0.113.8 port 22 ssh2
"""


def config(tmp_path, **sources) -> dict:
    sources = sources or {
        "logs": [{"path": "/var/log/auth.log", "rules": [SSH, OOM]}],
        "journal": [{"rules": [DISK]}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"smtp": SMTP, "sources": sources}))
    return parse_config(path.read_text(), str(path))


def scan(conf: dict, files: list[str], rule: str | None = None) -> tuple[int, str]:
    out = io.StringIO()
    status = run_scan(conf, files, rule, out)
    return status, out.getvalue()


def test_the_report_counts_each_rule_shows_samples_and_the_speed(tmp_path):
    log = tmp_path / "auth.log"
    log.write_text(LOG)
    status, out = scan(config(tmp_path), [str(log)])
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "3 rule(s) over 1 file(s), 0.0 MB"
    assert lines[2:11] == [
        "ssh-failed (sources.logs[0], warning): 4 matches",  # the 192.168. one is ignored
        "  | " + LOG.splitlines()[0],
        "  |   user='root' ip='203.0.113.7' key='203.0.113.7'",
        "  | " + LOG.splitlines()[3],
        "  |   user='admin' ip='198.51.100.9' key='198.51.100.9'",
        "  | " + LOG.splitlines()[5],
        "  |   user='pi' ip='198.51.100.9' key='198.51.100.9'",
        "oom (sources.logs[0], warning): 0 matches",
        "disk-error (sources.journal[0], critical): 1 match",
    ]
    assert re.fullmatch(r"7 lines, 5 matched, \d+\.\d MB/s", lines[-1])


def test_rule_restricts_the_scan_to_one_rule(tmp_path):
    log = tmp_path / "auth.log"
    log.write_text(LOG)
    status, out = scan(config(tmp_path), [str(log)], rule="disk-error")
    assert status == 0 and "ssh-failed" not in out
    assert out.splitlines()[2] == "disk-error (sources.journal[0], critical): 1 match"
    assert out.splitlines()[-1].startswith("7 lines, 1 matched, ")


def test_an_unknown_rule_or_no_rules_is_status_2_with_the_reason(tmp_path, capsys):
    log = tmp_path / "auth.log"
    log.write_text(LOG)
    assert scan(config(tmp_path), [str(log)], rule="nope") == (2, "")
    assert "no rule named 'nope'" in capsys.readouterr().err
    assert scan(config(tmp_path, disk=[]), [str(log)]) == (2, "")
    assert "has no rules under sources.logs or sources.journal" in capsys.readouterr().err


def test_a_file_that_cannot_be_read_is_status_2_and_the_others_are_scanned(tmp_path, capsys):
    log = tmp_path / "auth.log"
    log.write_text(LOG)
    (tmp_path / "adir").mkdir()
    status, out = scan(
        config(tmp_path), [str(tmp_path / "missing.log"), str(log), str(tmp_path / "adir")]
    )
    assert status == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"notifier scan: cannot read {tmp_path}/missing.log: No such file or directory",
        f"notifier scan: cannot read {tmp_path}/adir: Is a directory",
    ]
    assert out.splitlines()[-1].startswith("7 lines, 5 matched, ")


def test_odd_lines_are_counted_not_fatal(tmp_path):
    log = tmp_path / "odd.log"
    log.write_bytes(
        b"Failed password for \xff\xfe from 203.0.113.1\r\n"
        + b"x" * (MAX_LINE * 2)
        + b" Failed password for late from 1.1.1.1\n"
        + b"\x00\x1b[1mFailed password for nul from 203.0.113.2\n"
        + b"Failed password for last from 203.0.113.3"
    )  # no final newline
    status, out = scan(config(tmp_path), [str(log)])
    assert status == 0
    assert "ssh-failed (sources.logs[0], warning): 3 matches" in out
    assert "user='\ufffd\ufffd' ip='203.0.113.1' key='203.0.113.1'" in out
    assert "  | \\x00\\x1b[1mFailed password for nul from 203.0.113.2" in out
    assert out.splitlines()[-1].startswith("4 lines, 3 matched, ")


def test_forked_workers_count_what_one_process_counts(tmp_path):
    files = []
    for n in range(2):
        log = tmp_path / f"part{n}.log"
        log.write_text(LOG * 3000 + "Out of memory: Killed process 42 (java)\n")
        files.append(str(log))
    ruleset = RuleSet(configured_rules(config(tmp_path)))
    one = scan_files(ruleset, files, workers=1)
    three = scan_files(RuleSet(ruleset.rules), files, workers=3)
    assert (one.lines, one.matched, one.counts) == (3000 * 14 + 2, 3000 * 10 + 2, [24000, 2, 6000])
    assert (three.bytes, three.lines, three.matched, three.counts, three.samples) == (
        one.bytes,
        one.lines,
        one.matched,
        one.counts,
        one.samples,
    )


def test_the_command_line(tmp_path):
    log = tmp_path / "auth.log"
    log.write_text(LOG)
    config(tmp_path)
    done = run_cli("scan", "-c", str(tmp_path / "config.yaml"), "--rule", "ssh-failed", str(log))
    assert done.returncode == 0, done.stderr
    assert "ssh-failed (sources.logs[0], warning): 4 matches" in done.stdout
