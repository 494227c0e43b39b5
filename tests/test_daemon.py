"""The whole path through the real daemon subprocess to a real TLS SMTP server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
import yaml

from notifier.catcher import Catcher, Certs
from tests.helpers import (
    REPO,
    DaemonProcess,
    run_cli,
    smtp_section,
    status_json,
    wait_for,
    write_config,
)

PASSWORD = "s3cret-Pa55-word"


@pytest.fixture
def catcher(tmp_path):
    with Catcher(tmp_path / "mail", tls="tls", auth={"alerts@example.com": PASSWORD}) as c:
        yield c


@pytest.fixture
def setup(tmp_path, catcher):
    pw = tmp_path / "smtp-password"
    pw.write_text(PASSWORD + "\n")
    os.chmod(pw, 0o600)
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "config.yaml",
        smtp_section(catcher, username="alerts@example.com", password_file=str(pw)),
        state,
    )
    return config, state


@pytest.fixture
def daemon(tmp_path, setup):
    config, state = setup
    d = DaemonProcess(config, state, tmp_path / "daemon.log").wait_ready()
    yield d
    d.stop()


def send(config, *args):
    out = run_cli("send", "-c", str(config), *args)
    assert out.returncode == 0, out.stderr
    return out


def test_send_through_the_daemon_arrives_as_a_proper_mail(daemon, catcher, setup):
    config, _ = setup
    send(
        config,
        "--severity",
        "critical",
        "--subject",
        "UPS on battery",
        "--body",
        "power lost",
        "--source",
        "nut",
        "--key",
        "ups01",
    )
    (m,) = catcher.wait_for(1)
    msg = m.message
    assert m.tls and m.tls_active_at_auth and m.auth_user == "alerts@example.com"
    assert m.rcpt_tos == ["admin@example.com"] and m.mail_from == "alerts@example.com"
    assert msg["Subject"] == "[nas01] CRITICAL: UPS on battery"
    for header in ("Date", "Message-ID", "From", "To"):
        assert msg[header], header
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "UPS on battery" in text and "power lost" in text and "UPS on battery" in html
    wait_for(lambda: "delivered mail" in daemon.log(), 10, "the delivery log line")


def test_problem_and_resolved_share_a_thread(daemon, catcher, setup):
    config, _ = setup
    common = ("--source", "disk", "--check", "usage", "--key", "/srv")
    send(
        config,
        "--severity",
        "warning",
        "--subject",
        "/srv is 85% full",
        "--state",
        "problem",
        *common,
    )
    catcher.wait_for(1)
    send(
        config,
        "--severity",
        "warning",
        "--subject",
        "/srv is 86% full",
        "--state",
        "problem",
        *common,
    )
    send(
        config,
        "--severity",
        "info",
        "--subject",
        "/srv is 60% full",
        "--state",
        "resolved",
        *common,
    )
    first, resolved = catcher.wait_for(2)
    assert resolved.message["Subject"] == "[nas01] RESOLVED: /srv is 60% full"
    root = first.message["Message-ID"]
    assert resolved.message["In-Reply-To"] == root and root in resolved.message["References"]
    assert len(catcher.messages) == 2  # the repeated problem was deduplicated


def test_header_injection_through_send_adds_no_header_and_no_recipient(daemon, catcher, setup):
    config, _ = setup
    send(
        config,
        "--severity",
        "warning",
        "--subject",
        "disk\r\nBcc: x@evil.example\r\nX-Evil: 1",
        "--key",
        "k\nBcc: y@evil.example",
    )
    (m,) = catcher.wait_for(1)
    assert m.rcpt_tos == ["admin@example.com"]
    assert "Bcc" not in m.message and "X-Evil" not in m.message
    assert "\n" not in m.message["Subject"] and "evil" in m.message["Subject"]


def test_send_without_daemon_is_spooled_and_delivered_by_the_next_run(tmp_path, setup, catcher):
    config, state = setup
    out = send(config, "--severity", "warning", "--subject", "backup failed")
    assert "not running" in out.stderr
    assert catcher.messages == []
    d = DaemonProcess(config, state, tmp_path / "daemon.log").wait_ready()
    try:
        (m,) = catcher.wait_for(1)
        assert "backup failed" in m.message["Subject"]
    finally:
        assert d.stop() == 0


def test_kill_9_with_smtp_down_then_restart_delivers_exactly_once(tmp_path):
    certs_dir = tmp_path / "mail"
    certs = Certs(("localhost", "127.0.0.1"))
    with Catcher(certs_dir, tls="tls", cert=certs) as down:
        port = down.port  # the server is down; its port and CA are what the config names
    state = tmp_path / "state"
    smtp = {
        "host": "localhost",
        "port": port,
        "security": "tls",
        "ca_file": str(certs.ca_file),
        "from": "a@example.com",
        "to": ["b@example.com"],
        "timeout": "5s",
    }
    config = write_config(tmp_path / "config.yaml", smtp, state)
    d = DaemonProcess(config, state, tmp_path / "d1.log").wait_ready()
    send(config, "--severity", "critical", "--subject", "pool degraded")
    wait_for(lambda: "delivery failed" in d.log(), 15, "a failed delivery attempt")
    d.kill9()
    assert status_json(config)["outbox"]["depth"] == 1
    with Catcher(certs_dir, tls="tls", cert=certs, port=port) as up:
        d2 = DaemonProcess(config, state, tmp_path / "d2.log").wait_ready()
        up.wait_for(1, timeout=15)
        wait_for(lambda: status_json(config)["outbox"]["depth"] == 0, 10, "an empty outbox")
        assert d2.stop() == 0
        d3 = DaemonProcess(config, state, tmp_path / "d3.log").wait_ready()
        send(config, "--severity", "info", "--subject", "marker")
        up.wait_for(2, timeout=15)
        assert d3.stop() == 0
        subjects = [m.message["Subject"] for m in up.messages]
        assert subjects == ["[nas01] CRITICAL: pool degraded", "[nas01] INFO: marker"]
    certs.cleanup()


def test_status_running_and_stopped(daemon, catcher, setup):
    config, _ = setup
    send(config, "--severity", "warning", "--subject", "s1", "--state", "problem", "--key", "k1")
    catcher.wait_for(1)
    wait_for(lambda: status_json(config)["last_delivery"], 10, "a recorded delivery")
    live = status_json(config)
    assert live["running"] is True
    assert [a["key"] for a in live["active_alerts"]] == ["k1"]
    text = run_cli("status", "-c", str(config)).stdout
    assert "Active alerts: 1" in text and "Last delivery" in text
    assert daemon.stop() == 0
    offline = status_json(config)
    assert offline["running"] is False and offline["active_alerts"][0]["key"] == "k1"
    assert PASSWORD not in text and PASSWORD not in str(offline)


def test_sighup_with_an_invalid_config_keeps_the_old_one(daemon, catcher, setup):
    config, _ = setup
    good = config.read_text()
    config.write_text(good + "\nbogus_key: 1\n")
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in daemon.log(), 10, "the reload to be refused")
    assert "bogus_key" in daemon.log()
    out = send(config, "--severity", "info", "--subject", "after bad reload")
    assert "problem(s)" in out.stderr
    catcher.wait_for(1)
    # a valid reload takes effect: mail now goes to a new address
    config.write_text(good.replace("admin@example.com", "oncall@example.com"))
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "reloaded" in daemon.log(), 10, "the reload")
    send(config, "--severity", "info", "--subject", "after good reload")
    second = catcher.wait_for(2)[1]
    assert second.rcpt_tos == ["oncall@example.com"]
    assert daemon.proc.poll() is None


def test_sigterm_and_sigint_exit_zero(tmp_path, setup):
    config, state = setup
    for sig in (signal.SIGTERM, signal.SIGINT):
        d = DaemonProcess(config, state, tmp_path / f"{sig}.log").wait_ready()
        d.signal(sig)
        assert d.proc.wait(timeout=20) == 0
        d._log.close()
        assert not (state / "notifier.sock").exists()


def test_control_socket_refuses_garbage_and_is_private(daemon, setup):
    _, state = setup
    path = state / "notifier.sock"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    for payload in (b"not json\n", b'{"op": 1}\n', b"x" * 70000 + b"\n", b'{"op": "steal"}\n'):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(path))
            try:
                s.sendall(payload)
            except BrokenPipeError:
                continue
            answer = s.makefile("rb").readline()
            assert b'"ok": false' in answer
    assert daemon.proc.poll() is None


def test_check_and_bad_config_exit_codes(tmp_path, setup):
    config, _ = setup
    ok = run_cli("check", "-c", str(config))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK" in ok.stdout and "password found in file" in ok.stdout
    assert PASSWORD not in ok.stdout + ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "smtp:\n  host: x.example.com\n  port: 99999\n  from: a@b.example\n  to: [c@d.example]\n"
        "  password: hunter2\npolicy:\n  group_wiat: 5s\n"
    )
    out = run_cli("check", "-c", str(bad))
    assert out.returncode == 2
    assert f"{bad}:3: smtp.port: must be 1..65535, got 99999" in out.stderr
    assert f"{bad}:6: smtp.password:" in out.stderr and "set-password" in out.stderr
    assert f"{bad}:8: policy.group_wiat: unknown option; did you mean 'group_wait'?" in out.stderr
    assert "Traceback" not in out.stderr and "hunter2" not in out.stderr


def test_message_survives_parsing_with_strict_policy(daemon, catcher, setup):
    config, _ = setup
    send(config, "--severity", "warning", "--subject", "Ünïcödé disk ✓ " + "x" * 300)
    (m,) = catcher.wait_for(1)
    import email

    parsed = email.message_from_bytes(m.data, policy=email.policy.strict)
    assert parsed["Subject"].startswith("[nas01] WARNING: Ünïcödé disk ✓")
    assert all(len(line) <= 998 for line in m.data.split(b"\r\n"))


def test_a_deferred_recipient_gets_the_mail_later_and_a_refused_one_is_recorded(tmp_path, catcher):
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    os.chmod(pw, 0o600)
    state = tmp_path / "state"
    to = ["admin@example.com", "busy@example.com", "gone@example.com"]
    config = write_config(
        tmp_path / "c.yaml",
        smtp_section(catcher, username="alerts@example.com", password_file=str(pw), to=to),
        state,
    )
    catcher.defer_rcpt = {"busy@example.com"}
    catcher.reject_rcpt = {"gone@example.com"}
    d = DaemonProcess(config, state, tmp_path / "d.log").wait_ready()
    try:
        send(config, "--severity", "warning", "--subject", "raid degraded")
        (first,) = catcher.wait_for(1)
        assert first.rcpt_tos == ["admin@example.com"]
        wait_for(
            lambda: "gone@example.com" in d.log() and "deferred" in d.log(), 10, "the log lines"
        )
        catcher.defer_rcpt = set()
        second = catcher.wait_for(2, timeout=20)[1]
        assert second.rcpt_tos == ["busy@example.com"]
        assert second.message["Message-ID"] == first.message["Message-ID"]
        import sqlite3

        with sqlite3.connect(state / "spool.db") as db:
            refused = [r[0] for r in db.execute("SELECT refused FROM delivered ORDER BY id")]
        assert refused[0] and "gone@example.com" in refused[0]
    finally:
        d.stop()


def test_release_free_memory_gives_freed_heap_pages_back(tmp_path):
    """What the daemon does 10 s after start and after a reload: memory the start-up freed in
    the middle of glibc's heap (which free() keeps) goes back to the kernel."""
    code = """
import os
from notifier.memory import release_free_memory
def rss(): return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
blocks = [bytes(4000) for _ in range(5000)]  # 20 MB from malloc's heap, not mmap
pin = bytes(4000)  # above them: the freed blocks are not at the top, free() cannot trim them
del blocks[:]
before = rss()
print(release_free_memory(), (before - rss()) // 2**20)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    trimmed, released_mib = done.stdout.split()
    if trimmed == "False":
        pytest.skip("not glibc: no malloc_trim")
    assert int(released_mib) >= 15


def test_check_reads_ca_file_with_openssl(tmp_path, setup):
    """The daemon checks only that smtp.ca_file looks like PEM (so ssl is not loaded before
    the first mail); `notifier check` reads it with OpenSSL and names what is wrong."""
    config, _ = setup
    fake = tmp_path / "fake-ca.pem"
    fake.write_text("-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n")
    text = config.read_text()
    config.write_text(text.replace(yaml.safe_load(text)["smtp"]["ca_file"], str(fake)))
    out = run_cli("check", "-c", str(config))
    assert out.returncode == 2, out.stdout + out.stderr
    said = out.stdout + out.stderr
    assert "smtp.ca_file: cannot load smtp.ca_file" in said, said
    assert "Traceback" not in said
    notpem = tmp_path / "notpem.pem"
    notpem.write_text("just text\n")
    config.write_text(text.replace(yaml.safe_load(text)["smtp"]["ca_file"], str(notpem)))
    out = run_cli("check", "-c", str(config))
    assert (
        out.returncode == 2 and "holds no CA certificate in PEM format" in out.stdout + out.stderr
    )
