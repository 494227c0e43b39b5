"""What the sender hands the SMTP client and gets back: where to connect, the mails, the
server's word on each. Plain data, no network code: importing it loads neither ssl nor smtplib
(the daemon loads those with its first mail)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from notifier.config import DEFAULT_PORTS


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to connect; holds no secret."""

    host: str
    port: int
    security: str  # "tls" | "starttls" | "none"
    username: str | None = None
    ca_file: str | None = None
    timeout: float = 30.0
    local_hostname: str | None = None

    def __post_init__(self) -> None:
        if self.security not in DEFAULT_PORTS:
            raise ValueError(f"smtp.security must be tls, starttls or none, got {self.security!r}")

    @classmethod
    def from_config(cls, smtp_conf: dict[str, Any]) -> SmtpSettings:
        """Settings from the validated `smtp:` section of the config."""
        security = smtp_conf.get("security") or "tls"
        return cls(
            host=smtp_conf["host"],
            port=int(smtp_conf.get("port") or DEFAULT_PORTS[security]),
            security=security,
            username=smtp_conf.get("username") or None,
            ca_file=smtp_conf.get("ca_file") or None,
            timeout=float(smtp_conf.get("timeout") or 30.0),
            local_hostname=smtp_conf.get("local_hostname") or None,
        )

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class Envelope:
    """One mail to hand over: bare addresses (a `Name <addr>` is reduced on send) and bytes."""

    mail_from: str
    rcpt_to: list[str]
    data: bytes
    ref: object = None  # the caller's id (the outbox row)


@dataclass
class Outcome:
    """The server's final word on one mail."""

    ref: object
    delivered: bool  # True iff 250 to the end of DATA, for at least one recipient
    refused: dict[str, str] = field(default_factory=dict)  # rcpt -> 5xx reply
    permanent_error: str | None = None  # why this mail can never go as it is
    reply: str = ""  # the server's final answer
    # rcpt -> 4xx reply, for recipients that were deferred while others took the mail;
    # the caller may queue a copy for them (a mail no recipient accepted raises instead).
    deferred: dict[str, str] = field(default_factory=dict)
