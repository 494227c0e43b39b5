"""The SMTP client against real aiosmtpd servers on 127.0.0.1 (notifier.catcher)."""

from __future__ import annotations

import email
import email.policy
import socket

import pytest
from helpers import wait_for
from smtpservers import (
    FROM,
    PASSWORD,
    TO,
    USER,
    ClosingServer,
    SilentServer,
    free_port,
    make_envelope,
    password_forms,
)

from notifier.catcher import Certs
from notifier.config import parse_config
from notifier.mail.message import build_message, make_message_id
from notifier.mail.smtp import (
    Envelope,
    Outcome,
    SmtpError,
    SmtpSession,
    SmtpSettings,
    deliver,
    explain,
)


def send_all(settings, password, envelopes, debug=None) -> list[Outcome]:
    outcomes: list[Outcome] = []
    deliver(settings, password, envelopes, outcomes.append, debug=debug)
    return outcomes


def refused(settings, password=PASSWORD) -> SmtpError:
    with pytest.raises(SmtpError) as info:
        send_all(settings, password, [make_envelope()])
    return info.value


# -- the good paths -------------------------------------------------------------------------
def test_implicit_tls_with_auth_delivers(tls_catcher):
    [outcome] = send_all(tls_catcher.settings(), PASSWORD, [make_envelope(ref=7)])
    assert outcome.delivered and outcome.ref == 7 and outcome.permanent_error is None
    assert outcome.reply.startswith("250 ")
    [msg] = tls_catcher.wait_for(1)
    assert msg.auth_user == USER and msg.tls and msg.tls_active_at_auth is True
    assert msg.mail_from == "alerts@example.com" and msg.rcpt_tos == [TO]
    assert msg.message["Subject"] == "disk /srv at 91%"
    assert all(c.tls_active for c in tls_catcher.commands)


def test_required_starttls_with_auth_delivers(starttls_catcher):
    [outcome] = send_all(starttls_catcher.settings(), PASSWORD, [make_envelope()])
    assert outcome.delivered
    [msg] = starttls_catcher.wait_for(1)
    assert msg.tls and msg.tls_active_at_auth is True
    in_clear = [c.verb for c in starttls_catcher.commands if not c.tls_active]
    assert in_clear == ["EHLO", "STARTTLS"]
    assert [a.tls_active for a in starttls_catcher.auth_attempts] == [True]


@pytest.mark.parametrize("pipelining", [True, False])
def test_one_session_carries_three_mails(tls_catcher, pipelining):
    tls_catcher.pipelining = pipelining
    caught_when_reported = []

    def on_outcome(outcome: Outcome) -> None:
        caught_when_reported.append((outcome.ref, len(tls_catcher.messages)))

    envelopes = [make_envelope(subject=f"mail {i}", ref=i) for i in (1, 2, 3)]
    deliver(tls_catcher.settings(), PASSWORD, envelopes, on_outcome)
    # Reported only after the server's 250: one at a time right after it; pipelined after
    # the next write, so the server may have taken the next mail too by then.
    assert [ref for ref, _ in caught_when_reported] == [1, 2, 3]
    for ref, caught in caught_when_reported:
        assert caught == ref or (pipelining and caught == ref + 1), caught_when_reported
    assert len(tls_catcher.connections) == 1
    # A transaction that ended with the server's answer to the message needs no RSET.
    transaction = ["MAIL", "RCPT", "DATA"]
    assert tls_catcher.verbs() == ["EHLO", "AUTH", *transaction * 3, "QUIT"]
    assert [m.message["Subject"] for m in tls_catcher.messages] == ["mail 1", "mail 2", "mail 3"]
    # Seen from the server: with PIPELINING, MAIL and RCPT arrived together with DATA, before
    # their answers; without it, each command waited for the answer to the one before.
    envelope_commands = [c for c in tls_catcher.commands if c.verb in ("MAIL", "RCPT", "DATA")]
    assert [c.more_waiting for c in envelope_commands] == [pipelining, pipelining, False] * 3


def test_pipelined_group_for_several_recipients(tls_catcher):
    to = ["a@example.com", "b@example.com", "c@example.com"]
    [outcome] = send_all(tls_catcher.settings(), PASSWORD, [make_envelope(to=to)])
    assert outcome.delivered
    group = [c for c in tls_catcher.commands if c.verb in ("MAIL", "RCPT", "DATA")]
    assert [c.verb for c in group] == ["MAIL", "RCPT", "RCPT", "RCPT", "DATA"]
    assert [c.more_waiting for c in group] == [True, True, True, True, False]


def test_no_envelopes_no_connection(tls_catcher):
    assert send_all(tls_catcher.settings(), PASSWORD, []) == []
    assert tls_catcher.connections == []


def test_message_bytes_survive_dot_stuffing(plain_catcher):
    text = ".\n..two dots\n.\r\nFrom the start\n" + "é" * 300 + "\n"
    env = make_envelope(text=text, html=None)
    [outcome] = send_all(plain_catcher.settings(), None, [env])
    assert outcome.delivered
    [msg] = plain_catcher.wait_for(1)
    assert msg.data == env.data
    assert msg.message.get_content().replace("\r\n", "\n") == text.replace("\r\n", "\n")


def test_several_recipients_one_rcpt_each(tls_catcher):
    to = ["a@example.com", "b@example.com", "c@example.com"]
    [outcome] = send_all(tls_catcher.settings(), PASSWORD, [make_envelope(to=to)])
    assert outcome.delivered and outcome.refused == {}
    assert tls_catcher.verbs().count("RCPT") == 3
    assert tls_catcher.wait_for(1)[0].rcpt_tos == to


# -- TLS and certificates -------------------------------------------------------------------
def test_starttls_not_offered_fails_closed(make_catcher):
    catcher = make_catcher(tls="starttls", starttls_offered=False, auth={USER: PASSWORD})
    error = refused(catcher.settings())
    assert not error.transient
    assert str(error).startswith(f"127.0.0.1:{catcher.port} did not offer STARTTLS; refusing")
    assert "security: tls" in str(error)
    # From the server side: the client looked, then left; no login, no mail.
    verbs = catcher.verbs()
    assert verbs[0] == "EHLO" and verbs[-1] == "QUIT"
    assert not {"AUTH", "MAIL", "RCPT", "DATA"} & set(verbs)
    assert catcher.auth_attempts == [] and catcher.messages == []
    wire = b"\n".join(c.line for c in catcher.commands)
    assert not any(form.encode() in wire for form in password_forms())


@pytest.mark.parametrize("tls", ["tls", "starttls"])
def test_private_ca_is_trusted_only_with_ca_file(make_catcher, tls):
    catcher = make_catcher(tls=tls, auth={USER: PASSWORD})
    error = refused(catcher.settings(ca_file=None))
    assert not error.transient
    assert str(error).startswith("certificate of 127.0.0.1 not trusted or for another name:")
    assert "self-signed" in str(error) or "unable to get local issuer" in str(error)
    assert str(error).endswith("set smtp.ca_file")
    assert catcher.auth_attempts == [] and "MAIL" not in catcher.verbs()
    # The same server, with its CA named in ca_file, is fine.
    assert send_all(catcher.settings(), PASSWORD, [make_envelope()])[0].delivered


@pytest.mark.parametrize("tls", ["tls", "starttls"])
def test_certificate_for_another_name_refused(make_catcher, tls):
    other = Certs(["mail.example.org"])
    try:
        catcher = make_catcher(tls=tls, auth={USER: PASSWORD}, cert=other)
        # Its CA is trusted; only the name is wrong (localhost, 127.0.0.1 vs mail.example.org).
        error = refused(catcher.settings(host="localhost"))
        assert not error.transient
        assert "not trusted or for another name" in str(error)
        assert "Hostname mismatch" in str(error)
        assert catcher.auth_attempts == [] and "MAIL" not in catcher.verbs()
    finally:
        other.cleanup()


def test_unreadable_ca_file_is_explained(tls_catcher, tmp_path):
    error = refused(tls_catcher.settings(ca_file=str(tmp_path / "missing.pem")))
    assert not error.transient and "cannot load smtp.ca_file" in str(error)
    assert tls_catcher.connections == []


def test_tls_client_on_plain_port_says_check_port(plain_catcher):
    error = refused(plain_catcher.settings(security="tls", ca_file=None), password=None)
    assert not error.transient
    assert "does not speak TLS here" in str(error) and "465 is tls" in str(error)


# -- authentication and the password --------------------------------------------------------
def test_wrong_password_explains_app_password(tls_catcher):
    error = refused(tls_catcher.settings(), password="not-the-password")
    assert not error.transient and error.code == 535
    assert str(error).startswith("authentication failed (535 ")
    assert str(error).endswith(
        "check smtp.username, and use an app password if the account has 2-step verification"
    )
    assert [a.success for a in tls_catcher.auth_attempts] == [False]
    assert "MAIL" not in tls_catcher.verbs()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("password_ok", [True, False])
def test_debug_dialogue_never_contains_the_password(make_catcher, mechanism, password_ok):
    server_password = PASSWORD if password_ok else "something else"
    catcher = make_catcher(tls="tls", auth={USER: server_password}, auth_mechanisms=(mechanism,))
    lines: list[str] = []
    session = SmtpSession(catcher.settings(), PASSWORD, debug=lines.append)
    text = []
    try:
        with session:
            text.append(repr(session.send(make_envelope())))
    except SmtpError as exc:
        text += [str(exc), repr(exc), repr(exc.args)]
    assert [a.success for a in catcher.auth_attempts] == [password_ok]  # it really was sent
    assert f"C: AUTH {mechanism} ********" in lines
    assert any(line.startswith("S: 235" if password_ok else "S: 535") for line in lines)
    assert "C: MAIL FROM:<alerts@example.com> SIZE=" in "\n".join(lines) or not password_ok
    everything = "\n".join(lines + text + [repr(session), repr(catcher.settings())])
    for form in password_forms():
        assert form not in everything


def test_security_none_with_password_is_refused_before_connecting(plain_catcher):
    error = refused(plain_catcher.settings(), password="secret")
    assert not error.transient and "security: none" in str(error)
    assert "secret" not in str(error)
    assert plain_catcher.connections == []


def test_username_without_password_is_refused(tls_catcher):
    error = refused(tls_catcher.settings(), password=None)
    assert not error.transient and "no password found for smtp.username" in str(error)
    assert tls_catcher.connections == []


def test_server_requiring_login_without_username(tls_catcher):
    error = refused(tls_catcher.settings(username=None), password=None)
    assert not error.transient and error.code == 530 and "requires a login" in str(error)


# -- failures of the network ----------------------------------------------------------------
def test_connection_refused_is_transient():
    port = free_port()
    error = refused(SmtpSettings("127.0.0.1", port, "tls"), password=None)
    assert error.transient
    assert str(error) == (
        f"connection refused by 127.0.0.1:{port} (is the server running / the port right?)"
    )


def test_silent_server_times_out_transient():
    with SilentServer() as server:
        error = refused(SmtpSettings("127.0.0.1", server.port, "starttls", timeout=0.3), None)
    assert error.transient and str(error).startswith(
        f"timed out talking to 127.0.0.1:{server.port}"
    )


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_connection_reset_is_transient(security):
    with ClosingServer() as server:
        error = refused(SmtpSettings("127.0.0.1", server.port, security), password=None)
    assert server.accepted == 1
    assert error.transient and "closed the connection unexpectedly (connecting)" in str(error)


def test_unknown_host_is_transient():
    error = refused(SmtpSettings("nonexistent.invalid", 465, "tls", timeout=5), password=None)
    assert error.transient and str(error).startswith("cannot resolve nonexistent.invalid")


def test_drop_after_data_is_transient(tls_catcher):
    tls_catcher.drop_after_data = True
    outcomes: list[Outcome] = []
    with pytest.raises(SmtpError) as info:
        deliver(tls_catcher.settings(), PASSWORD, [make_envelope()], outcomes.append)
    assert info.value.transient and "closed the connection unexpectedly" in str(info.value)
    assert outcomes == []  # no 250 seen: the mail stays queued (at-least-once)
    assert len(tls_catcher.unacknowledged) == 1


# -- answers about one mail -----------------------------------------------------------------
def test_refused_recipient_among_two(tls_catcher):
    tls_catcher.reject_rcpt = {"gone@example.com"}
    to = ["gone@example.com", TO]
    [outcome] = send_all(tls_catcher.settings(), PASSWORD, [make_envelope(to=to)])
    assert outcome.delivered and outcome.permanent_error is None
    assert list(outcome.refused) == ["gone@example.com"]
    assert outcome.refused["gone@example.com"].startswith("550 5.1.1")
    assert tls_catcher.wait_for(1)[0].rcpt_tos == [TO]


@pytest.mark.parametrize("pipelining", [True, False])
def test_all_recipients_refused_is_permanent_and_session_goes_on(tls_catcher, pipelining):
    tls_catcher.pipelining = pipelining
    tls_catcher.reject_rcpt = {"gone@example.com"}
    envelopes = [make_envelope(to=["gone@example.com"], ref=1), make_envelope(ref=2)]
    first, second = send_all(tls_catcher.settings(), PASSWORD, envelopes)
    assert not first.delivered and "every recipient was refused" in first.permanent_error
    assert second.delivered
    assert len(tls_catcher.messages) == 1 and len(tls_catcher.connections) == 1
    # The refused transaction is cleared with RSET before the next one; DATA went out only
    # inside the pipelined group (and was answered 503: no valid recipients).
    verbs = tls_catcher.verbs()
    assert verbs.count("RSET") == 1 and verbs.index("RSET") < verbs.index("MAIL", 3)
    assert verbs.count("DATA") == (2 if pipelining else 1)


def test_354_without_a_valid_recipient_gets_only_the_dot(tls_catcher):
    """RFC 2920 3.1: a server may accept DATA although every RCPT failed; a pipelining client
    must then send the lone dot, not the message."""
    tls_catcher.reject_rcpt = {"gone@example.com"}
    tls_catcher.data_without_rcpt = True
    envelopes = [make_envelope(to=["gone@example.com"], ref=1), make_envelope(ref=2)]
    first, second = send_all(tls_catcher.settings(), PASSWORD, envelopes)
    assert not first.delivered and "every recipient was refused" in first.permanent_error
    assert tls_catcher.content_without_rcpt == [0]  # not one line of the message
    assert second.delivered and len(tls_catcher.messages) == 1


def test_deferred_recipient_among_two_is_reported(tls_catcher):
    tls_catcher.defer_rcpt = {"later@example.com"}
    [outcome] = send_all(
        tls_catcher.settings(), PASSWORD, [make_envelope(to=["later@example.com", TO])]
    )
    assert outcome.delivered and outcome.deferred["later@example.com"].startswith("450")
    tls_catcher.defer_rcpt = {TO}
    with pytest.raises(SmtpError) as info:
        send_all(tls_catcher.settings(), PASSWORD, [make_envelope()])
    assert info.value.transient


@pytest.mark.parametrize("pipelining", [True, False])
def test_451_to_data_is_transient_after_reported_outcomes(tls_catcher, pipelining):
    tls_catcher.pipelining = pipelining
    outcomes: list[Outcome] = []

    def on_outcome(outcome: Outcome) -> None:
        outcomes.append(outcome)
        tls_catcher.fail_data_with = "451 4.3.0 Try again later"

    envelopes = [make_envelope(ref=i) for i in (1, 2, 3)]
    with pytest.raises(SmtpError) as info:
        deliver(tls_catcher.settings(), PASSWORD, envelopes, on_outcome)
    assert info.value.transient and info.value.code == 451
    assert "451 4.3.0 Try again later" in str(info.value)
    assert [o.ref for o in outcomes] == [1] and len(tls_catcher.messages) == 1
    if pipelining:
        # Mail 3's MAIL, RCPT and DATA went with mail 2's message; the server said 354 to it.
        # Only dropping the connection (no dot, no QUIT) keeps an empty mail from going.
        assert tls_catcher.verbs()[-3:] == ["MAIL", "RCPT", "DATA"]
        wait_for(lambda: tls_catcher.connections[0].closed, 10, "the dropped connection")
        assert not tls_catcher.unacknowledged and len(tls_catcher.messages) == 1
    else:
        assert tls_catcher.verbs()[-1] == "QUIT"  # the session was fine: polite goodbye


def test_5xx_to_data_is_permanent_for_that_mail(tls_catcher):
    tls_catcher.fail_data_with = "554 5.7.1 Message rejected as spam"
    [outcome] = send_all(tls_catcher.settings(), PASSWORD, [make_envelope()])
    assert not outcome.delivered and "554 5.7.1" in outcome.permanent_error


@pytest.mark.parametrize("pipelining", [True, False])
def test_message_refused_in_the_middle_the_session_goes_on(tls_catcher, pipelining):
    tls_catcher.pipelining = pipelining
    replies = {1: "554 5.7.1 Message rejected as spam", 2: None}

    def on_outcome(outcome: Outcome) -> None:
        outcomes.append(outcome)
        tls_catcher.fail_data_with = replies.get(outcome.ref)

    outcomes: list[Outcome] = []
    envelopes = [make_envelope(subject=f"mail {i}", ref=i) for i in (1, 2, 3)]
    deliver(tls_catcher.settings(), PASSWORD, envelopes, on_outcome)
    assert [(o.ref, o.delivered) for o in outcomes] == [(1, True), (2, False), (3, True)]
    assert "554 5.7.1" in outcomes[1].permanent_error
    assert [m.message["Subject"] for m in tls_catcher.messages] == ["mail 1", "mail 3"]
    assert len(tls_catcher.connections) == 1 and "RSET" not in tls_catcher.verbs()


@pytest.mark.parametrize("pipelining", [True, False])
def test_sender_refused_is_permanent_for_that_mail(tls_catcher, pipelining):
    tls_catcher.pipelining = pipelining
    tls_catcher.fail_mail_with = "553 5.7.1 Sender address rejected: not owned by user"
    outcomes: list[Outcome] = []

    def on_outcome(outcome: Outcome) -> None:
        outcomes.append(outcome)
        tls_catcher.fail_mail_with = None

    deliver(
        tls_catcher.settings(), PASSWORD, [make_envelope(ref=1), make_envelope(ref=2)], on_outcome
    )
    first, second = outcomes
    assert not first.delivered and "553 5.7.1" in first.permanent_error
    assert second.delivered and len(tls_catcher.messages) == 1
    verbs = tls_catcher.verbs()
    assert verbs.count("DATA") == (2 if pipelining else 1) and verbs.count("RSET") == 1


def test_421_is_transient(tls_catcher):
    tls_catcher.fail_mail_with = "421 4.7.0 Too many connections, closing"
    error = refused(tls_catcher.settings())
    assert error.transient and error.code == 421 and "closing the connection" in str(error)


# -- what the recipient gets ----------------------------------------------------------------
def test_header_injection_at_the_real_server(plain_catcher):
    data = build_message(
        mail_from="nas01\r\nBcc: evil@example.net <alerts@example.com>",
        to=[TO],
        subject="disk\r\nBcc: evil@example.net",
        text="body\r\nBcc: evil@example.net\r\n",
        html=None,
        message_id=make_message_id("nas01\r\nBcc: evil@example.net"),
        in_reply_to="<root@nas01>\r\nBcc: evil@example.net",
        references=["<root@nas01>\nBcc: evil@example.net"],
        extra_headers={"X-Notifier-Alert": "disk\r\nBcc: evil@example.net"},
    )
    env = Envelope(mail_from=FROM, rcpt_to=[TO], data=data)
    assert send_all(plain_catcher.settings(), None, [env])[0].delivered
    [msg] = plain_catcher.wait_for(1)
    assert msg.rcpt_tos == [TO]
    assert sorted(msg.message.keys()) == sorted([
        "Date", "Message-ID", "From", "To", "Subject", "In-Reply-To", "References",
        "Auto-Submitted", "X-Auto-Response-Suppress", "X-Notifier-Alert", "MIME-Version",
        "Content-Type", "Content-Transfer-Encoding",
    ])  # fmt: skip
    assert msg.message["Subject"] == "disk Bcc: evil@example.net"
    assert msg.message["To"] == TO
    assert msg.message["From"].addresses[0].addr_spec == "alerts@example.com"
    assert msg.message["In-Reply-To"] == "<root@nas01Bcc:evil@example.net>"
    reparsed = email.message_from_bytes(msg.data, policy=email.policy.default)
    assert reparsed.get_all("Bcc") is None


def test_bad_envelope_address_is_permanent_for_that_mail(plain_catcher):
    env = make_envelope()
    env.rcpt_to = ["admin@example.com>\r\nRCPT TO:<evil@example.net"]
    [outcome] = send_all(plain_catcher.settings(), None, [env])
    assert not outcome.delivered and "bad envelope address" in outcome.permanent_error
    assert not any(b"evil" in c.line for c in plain_catcher.commands)


# -- the catcher itself ----------------------------------------------------------------------
def test_catcher_keeps_mail_in_maildir(make_catcher, tmp_path):
    catcher = make_catcher(maildir=tmp_path / "caught", tls="starttls")
    envelopes = [make_envelope(subject=f"mail {i}") for i in (1, 2)]
    send_all(catcher.settings(), None, envelopes)
    assert sorted(p.name for p in (tmp_path / "caught").iterdir()) == ["0001.eml", "0002.eml"]
    assert (tmp_path / "caught" / "0002.eml").read_bytes() == envelopes[1].data
    assert [m.auth_user for m in catcher.wait_for(2)] == [None, None]


# -- settings and explanations --------------------------------------------------------------
def test_settings_from_config():
    conf = parse_config(
        "smtp:\n  host: smtp.example.com\n  security: starttls\n  username: a@example.com\n"
        "  from: nas <a@example.com>\n  to: [b@example.com]\n  timeout: 10s\n",
        check_templates=False,
    )
    settings = SmtpSettings.from_config(conf["smtp"])
    assert settings == SmtpSettings(
        "smtp.example.com", 587, "starttls", "a@example.com", None, 10.0
    )


def test_explain_gives_one_sentence_for_any_exception():
    settings = SmtpSettings("smtp.example.com", 465, "tls")
    assert explain(socket.gaierror(-2, "Name or service not known"), settings).startswith(
        "cannot resolve smtp.example.com"
    )
    assert explain(ConnectionRefusedError(111, "refused"), settings).startswith(
        "connection refused by smtp.example.com:465"
    )
    assert (
        explain(TimeoutError("timed out"), settings) == "timed out talking to smtp.example.com:465"
    )
    error = SmtpError("authentication failed (535 x): check", transient=False, code=535)
    assert explain(error, settings) == str(error)
