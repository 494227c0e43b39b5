"""From the policy's Mail to the bytes that go into the outbox: rendered with the templates, and
still a mail (plain, ASCII if need be) when the templates or the encoder fail."""

from __future__ import annotations

import logging
import time
from typing import Any

from notifier.events import Severity
from notifier.policy import Mail

log = logging.getLogger("notifier.mail")


def compose(mail: Mail, renderer: Any, smtp: dict[str, Any], host: str) -> bytes:
    """The RFC 5322 bytes of `mail` from `smtp.from` to `smtp.to`; never raises for its text."""
    from notifier.mail.message import build_message

    try:
        subject, text, html = renderer.render(mail)
    except Exception as exc:  # even the built-in templates failed: still say something
        log.exception("rendering mail failed")
        subject = f"[{host}] {len(mail.items)} alert(s) (template error)"
        text = f"The mail template failed ({exc}); the raw items follow.\n\n" + "\n".join(
            f"{str(Severity(i.severity)).upper()} {i.summary} ({i.count}x)" for i in mail.items
        )
        html = None
    headers = {
        "mail_from": smtp["from"],
        "to": smtp["to"],
        "message_id": mail.message_id,
        "in_reply_to": mail.in_reply_to,
        "references": mail.references,
        "date": time.time(),
    }
    try:
        return build_message(subject=subject, text=text, html=html, **headers)
    except Exception:  # text the mail encoder refuses: a mail in plain ASCII still goes out
        log.exception("building the mail failed; sending it as plain ASCII text")
        ascii_only = [
            t.encode("ascii", "backslashreplace").decode("ascii").replace("=?", "= ?")
            for t in (subject, text)
        ]
        return build_message(subject=ascii_only[0], text=ascii_only[1], html=None, **headers)


def summary(mail: Mail) -> str:
    """One line for the outbox, the log and `status`."""
    if len(mail.items) == 1:
        item = mail.items[0]
        return f"{item.kind} {item.source}/{item.check}/{item.key}: {item.summary}"[:200]
    return f"{mail.kind}: {len(mail.items)} alerts, {mail.total_events} events"
