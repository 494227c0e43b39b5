"""RFC 5322 messages from rendered text: headers that no event value can break.

Every header value passes through `clean_header_value`, so a CR/LF in a log line,
a subject or an address can never start a header of its own (no `Bcc:` smuggling).
Bodies are 7-bit (quoted-printable or base64 as the email package chooses), so the
message passes any relay, 8BITMIME or not, and no line exceeds 998 octets.
"""

from __future__ import annotations

import functools
import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from email.headerregistry import Address
    from email.policy import Policy

# The email package is loaded by the first build_message, not with this module: addresses and
# Message-IDs (checked and made at start-up) do not need it, and it costs ~1 MiB for good.


@functools.cache
def _policy() -> Policy:
    """CRLF line endings, folding at 78, and 7-bit bodies: QP/base64 for anything not ASCII."""
    import email.policy

    return email.policy.SMTP.clone(cte_type="7bit")


# Headers build_message sets itself; extra_headers may not add a second copy.
OWN_HEADERS = frozenset(
    h.lower()
    for h in (
        "Date", "Message-ID", "From", "To", "Cc", "Bcc", "Subject", "In-Reply-To", "References",
        "Auto-Submitted", "X-Auto-Response-Suppress", "MIME-Version", "Content-Type",
        "Content-Transfer-Encoding", "Sender", "Reply-To", "Return-Path",
    )
)  # fmt: skip

_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext: printable ASCII except ':'
_SPACES = re.compile(r"\s+")
_BREAKING = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_MSGID_BAD = re.compile(r"[^!-~]|[<>]")  # anything outside visible ASCII, and the brackets
_DOMAIN_BAD = re.compile(r"[^a-z0-9.-]+")
_ADDR_SPEC = re.compile(r'^[^\s<>()\[\],;:\\"@]+@[^\s<>()\[\],;:\\"@]+$')


def clean_header_value(value: object) -> str:
    """One line of text safe for a header: control and line-break characters become spaces."""
    # Unicode's Cc (CR, LF, TAB, NUL, DEL and the C1 range with NEL), Zl and Zp (U+2028,
    # U+2029, which Python's splitlines() and some mail clients treat as line breaks): these
    # sets are closed by Unicode's stability policy, so a character class is exact.
    text = _BREAKING.sub(" ", str(value))
    # "=?" starts an RFC 2047 encoded word; Python < 3.12.5 decodes such words when folding and
    # lets an encoded CR LF become a real header (CVE-2024-6923). Event text is plain text, so
    # a zero-width space keeps it from ever being read as an encoded word.
    return _SPACES.sub(" ", text).strip().replace("=?", "=\u200b?")


def _split_address(text: str) -> tuple[str, str]:
    """(`Name`, `addr`) of `Name <addr>`; a trailing `<…>` wins over anything before it."""
    text = text.strip()
    if text.endswith(">") and "<" in text:
        i = text.rindex("<")
        name, addr = text[:i].strip(), text[i + 1 : -1].strip()
        if len(name) >= 2 and name[0] == name[-1] == '"':
            name = name[1:-1].replace('\\"', '"')
        return name, addr
    return "", text


@functools.lru_cache(maxsize=64)  # a backlog repeats the same few addresses on every mail
def bare_address(value: str) -> str:
    """The plain `user@domain` of `Name <user@domain>`, ASCII (IDNA domain); ValueError if none.

    Strict, because the result goes into SMTP commands: no line breaks or control
    characters, and exactly one plain `user@domain`.
    """
    text = str(value).strip()
    if clean_header_value(text) != " ".join(text.split()) or any(c in text for c in "\r\n\t"):
        raise ValueError(f"not an e-mail address (control characters): {text!r}")
    _, addr = _split_address(text)
    if not _ADDR_SPEC.match(addr):
        raise ValueError(f"not an e-mail address like 'NAS <alerts@example.com>': {text!r}")
    local, _, domain = addr.partition("@")
    if not local.isascii():
        raise ValueError(
            f"{addr!r}: a non-ASCII user part needs SMTPUTF8, which notifier does not use; "
            f"use an ASCII address"
        )
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{addr!r}: the domain is not a valid international name") from None
    return f"{local}@{domain}"


def _address_header(value: str) -> Address:
    """`Name <addr>` as a header object (line breaks become spaces); any Unicode name."""
    from email.headerregistry import Address

    text = clean_header_value(value)
    name, _ = _split_address(text)
    local, _, domain = bare_address(text).partition("@")
    return Address(display_name=name, username=local, domain=domain)


def _clean_msgid(value: str) -> str | None:
    """`<id@host>` with nothing that could break out of the header; None if nothing is left."""
    inner = _MSGID_BAD.sub("", str(value))
    return f"<{inner}>" if inner else None


def _domain(host_label: str) -> str:
    """A DNS-ish label for the right-hand side of a Message-ID."""
    domain = _DOMAIN_BAD.sub("-", host_label.strip().lower()).strip(".-")
    domain = re.sub(r"\.{2,}", ".", domain)
    return domain[:200] or "localhost"


def make_message_id(host_label: str, seed: str | None = None) -> str:
    """A new `<…@host>` Message-ID; the same one every time for the same `seed` and host."""
    if seed is None:
        local = os.urandom(16).hex()  # uuid4's randomness, without loading uuid and libcrypto
    else:
        import hashlib  # only for seeded ids; hashlib maps libcrypto (+3.5 MiB resident)

        # Hash, not the seed itself: the seed may hold any text (alert keys, paths).
        local = hashlib.sha256(f"{host_label}\0{seed}".encode()).hexdigest()[:32]
    return f"<notifier.{local}@{_domain(host_label)}>"


def build_message(
    *,
    mail_from: str,
    to: list[str],
    subject: str,
    text: str,
    html: str | None,
    message_id: str,
    in_reply_to: str | None = None,
    references: list[str] | None = None,
    date: float | None = None,
    extra_headers: dict[str, str] | None = None,
) -> bytes:
    """The bytes of one mail (CRLF, 7-bit), ready for SMTP DATA; ValueError on a bad address."""
    from email.message import EmailMessage
    from email.utils import formatdate

    if not to:
        raise ValueError("a message needs at least one recipient")
    msg = EmailMessage(policy=_policy())
    msg["Date"] = formatdate(date, localtime=True)
    msgid = _clean_msgid(message_id)
    if msgid is None:
        raise ValueError(f"empty Message-ID: {message_id!r}")
    msg["Message-ID"] = msgid
    msg["From"] = _address_header(mail_from)
    msg["To"] = [_address_header(a) for a in to]
    msg["Subject"] = clean_header_value(subject)
    parent = _clean_msgid(in_reply_to) if in_reply_to else None
    if parent:
        msg["In-Reply-To"] = parent
    refs = [r for r in (_clean_msgid(x) for x in references or []) if r]
    if refs:
        msg["References"] = " ".join(refs)
    # RFC 3834, and Exchange's own header: no vacation replies or bounces to a daemon.
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    for name, value in (extra_headers or {}).items():
        if not _HEADER_NAME.match(name):
            raise ValueError(f"not a valid header name: {name!r}")
        if name.lower() in OWN_HEADERS:
            raise ValueError(f"header {name!r} is set by build_message and cannot be overridden")
        msg[name] = clean_header_value(value)
    # set_content picks 7bit, quoted-printable or base64 per part, and adds MIME-Version.
    msg.set_content(text, subtype="plain", charset="utf-8")
    if html is not None:
        msg.add_alternative(html, subtype="html", charset="utf-8")
    return msg.as_bytes(policy=_policy())
