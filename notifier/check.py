"""`notifier check`: is this config ready to run? Templates, secret, files, all at once."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from notifier.events import Severity
from notifier.policy import CLEARED, HAPPENED, NEW, REMINDER, Item, Mail

log = logging.getLogger("notifier")

EXIT_PROBLEMS = 2


def sample_mails(host: str) -> list[Mail]:
    """One mail of every shape the daemon sends, with made-up but realistic items."""
    now = time.time()
    disk = Item(
        "disk",
        "usage",
        "/srv",
        NEW,
        int(Severity.CRITICAL),
        "/srv is 92% full",
        {
            "used": "920.0 GiB",
            "total": "1000.0 GiB",
            "free": "80.0 GiB",
            "percent": 92.0,
            "threshold": "critical at 90%",
            "trend": "+1.2 GiB in 5m",
        },
        1,
        now - 60,
        now - 60,
        since=now - 60,
        previous_severity=int(Severity.WARNING),
        host=host,
    )
    ssh = Item(
        "logs",
        "ssh-failed-password",
        "203.0.113.7",
        HAPPENED,
        int(Severity.WARNING),
        "Failed password for root from 203.0.113.7",
        {
            "ip": "203.0.113.7",
            "user": "root",
            "path": "/var/log/auth.log",
            "line": "sshd[812]: Failed password for root from 203.0.113.7 port 22 ssh2",
        },
        57,
        now - 300,
        now - 13,
        host=host,
    )
    reminder = Item(
        "services",
        "systemd",
        "smbd.service",
        REMINDER,
        int(Severity.CRITICAL),
        "smbd.service failed",
        {"result": "exit-code"},
        1,
        now - 4 * 3600,
        now,
        since=now - 4 * 3600,
        host=host,
    )
    resolved = Item(
        "disk",
        "usage",
        "/srv",
        CLEARED,
        int(Severity.INFO),
        "/srv is 71% full",
        {"percent": 71.0},
        1,
        now,
        now,
        since=now - 7200,
        previous_severity=int(Severity.CRITICAL),
        host=host,
    )
    mails = [Mail("alert", [i], now, "<sample@notifier>") for i in (disk, ssh, reminder, resolved)]
    mails.append(Mail("alert", [disk, ssh, reminder], now, "<sample@notifier>"))
    mails.append(
        Mail(
            "digest",
            [ssh, disk, reminder, resolved],
            now,
            "<sample@notifier>",
            held_since=now - 1800,
        )
    )
    return mails


def check_everything(conf: dict[str, Any], say: Callable[[str], None]) -> int:
    """Print a short summary; return 0 when ready, 2 with every problem listed otherwise."""
    from notifier.mail.render import Renderer
    from notifier.secrets import file_warnings, find_password

    problems: list[str] = []
    filename = conf["_file"]
    lines = conf.get("_lines", {})

    def at(key: str) -> str:
        """`config.yaml:7: smtp.password_file`: where a problem found after parsing sits."""
        return f"{filename}:{lines[key]}: {key}" if lines.get(key) else f"{filename}: {key}"

    renderer = Renderer(conf["templates_dir"], conf["host_label"])
    for mail in sample_mails(conf["host_label"]):
        for exc in renderer.problems(mail):
            where = f"{conf['templates_dir']}/{exc}"
            if where not in problems:
                problems.append(where)
    smtp = conf["smtp"]
    secret_line = "no password needed (no smtp.username)"
    if smtp.get("username"):
        from_file = smtp.get("password_file") and not os.environ.get("CREDENTIALS_DIRECTORY")
        try:
            secret = find_password(conf)
        except Exception as exc:  # a clear message naming the file, never the value
            secret = None
            key = "smtp.password_file" if from_file else "smtp.username"
            problems.append(f"{at(key)}: the password cannot be read: {exc}")
        else:
            if secret is None:
                problems.append(
                    f"{at('smtp.username')}: is set but no password was found: run `notifier "
                    f"set-password -c {filename}`, set smtp.password_file, or give the systemd "
                    f"credential smtp-password"
                )
            else:
                secret_line = f"password found in {secret.origin}"
    if smtp.get("ca_file"):
        from notifier.mail.smtp_errors import SmtpError
        from notifier.mail.tls import tls_context

        try:
            tls_context(smtp["ca_file"])  # OpenSSL's own reading, as a session will do it
        except SmtpError as exc:
            problems.append(f"{at('smtp.ca_file')}: {exc}")
    if smtp.get("password_file"):
        # Other users able to read the password is a problem, not a remark.
        problems += [
            f"{at('smtp.password_file')}: {w}" for w in file_warnings(smtp["password_file"])
        ]
    warnings = file_warnings(filename)
    for w in warnings:
        log.warning("%s", w)
    if problems:
        for p in problems:
            say(p)
        say(f"{filename}: {len(problems)} problem(s)")
        return EXIT_PROBLEMS
    srcs = [
        f"{k}[{e.get('name') or i}]"
        for k, entries in conf["sources"].items()
        for i, e in enumerate(entries)
    ]
    say(f"{filename}: OK")
    say(
        f"  mail: {smtp['host']}:{smtp['port']} ({smtp['security']}) from {smtp['from']} "
        f"to {', '.join(smtp['to'])}; {secret_line}"
    )
    p = conf["policy"]
    say(
        f"  policy: group_wait {p['group_wait']:g}s, repeat every {p['repeat_interval']:g}s, "
        f"at most {p['max_per_hour']} mails/hour (burst {p['burst']})"
    )
    say(
        f"  templates: {'overrides in ' + conf['templates_dir'] if conf['templates_dir'] else 'built-in'}"
        f" (all rendered with sample events)"
    )
    say(f"  sources: {', '.join(srcs) if srcs else 'none (only `notifier send`)'}")
    say(f"  state: {conf['state_dir']}")
    if warnings:
        say(f"  {len(warnings)} warning(s) above")
    return 0
