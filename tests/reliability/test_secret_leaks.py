"""The password never leaks: every path that handles it runs with one distinctive password,
and every log line, status output, `-v` dialogue, error text and spool byte is grepped for it
and its base64 forms (the rig greps its whole directory after each test, too)."""

from __future__ import annotations

import pytest

from tests.helpers import wait_for

from .rigging import PASSWORD, USER, RawSmtp, assert_no_secret


def test_test_email_dialogue_and_every_command_output(rig):
    ok = rig.cli("test-email", "-c", str(rig.config), "-v")
    assert ok.returncode == 0, ok.stderr
    assert "AUTH PLAIN ********" in ok.stderr or "AUTH LOGIN ********" in ok.stderr, ok.stderr
    outputs = [ok.stdout + ok.stderr]
    for args in (("check",), ("status",), ("status", "--json"), ("test-email", "-vv")):
        out = rig.cli(*args[:1], "-c", str(rig.config), *args[1:])
        outputs.append(out.stdout + out.stderr)
    for text in outputs:
        assert_no_secret(text, "CLI output")
    (m,) = rig.catcher.wait_for(1)
    assert_no_secret(m.data, "the mail")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_a_server_that_echoes_the_credentials_back_gets_them_masked(rig, smtp_certs, mechanism):
    echo = RawSmtp(
        [f"AUTH {mechanism}"],
        tls=smtp_certs.server_context(),
        auth_reply="535 5.7.8 Authentication failed for {line}",
    )
    try:
        rig.configure(
            smtp={
                "host": "localhost",
                "port": echo.port,
                "security": "tls",
                "ca_file": smtp_certs.ca_file,
            }
        )
        out = rig.cli("test-email", "-c", str(rig.config), "-v")
        assert out.returncode == 1 and "authentication failed" in out.stderr, out.stderr
        assert "********" in out.stderr
        assert_no_secret(out.stdout + out.stderr, "test-email -v against an echoing server")
        daemon = rig.start(args=("-v",))
        rig.send("goes nowhere", "warning")
        wait_for(lambda: "authentication failed" in daemon.log(), 20, "the failed login in the log")
        status = rig.status()
        assert "authentication failed" in status["last_error"]["error"]
        assert_no_secret(daemon.log(), "the daemon log")
        assert_no_secret(repr(status), "status")
        assert any(line.startswith(b"AUTH") for line in echo.lines)  # it did log in, inside TLS
    finally:
        echo.close()


def test_verbose_daemon_and_a_wrong_password(make_rig, tmp_path):
    rig = make_rig(auth={USER: PASSWORD + "-but-not-this"})  # the server expects another one
    daemon = rig.start(args=("-v",))
    rig.send("wrong password", "critical")
    wait_for(lambda: "authentication failed" in daemon.log(), 20, "the 535 in the log")
    assert "app password" in daemon.log()
    out = rig.cli("status", "-c", str(rig.config))
    assert "authentication failed" in out.stdout
    for text in (daemon.log(), out.stdout + out.stderr):
        assert_no_secret(text, "daemon log / status")


def test_set_password_and_the_keyring_path(rig):
    rig.configure(smtp={"password_file": None})
    out = rig.cli("set-password", "-c", str(rig.config), input=PASSWORD + "\n")
    assert out.returncode == 0, out.stderr
    assert_no_secret(out.stdout + out.stderr, "set-password output")
    check = rig.cli("check", "-c", str(rig.config))
    assert check.returncode == 0 and "keyring" in check.stdout, check.stdout + check.stderr
    assert_no_secret(check.stdout + check.stderr, "check output")
    daemon = rig.start()
    rig.send("via the keyring", "info")
    (m,) = rig.catcher.wait_for(1, timeout=20)
    assert m.auth_user == USER
    assert_no_secret(daemon.log(), "daemon log")
