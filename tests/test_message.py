"""Building messages: exact headers, no header injection, valid bytes for any text."""

from __future__ import annotations

import email
import email.policy
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.mail.message import bare_address, build_message, make_message_id

BASE_HEADERS = ["Date", "Message-ID", "From", "To", "Subject", "Auto-Submitted",
                "X-Auto-Response-Suppress", "MIME-Version", "Content-Type"]  # fmt: skip


def build(**overrides) -> bytes:
    args = dict(
        mail_from="nas01 <alerts@example.com>",
        to=["admin@example.com"],
        subject="disk /srv at 91%",
        text="The disk is nearly full.\n",
        html="<p>The disk is nearly full.</p>",
        message_id="<notifier.1@nas01>",
        date=1_700_000_000.0,
    )
    args.update(overrides)
    return build_message(**args)


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def content(part: email.message.EmailMessage) -> str:
    """A text part's content with the wire's CRLF read back as LF."""
    return part.get_content().replace("\r\n", "\n")


def assert_wire_valid(data: bytes) -> None:
    """7-bit, CRLF only, no line over 998 octets (RFC 5322 2.1.1)."""
    assert data.isascii()
    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def test_headers_are_exactly_the_intended_set():
    msg = parse(build())
    assert sorted(msg.keys()) == sorted(BASE_HEADERS)
    assert msg["From"].addresses[0].display_name == "nas01"
    assert msg["To"] == "admin@example.com"
    assert msg["Message-ID"] == "<notifier.1@nas01>"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Date"].datetime.timestamp() == 1_700_000_000


def test_text_and_html_are_alternatives():
    msg = parse(build(text="plain é\n", html="<p>html é</p>"))
    assert msg.get_content_type() == "multipart/alternative"
    plain, html = msg.iter_parts()
    assert plain.get_content_type() == "text/plain" and content(plain) == "plain é\n"
    assert html.get_content_type() == "text/html" and content(html) == "<p>html é</p>\n"
    assert plain.get_content_charset() == "utf-8"


def test_without_html_a_single_text_part():
    msg = parse(build(html=None))
    assert msg.get_content_type() == "text/plain" and not msg.is_multipart()
    assert content(msg) == "The disk is nearly full.\n"


def test_thread_headers():
    msg = parse(build(in_reply_to="<root@nas01>", references=["<root@nas01>", "<r2@nas01>"]))
    assert msg["In-Reply-To"] == "<root@nas01>"
    assert msg["References"] == "<root@nas01> <r2@nas01>"


def test_no_value_can_create_a_header():
    evil = "\r\nBcc: evil@example.net\r\nX-Evil: 1"
    data = build(
        mail_from=f"nas01{evil} <alerts@example.com>",
        to=[f"Admin{evil} <admin@example.com>"],
        subject=f"disk{evil}\u2028X-Evil: 2\x85X-Evil: 3\x00",
        message_id=f"<id@nas01>{evil}",
        in_reply_to=f"<root@nas01>{evil}",
        references=[f"<root@nas01>{evil}"],
        extra_headers={"X-Notifier-Alert": f"disk{evil}"},
    )
    assert_wire_valid(data)
    msg = parse(data)
    assert sorted(msg.keys()) == sorted(
        BASE_HEADERS + ["In-Reply-To", "References", "X-Notifier-Alert"]
    )
    assert msg["Subject"] == "disk Bcc: evil@example.net X-Evil: 1 X-Evil: 2 X-Evil: 3"
    assert [a.addr_spec for a in msg["To"].addresses] == ["admin@example.com"]
    assert [a.addr_spec for a in msg["From"].addresses] == ["alerts@example.com"]
    assert not re.search(rb"^(Bcc|X-Evil):", data, re.MULTILINE | re.IGNORECASE)


def test_non_ascii_subject_is_encoded_and_round_trips():
    subject = "Dïsk völl: /srv — 91 % ✓ 磁盘"
    data = build(subject=subject)
    assert_wire_valid(data)
    assert re.search(rb"^Subject: =\?utf-8\?", data, re.MULTILINE)
    assert parse(data)["Subject"] == subject


def test_very_long_words_still_make_a_valid_message():
    word = "x" * 5000
    text = "y" * 10000 + "\n" + "é" * 3000 + "\n"
    data = build(subject=f"{word} ü{word}", text=text, html=f"<p>{word}</p>",
                 extra_headers={"X-Notifier-Key": word})  # fmt: skip
    assert_wire_valid(data)
    msg = parse(data)
    assert msg["Subject"] == f"{word} ü{word}"
    assert msg["X-Notifier-Key"] == word
    assert content(next(msg.iter_parts())) == text


def test_international_addresses():
    msg = parse(build(mail_from="Jörg Ærø <alerts@exämple.com>", to=["Zoë <z@example.com>"]))
    assert msg["From"].addresses[0].display_name == "Jörg Ærø"
    assert msg["From"].addresses[0].domain == "xn--exmple-cua.com"
    assert msg["To"].addresses[0].display_name == "Zoë"


@pytest.mark.parametrize(
    "extra", [{"Subject": "again"}, {"bcc": "x@example.net"}, {"Bad Name": "x"}, {"X:Y": "x"}]
)
def test_extra_headers_cannot_override_or_be_malformed(extra):
    with pytest.raises(ValueError):
        build(extra_headers=extra)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("alerts@example.com", "alerts@example.com"),
        ("nas01 <alerts@example.com>", "alerts@example.com"),
        ('"Doe, John" <j@example.com>', "j@example.com"),
        ("Jörg <j@exämple.com>", "j@xn--exmple-cua.com"),
    ],
)
def test_bare_address(value, expected):
    assert bare_address(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "nobody", "a b@example.com", "a@example.com>\r\nRCPT TO:<evil@example.net",
     "x <y", "jörg@example.com", "a@b@example.com", "a@example.com\x00"],
)  # fmt: skip
def test_bare_address_refuses(value):
    with pytest.raises(ValueError):
        bare_address(value)


def test_message_ids():
    a, b = make_message_id("nas01"), make_message_id("nas01")
    assert a != b
    assert re.fullmatch(r"<notifier\.[0-9a-f]{32}@nas01>", a)
    assert make_message_id("nas01", seed="disk|/srv") == make_message_id("nas01", seed="disk|/srv")
    assert make_message_id("nas01", seed="disk|/srv") != make_message_id("nas01", seed="disk|/tmp")
    assert make_message_id("nas01", seed="x") != make_message_id("nas02", seed="x")
    weird = make_message_id("NAS 01\r\n<Bcc: x@evil>..", seed="x")
    assert re.fullmatch(r"<notifier\.[0-9a-f]{32}@[a-z0-9.-]+>", weird)
    assert make_message_id("", seed="x").endswith("@localhost>")


header_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)


@settings(max_examples=150, deadline=None)
@given(subject=header_text, name=header_text, extra=header_text, ref=header_text)
def test_any_text_gives_valid_bytes_and_the_same_headers(subject, name, extra, ref):
    data = build(
        subject=subject,
        mail_from=f"{name.replace('<', '').replace('>', '')} <alerts@example.com>",
        references=[ref],
        extra_headers={"X-Notifier-Key": extra},
        text=subject,
    )
    assert_wire_valid(data)
    msg = parse(data)
    keys = set(msg.keys())
    assert BASE_HEADERS_SET <= keys <= BASE_HEADERS_SET | {"References", "X-Notifier-Key"}
    assert len(msg.keys()) == len(keys)  # no header twice
    assert [a.addr_spec for a in msg["From"].addresses] == ["alerts@example.com"]
    assert msg["To"] == "admin@example.com"


BASE_HEADERS_SET = set(BASE_HEADERS)
