"""Log format on a real pipe (as a terminal and as journald's stream) and secret masking."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from notifier import logsetup

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "hunter2-Correct'Horse\\Battery"
USER = "alerts@example.com"

SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from notifier.logsetup import setup_logging, register_secret
    setup_logging(int(sys.argv[1]))
    if len(sys.argv) > 2:
        register_secret(sys.argv[2], username=sys.argv[3] if len(sys.argv) > 3 else None)
    log = logging.getLogger("notifier.test")
    log.debug("debug line")
    log.info("info line")
    log.warning("warning line")
    log.error("error line")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    """
)


def run_logging(
    verbosity: int, journal: str | None = None, args: tuple[str, ...] = (), script: str = SCRIPT
) -> str:
    """Run `script` with stderr on a real pipe; JOURNAL_STREAM "match" names that pipe."""
    read_fd, write_fd = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["PYTHONPATH"] = str(REPO)
    if journal == "match":
        st = os.fstat(write_fd)
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    elif journal is not None:
        env["JOURNAL_STREAM"] = journal
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(verbosity), *args],
            stderr=write_fd,
            stdout=subprocess.DEVNULL,
            env=env,
        )
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, encoding="utf-8") as pipe:
        out = pipe.read()
    assert proc.wait(timeout=30) == 0, out
    return out


def test_terminal_format_has_timestamps_and_levels():
    out = run_logging(0)
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert re.search(rf"^{stamp} INFO notifier\.test: info line$", out, re.M), out
    assert re.search(rf"^{stamp} WARNING notifier\.test: warning line$", out, re.M), out
    assert re.search(rf"^{stamp} ERROR notifier\.test: error line$", out, re.M), out
    assert "debug line" not in out
    assert "<4>" not in out and "<6>" not in out
    assert "ValueError: boom" in out


def test_journal_format_has_priorities_on_every_line():
    out = run_logging(1, journal="match")
    lines = out.splitlines()
    assert "<7>notifier.test: debug line" in lines
    assert "<6>notifier.test: info line" in lines
    assert "<4>notifier.test: warning line" in lines
    assert "<3>notifier.test: error line" in lines
    # journald reads the priority per line: a traceback line without it would be "info".
    assert "<3>ValueError: boom" in lines
    assert all(re.match(r"<[0-7]>", line) for line in lines), out
    assert not re.search(r"\d\d:\d\d:\d\d", out), "the journal adds its own timestamp"


def test_stale_journal_stream_is_ignored():
    # The variable is inherited, but stderr was redirected elsewhere (`notifier run 2>file`).
    out = run_logging(0, journal="1:1")
    assert "<4>" not in out
    assert re.search(r"\d\d:\d\d:\d\d WARNING notifier\.test: warning line", out), out


def test_quiet_shows_warnings_and_errors_only():
    out = run_logging(-1, journal="match")
    assert "info line" not in out
    assert "debug line" not in out
    assert "<4>notifier.test: warning line" in out


def test_secret_is_masked_in_messages_arguments_and_tracebacks():
    script = textwrap.dedent(
        """
        import base64, logging, sys
        from notifier.logsetup import setup_logging, register_secret
        setup_logging(1)
        pw, user = sys.argv[2], sys.argv[3]
        register_secret(pw, username=user)
        log = logging.getLogger("notifier.mail")
        plain = base64.b64encode(("\\0" + user + "\\0" + pw).encode()).decode()
        login = base64.b64encode(pw.encode()).decode()
        other = base64.b64encode(("\\0someone.else@example.net\\0" + pw).encode()).decode()
        log.info("password is %s", pw)
        log.info(f"inline {pw}")
        log.debug("send: %r", f"AUTH PLAIN {plain}\\r\\n")
        log.debug("send: %r", f"{login}\\r\\n")
        log.debug("send: 'AUTH PLAIN %s'", other)
        log.debug("repr of a dict: %r", {"password": pw})
        try:
            raise RuntimeError(f"login failed for {pw}")
        except RuntimeError:
            log.exception("smtp error")
        log.info("unrelated text stays")
        """
    )
    out = run_logging(1, args=(PASSWORD, USER), script=script)
    assert "unrelated text stays" in out
    assert out.count(logsetup.MASK) >= 7, out
    assert PASSWORD not in out
    assert repr(PASSWORD)[1:-1] not in out
    assert base64.b64encode(PASSWORD.encode()).decode() not in out
    assert base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode() not in out
    # The other username's AUTH PLAIN: the characters that encode the password are gone.
    for core in logsetup._b64_cores(PASSWORD.encode()):
        assert core not in out
    assert "RuntimeError: login failed for ********" in out


@pytest.fixture
def clean_secrets():
    saved = logsetup._secrets
    logsetup._secrets = ()
    yield
    logsetup._secrets = saved


def test_redact_in_process(clean_secrets):
    assert logsetup.redact("nothing registered") == "nothing registered"
    logsetup.register_secret("s3cr3t-value", username="me")
    assert logsetup.redact("x s3cr3t-value y") == "x ******** y"
    login = base64.b64encode(b"s3cr3t-value").decode()
    plain = base64.b64encode(b"\0me\0s3cr3t-value").decode()
    assert logsetup.redact(f"AUTH LOGIN {login}") == "AUTH LOGIN ********"
    assert logsetup.redact(f"AUTH PLAIN {plain}") == "AUTH PLAIN ********"
    logsetup.register_secret("")  # ignored, not a mask for every empty string
    assert logsetup.redact("plain words") == "plain words"
