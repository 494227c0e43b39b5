"""Header and SMTP injection, judged at the real SMTP server: hostile subjects, bodies, keys,
sources and host labels reach a real daemon, and the catcher checks that every mail has
exactly the intended headers and recipients, and that no extra SMTP command was smuggled."""

from __future__ import annotations

from notifier.control import request, socket_path
from tests.helpers import wait_for

from .rigging import EVIL, check_mail_is_clean

HOSTILE = {
    "crlf-bcc": "disk full\r\nBcc: bcc1@evil.example",
    "lf-to": "disk full\nTo: to2@evil.example\n\nfake body",
    "cr-only": "disk full\rCc: cc3@evil.example",
    "smtp-smuggle": "x\r\n.\r\nMAIL FROM:<m4@evil.example>\r\nRCPT TO:<r4@evil.example>\r\nDATA",
    "bare-lf-dot": "x\n.\nRCPT TO:<r5@evil.example>",
    "unicode-breaks": "x\u2028Bcc: u6@evil.example\u0085Cc: u6b@evil.example\u2029",
    "long-word": "W" * 5000,
    "non-ascii": "Ünïcödé ✓ 日本語 🚨 \u202eevil.example\u202c",
    "header-folding": "x\r\n Bcc: fold7@evil.example",
}
# An RFC 2047 encoded word that decodes to CR LF: Python's email package decodes it when the
# Subject is set and, before 3.11.10, writes the CR LF out raw (CVE-2024-6923).
ENCODED_WORD = "=?utf-8?q?x=0D=0ABcc=3A_ew@evil.example?="


def test_hostile_values_from_send_reach_no_header_and_no_recipient(rig):
    rig.configure(policy={"max_per_hour": 3600, "burst": 100})
    daemon = rig.start()
    for i, (name, value) in enumerate(HOSTILE.items()):
        rig.send(
            f"case-{i:02d} {value}",
            "warning",
            "--key",
            f"key-{i:02d} {value}",
            "--body",
            f"body {name}\r\n.\r\nQUIT\r\n{value}",
            "--source",
            f"src\r\nX-{i}: 1",
        )
    # NUL cannot travel in argv; the socket takes JSON, so it can.
    answer = request(
        socket_path(str(rig.state)),
        {
            "op": "send",
            "event": {
                "source": "send",
                "check": "nul",
                "key": "k\0Bcc: nul@evil.example",
                "severity": "critical",
                "summary": "case-nul x\0\r\nBcc: nul@evil.example",
                "details": {"body": "a\0b"},
            },
        },
    )
    assert answer["ok"], answer
    wanted = [f"case-{i:02d}" for i in range(len(HOSTILE))] + ["case-nul"]

    def all_arrived():
        seen = b"".join(m.data for m in rig.catcher.messages)
        text = " ".join(
            str(m.message["Subject"]) + m.message.get_body(("plain",)).get_content()
            for m in rig.catcher.messages
        )
        return seen and all(w in text for w in wanted)

    wait_for(all_arrived, 30, "every hostile event to be mailed")
    mails = rig.catcher.messages
    for m in mails:
        check_mail_is_clean(m)
    # One MAIL and one RCPT per mail, all to the one configured address: nothing smuggled.
    verbs = rig.catcher.verbs()
    assert verbs.count("MAIL") == verbs.count("DATA") == len(mails)
    rcpts = [c.line for c in rig.catcher.commands if c.verb == "RCPT"]
    assert rcpts == [b"RCPT TO:<admin@example.com>"] * len(mails)
    # The text survives, folded to one line in the subject, intact in the body.
    subjects = " ".join(str(m.message["Subject"]) for m in mails)
    bodies = " ".join(m.message.get_body(("plain",)).get_content() for m in mails)
    assert "Ünïcödé ✓ 日本語 🚨" in subjects + bodies
    assert "W" * 5000 in bodies.replace("\n", "")
    assert "Bcc: bcc1@evil.example" in subjects + bodies  # shown as text, not obeyed
    assert daemon.proc.poll() is None


def test_hostile_host_label_and_test_email_recipient(rig):
    rig.configure(host_label="nas\r\nBcc: host@evil.example")
    rig.start()
    rig.send("from a hostile host label")
    (m,) = rig.catcher.wait_for(1, timeout=20)
    check_mail_is_clean(m)
    assert m.message["Message-ID"].endswith("@nas-bcc-host-evil.example>")
    # --to with a line break must not become a second RCPT: refused before connecting.
    before = len(rig.catcher.connections)
    out = rig.cli(
        "test-email", "-c", str(rig.config), "--to", "admin@example.com\r\nRCPT TO:<t@evil.example>"
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "not an e-mail address" in out.stderr
    assert len(rig.catcher.connections) == before
    assert not any(EVIL.encode() in c.line for c in rig.catcher.commands)


def test_an_encoded_word_in_a_subject_cannot_smuggle_a_header(rig):
    daemon = rig.start()
    rig.send(f"case-ew {ENCODED_WORD}", "critical", "--key", ENCODED_WORD)
    (m,) = rig.catcher.wait_for(1, timeout=20)
    check_mail_is_clean(m)
    assert daemon.proc.poll() is None
