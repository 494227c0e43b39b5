"""`notifier test-email`: one mail now, past the queue, like pfSense's "Test SMTP Settings"."""

from __future__ import annotations

import socket
import sys
import time
from email.utils import parseaddr
from typing import Any

from notifier.mail.message import bare_address, build_message, make_message_id
from notifier.mail.smtp import Envelope, Outcome, SmtpSettings, deliver, explain


def send_test_mail(conf: dict[str, Any], to: list[str] | None, *, verbose: bool = False) -> int:
    """Send a test mail; 0 on success, 1 with one sentence on failure."""
    from notifier.secrets import find_password

    smtp = conf["smtp"]
    settings = SmtpSettings.from_config(smtp)
    rcpts = to or smtp["to"]
    for rcpt in rcpts:  # refuse a bad --to before connecting, in words, not as a server refusal
        try:
            bare_address(rcpt)
        except ValueError as exc:
            print(f"notifier test-email: --to {rcpt!r}: {exc}", file=sys.stderr)
            return 2
    host = conf["host_label"]
    password = None
    if smtp.get("username"):
        try:
            secret = find_password(conf)
        except Exception as exc:
            print(f"notifier test-email: cannot read the SMTP password: {exc}", file=sys.stderr)
            return 1
        if secret is None:
            print(
                "notifier test-email: smtp.username is set but no password was found; run "
                "`notifier set-password`, set smtp.password_file, or give the systemd credential "
                "smtp-password",
                file=sys.stderr,
            )
            return 1
        password = secret.value
        if verbose:
            print(f"password from {secret.origin}", file=sys.stderr)
    text = (
        f"This is a test mail from notifier on {host} ({socket.getfqdn()}).\n\n"
        f"Server: {smtp['host']}:{smtp['port']} ({smtp['security']})\n"
        f"From: {smtp['from']}\nTo: {', '.join(rcpts)}\n\n"
        "If you can read this, alerts will reach you.\n"
    )
    data = build_message(
        mail_from=smtp["from"],
        to=rcpts,
        subject=f"[{host}] notifier test mail",
        text=text,
        html=None,
        message_id=make_message_id(host),
        date=time.time(),
    )
    outcomes: list[Outcome] = []
    debug = (lambda line: print(line, file=sys.stderr)) if verbose else None
    try:
        deliver(
            settings,
            password,
            [Envelope(mail_from=parseaddr(smtp["from"])[1], rcpt_to=list(rcpts), data=data)],
            outcomes.append,
            debug=debug,
        )
    except Exception as exc:
        print(f"notifier test-email: {explain(exc, settings)}", file=sys.stderr)
        return 1
    outcome = outcomes[0] if outcomes else None
    if outcome is None or not outcome.delivered:
        why = outcome.permanent_error if outcome else "no answer"
        print(f"notifier test-email: the server refused the mail: {why}", file=sys.stderr)
        return 1
    accepted = [r for r in rcpts if r not in outcome.refused]
    print(
        f"sent: {smtp['host']}:{smtp['port']} accepted the test mail for {', '.join(accepted)} "
        f"({outcome.reply})"
    )
    for rcpt, why in outcome.refused.items():
        print(f"refused recipient {rcpt}: {why}", file=sys.stderr)
    return 1 if outcome.refused else 0
