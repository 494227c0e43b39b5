"""`notifier demo`, the README's first command, runs to the end and shows what it promises."""

from __future__ import annotations

import email
import email.policy

from tests.helpers import run_cli


def test_demo_runs_and_catches_every_kind_of_mail(tmp_path):
    out = run_cli("demo", "--dir", str(tmp_path / "demo"), timeout=180, cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    emls = sorted((tmp_path / "demo" / "mail").glob("*.eml"))
    assert len(emls) >= 5
    msgs = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in emls]
    subjects = [m["Subject"] for m in msgs]
    assert subjects[0] == "[demo-nas] CRITICAL: UPS ups01 on battery"
    assert subjects[1] == "[demo-nas] 2 alerts: 2 warning"  # 40 log lines, two addresses
    body = msgs[1].get_body(("plain",)).get_content()
    assert "35 times" in body and "5 times" in body
    assert (
        subjects[3].startswith("[demo-nas] RESOLVED:")
        and msgs[3]["In-Reply-To"] == msgs[2]["Message-ID"]
    )
    assert subjects[4].startswith("[demo-nas] digest: ") and subjects[4].endswith("(rate limit)")
    assert "mail.log" not in out.stdout + out.stderr
