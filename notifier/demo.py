"""`notifier demo`: the whole path on this machine, with no account.

A local SMTP server with TLS and AUTH catches the mail; the real daemon runs
as a subprocess with a generated config; a few real events go in (`send`, a
burst of log lines, a problem and its resolution, a storm that hits the rate
limit); the caught mails are listed and kept as .eml files.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

DEMO_CONFIG = """\
# Written by `notifier demo`; a real config looks the same (see config.yaml.example).
host_label: demo-nas
state_dir: {dir}/state
smtp:
  host: localhost
  port: {port}
  security: tls
  username: demo
  password_file: {dir}/smtp-password
  ca_file: {ca_file}
  from: "demo-nas <notifier@demo.example>"
  to: [admin@demo.example]
  timeout: 10s
policy:
  group_wait: 1s
  repeat_interval: 4h
  send_resolved: true
  max_per_hour: 360      # one mail every 10 s on average ...
  burst: 4               # ... after 4 back to back
sources:
  logs:
    - name: auth
      path: {dir}/auth.log
      rules:
        - name: ssh-failed-password
          match: 'Failed password for (?:invalid user )?(?P<user>\\S+) from (?P<ip>\\S+)'
          severity: warning
          key: "{{{{ ip }}}}"
"""


def _say(text: str) -> None:
    print(text, flush=True)


def _notifier(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "notifier", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _send(config: Path, severity: str, subject: str, **options: str) -> None:
    """`notifier send` as a script would run it; options become --name value."""
    flags = [arg for name, value in options.items() for arg in (f"--{name}", value)]
    _notifier(config, "send", "--severity", severity, "--subject", subject, *flags)


def _wait(catcher: object, n: int, timeout: float, what: str) -> None:
    try:
        catcher.wait_for(n, timeout=timeout)  # type: ignore[attr-defined]
    except Exception:
        raise SystemExit(
            f"demo: {what}: expected {n} mail(s) within {timeout:.0f}s, the catcher has "
            f"{len(catcher.messages)}; see the daemon's log above"
        ) from None  # type: ignore[attr-defined]


def run_demo(directory: str | None = None, *, verbose: bool = False) -> int:
    import logging

    from notifier.catcher import Catcher
    from notifier.control import request, socket_path

    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's chatter
    base = Path(directory or tempfile.mkdtemp(prefix="notifier-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    maildir = base / "mail"
    password = secrets.token_urlsafe(16)
    with Catcher(maildir, tls="tls", auth={"demo": password}) as catcher:
        (base / "smtp-password").write_text(password + "\n")
        os.chmod(base / "smtp-password", 0o600)
        (base / "auth.log").write_text("")
        config = base / "config.yaml"
        config.write_text(DEMO_CONFIG.format(dir=base, port=catcher.port, ca_file=catcher.ca_file))
        os.chmod(config, 0o600)
        _say(
            f"notifier demo: a local SMTP server with TLS and AUTH is listening on "
            f"localhost:{catcher.port}"
        )
        check = _notifier(config, "check")
        if check.returncode != 0:
            print(check.stdout + check.stderr, file=sys.stderr)
            return 1
        log_path = base / "daemon.log"
        with open(log_path, "w") as daemon_log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "notifier", "run", "-c", str(config)]
                + (["-v"] if verbose else []),
                stdout=daemon_log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if request(socket_path(str(base / "state")), {"op": "ping"}, timeout=2).get(
                        "ok"
                    ):
                        break
                except OSError:
                    pass
                if daemon.poll() is not None or time.monotonic() > deadline:
                    print(log_path.read_text(), file=sys.stderr)
                    raise SystemExit("demo: the daemon did not start")
                time.sleep(0.05)
            _say(f"notifier demo: the daemon runs (pid {daemon.pid}), config {config}\n")

            _say(
                "1. a script reports an event:  notifier send --severity critical --subject 'UPS on battery'"
            )
            _send(
                config,
                "critical",
                "UPS ups01 on battery",
                source="nut",
                key="ups01",
                body="Input power lost at 14:02.",
            )
            _wait(catcher, 1, 20, "the send")

            _say("2. 40 failed SSH logins from two addresses land in auth.log within a second")
            with open(base / "auth.log", "a") as f:
                for i in range(40):
                    ip = "203.0.113.7" if i % 8 else "198.51.100.23"
                    f.write(
                        f"Dec  3 14:02:{i:02d} nas sshd[{900 + i}]: Failed password for root "
                        f"from {ip} port {40000 + i} ssh2\n"
                    )
            _wait(catcher, 2, 20, "the log burst")

            _say("3. a disk fills up, then is cleaned up: a problem and its resolution, one thread")
            disk = {"source": "disk", "check": "usage", "key": "/srv"}
            _send(config, "warning", "/srv is 85% full", **disk, state="problem")
            _wait(catcher, 3, 20, "the problem")
            _send(config, "info", "/srv is 61% full", **disk, state="resolved")
            _wait(catcher, 4, 20, "the resolution")

            _say(
                "4. a storm: the rate limit (burst 4, then one mail per 10 s) folds the rest into a digest"
            )
            for _round in range(3):
                for k in range(5):
                    _send(config, "warning", f"backup job {k} failed", source="cron", key=f"job{k}")
                time.sleep(1.2)  # paced like a real storm: each burst its own group
            _wait(catcher, 5, 30, "the digest")
            status = _notifier(config, "status")
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
        _say("\nThe mails the server caught:")
        for i, m in enumerate(catcher.messages, 1):
            msg = m.message
            thread = f"  (reply to {msg['In-Reply-To']})" if msg["In-Reply-To"] else ""
            _say(f"  {i}. {msg['Subject']}{thread}")
        if len(catcher.messages) > 1:
            burst = catcher.messages[1].message
            _say("\nMail 2, the log burst, as text (the HTML part is in the .eml):")
            _say(textwrap.indent(burst.get_body(("plain",)).get_content().strip(), "  | "))
        _say("\n`notifier status`:\n" + textwrap.indent(status.stdout.strip(), "  "))
        _say(f"\nThe mails are in {maildir} as .eml files; the daemon's log is {log_path}.")
        _say(
            "Next: copy config.yaml.example to /etc/notifier/config.yaml, run `notifier test-email`."
        )
    return 0
