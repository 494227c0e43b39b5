"""TLS under attack, judged from the server side: STARTTLS missing or refused (a downgrade),
untrusted and wrong-name certificates, sessions cut mid-way. The password never crosses a
plain connection; no mail goes out unprotected; cut sessions are retried and delivered once."""

from __future__ import annotations

import pytest

from notifier.catcher import Certs
from tests.helpers import wait_for

from .rigging import FaultyProxy, RawSmtp, leaks_in


def assert_password_only_inside_tls(catcher) -> None:
    """Every AUTH happened inside TLS, and no plain-text command carried the password."""
    assert all(a.tls_active for a in catcher.auth_attempts), catcher.auth_attempts
    for command in catcher.commands:
        if not command.tls_active:
            assert not leaks_in(command.line), command
            assert command.verb not in ("AUTH", "MAIL", "RCPT", "DATA"), command


def test_starttls_not_offered_stops_before_auth_and_mail(make_rig):
    rig = make_rig(tls="starttls", starttls_offered=False)
    daemon = rig.start()
    rig.send("must not travel in clear", "critical")
    wait_for(lambda: "did not offer STARTTLS" in daemon.log(), 20, "the refusal in the log")
    verbs = rig.catcher.verbs()
    assert "EHLO" in verbs
    assert not {"AUTH", "MAIL", "RCPT", "DATA"} & set(verbs), verbs
    assert rig.catcher.messages == [] and rig.catcher.auth_attempts == []
    assert_password_only_inside_tls(rig.catcher)
    status = rig.status()
    assert status["outbox"]["depth"] == 1  # kept, not lost
    assert "STARTTLS" in status["last_error"]["error"]


@pytest.mark.parametrize("offer", ["stripped", "refused-454"])
def test_a_downgrading_man_in_the_middle_gets_no_password(rig, offer):
    # A server that offers AUTH in clear and either hides STARTTLS or answers it with 454.
    ehlo = ["AUTH PLAIN LOGIN", "SIZE 10000000"] + (["STARTTLS"] if offer == "refused-454" else [])
    mitm = RawSmtp(ehlo)
    try:
        rig.configure(
            smtp={"host": "127.0.0.1", "port": mitm.port, "security": "starttls", "ca_file": None}
        )
        daemon = rig.start()
        rig.send("must not travel in clear", "critical")
        wait_for(lambda: "delivery failed" in daemon.log(), 20, "a failed attempt")
        verbs = {line.split(b" ", 1)[0].upper() for line in mitm.lines}
        assert b"EHLO" in verbs and not verbs & {b"AUTH", b"MAIL", b"RCPT", b"DATA"}, mitm.lines
        assert not any(leaks_in(line) for line in mitm.lines)
        assert rig.status()["outbox"]["depth"] == 1
    finally:
        mitm.close()


@pytest.mark.parametrize("flaw", ["self-signed", "wrong-name"])
def test_untrusted_or_wrong_name_certificate_is_refused_then_fixed(make_rig, flaw, tmp_path):
    if flaw == "self-signed":
        rig = make_rig(cert=Certs())  # a CA nobody told notifier about
        rig.configure(smtp={"ca_file": None})
    else:
        other = Certs(("mail.example.org",))  # trusted CA, certificate for another name
        rig = make_rig(cert=other)
    daemon = rig.start()
    rig.send("over a trusted channel only", "critical")
    wait_for(lambda: "certificate" in daemon.log(), 20, "the certificate refusal in the log")
    assert "not trusted or for another name" in daemon.log()
    # The handshake failed: the server never got a single SMTP command.
    assert rig.catcher.commands == [] and rig.catcher.messages == []
    status = rig.status()
    assert status["outbox"]["depth"] == 1 and "certificate" in status["last_error"]["error"]
    # The admin fixes the config (the right CA, the right name); the kept mail goes, once.
    fixed = make_rig("fixed")
    rig.configure(smtp={"port": fixed.catcher.port, "ca_file": fixed.catcher.ca_file})
    daemon.signal(1)  # SIGHUP
    (m,) = fixed.catcher.wait_for(1, timeout=20)
    assert "over a trusted channel only" in m.message["Subject"] and m.tls
    assert_password_only_inside_tls(fixed.catcher)


def test_tls_session_cut_mid_way_is_retried_and_delivered_once(rig):
    proxy = FaultyProxy(rig.catcher.port)
    try:
        proxy.mode, proxy.after = "reset", 1400  # past the handshake and AUTH, inside DATA
        rig.configure(smtp={"port": proxy.port})
        daemon = rig.start()
        rig.send("survives a cut", "critical")
        wait_for(lambda: len(proxy.accepted) >= 2, 30, "two cut attempts")
        assert "will retry" in daemon.log()
        assert rig.catcher.messages == []
        cut = [c for c in rig.catcher.connections if "DATA" in [x.verb for x in c.commands]]
        assert cut, "the cut sessions reached DATA (the cut was mid-session, inside TLS)"
        proxy.mode = "pass"
        (m,) = rig.catcher.wait_for(1, timeout=30)
        assert "survives a cut" in m.message["Subject"]
        wait_for(lambda: rig.status()["outbox"]["depth"] == 0, 15, "an empty outbox")
        assert len(rig.catcher.messages) == 1
        assert_password_only_inside_tls(rig.catcher)
    finally:
        proxy.close()


def test_server_drops_after_receiving_data_is_the_one_duplicate_window(rig):
    """The server has the whole mail but its 250 never arrives: notifier cannot know, retries,
    and a real server would then hold two copies. Measured: exactly one extra copy per drop."""
    rig.catcher.drop_after_data = True
    daemon = rig.start()
    rig.send("sent twice at most", "critical")
    wait_for(lambda: rig.catcher.unacknowledged, 20, "a received but unacknowledged mail")
    wait_for(lambda: "will retry" in daemon.log(), 20, "a transient failure")
    rig.catcher.drop_after_data = False
    (m,) = rig.catcher.wait_for(1, timeout=20)
    wait_for(lambda: rig.status()["outbox"]["depth"] == 0, 15, "an empty outbox")
    assert len(rig.catcher.messages) == 1
    assert len(rig.catcher.unacknowledged) == 1
    assert rig.catcher.unacknowledged[0].message["Message-ID"] == m.message["Message-ID"]
