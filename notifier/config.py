"""The one YAML file: its schema, loading, and every check that needs the whole file."""

from __future__ import annotations

import binascii
import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

from notifier import schema, sources
from notifier.schema import REQUIRED, Bool, Duration, Errors, Int, List, Map, Problem, Str
from notifier.yamlfile import LineDict, LineList, YamlError, load_yaml

DEFAULT_PATH = "/etc/notifier/config.yaml"
DEFAULT_PORTS = {"tls": 465, "starttls": 587, "none": 25}


def default_config_path() -> str:
    return os.environ.get("NOTIFIER_CONFIG") or DEFAULT_PATH


class ConfigInvalid(Exception):
    """The file cannot be used; `problems` lists every reason, each with its line and key."""

    def __init__(self, filename: str, problems: list[Problem]) -> None:
        self.filename = filename
        self.problems = problems
        super().__init__(self.report())

    def report(self) -> str:
        return "\n".join(p.format(self.filename) for p in self.problems)


def _address(value: str) -> str:
    # The same strict parse the mail path uses: an address accepted here but refused at
    # send time would make every alert fail (`a@b (x)`, `a@b, c@d`, a non-ASCII user part).
    from notifier.mail.message import bare_address

    try:
        bare_address(value)
    except ValueError as exc:
        why = (
            "; a non-ASCII user part needs SMTPUTF8, which notifier does not use"
            if "SMTPUTF8" in str(exc)
            else ""
        )
        raise ValueError(
            f"must be an e-mail address like 'NAS <alerts@example.com>', got {value!r}{why}"
        ) from None
    return value


def _readable_file(value: str) -> str:
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"no such file: {value}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"cannot read {value} (permission denied)")
    return value


def _ca_file(value: str) -> str:
    """A readable file holding at least one PEM certificate. Only its shape is checked here,
    without the ssl module (the daemon loads that with its first mail, not at start):
    `notifier check` and every SMTP session load it for real and say so if OpenSSL refuses."""
    _readable_file(value)
    try:
        with open(value, "rb") as f:
            text = f.read(1 << 20)
        body = text.split(b"-----BEGIN CERTIFICATE-----", 1)[1].split(b"-----END CERTIFICATE-----")[
            0
        ]
        der = binascii.a2b_base64(body)
    except (IndexError, binascii.Error, OSError):
        der = b""
    if not der.startswith(b"\x30"):  # a certificate is a DER SEQUENCE
        raise ValueError(
            f"{value} holds no CA certificate in PEM format (-----BEGIN CERTIFICATE-----)"
        )
    return value


SMTP = Map(
    description="The one mail account every alert is sent through.",
    fields={
        "host": Str(description="The SMTP server.", default=REQUIRED, example="smtp.example.com"),
        "port": Int(
            description="465 for security: tls, 587 for starttls, 25 for none. Default: by security.",
            min=1,
            max=65535,
            example=465,
        ),
        "security": Str(
            description="tls (implicit TLS, port 465), starttls (port 587; refuses to go on if the "
            "server does not offer STARTTLS), or none (plain SMTP, only to a relay on this machine, "
            "never with a password).",
            choices=("tls", "starttls", "none"),
            default="tls",
            example="tls",
        ),
        "username": Str(
            description="The login; leave out for a relay without AUTH.",
            example="alerts@example.com",
        ),
        "password_file": Str(
            description="A root-only file holding the password. The systemd credential "
            "smtp-password and the keyring (notifier set-password) are the other places.",
            example="/etc/notifier/smtp-password",
        ),
        "ca_file": Str(
            description="A PEM file with a private CA to trust besides the system store.",
            check=_ca_file,
            example="/etc/ssl/private-ca.pem",
        ),
        "from": Str(
            description="The sender.",
            default=REQUIRED,
            check=_address,
            example="nas01 <alerts@example.com>",
        ),
        "to": List(
            description="Who gets the mail.",
            item=Str(check=_address),
            min_items=1,
            default=REQUIRED,
            example=["admin@example.com"],
        ),
        "timeout": Duration(
            description="Network timeout for each SMTP step.", default=30.0, example="30s", min=1
        ),
    },
    refused={
        "password": "the password must not sit in the YAML file: store it with "
        "`notifier set-password`, in a root-only file named by smtp.password_file, or as the "
        "systemd credential smtp-password (LoadCredential=)",
    },
)

POLICY = Map(
    description="When and how often to mail.",
    fields={
        "group_wait": Duration(
            description="What arrives within this window goes into one mail.",
            default=30.0,
            example="30s",
        ),
        "repeat_interval": Duration(
            description="Remind about a problem still open this often; 0s never reminds.",
            default=4 * 3600.0,
            example="4h",
        ),
        "send_resolved": Bool(
            description="Mail when a problem clears.", default=True, example=True
        ),
        "max_per_hour": Int(
            description="At most this many mails an hour; beyond it, events "
            "are held and folded into one digest mail (nothing is dropped).",
            default=20,
            min=1,
            max=3600,
            example=20,
        ),
        "burst": Int(
            description="How many mails may go out back to back before the hourly rate applies.",
            default=5,
            min=1,
            max=3600,
            example=5,
        ),
        "retry_max": Duration(
            description="Longest wait between delivery attempts while the "
            "server is unreachable (exponential backoff up to this).",
            default=600.0,
            example="10m",
            min=1,
        ),
    },
)


def top_schema() -> Map:
    """The schema of the whole file; `sources:` holds one list per known source."""
    source_fields: dict[str, schema.Field] = {}
    for name in sources.names():
        source_fields[name] = _LazySourceList(name)
    return Map(
        fields={
            "host_label": Str(
                description="How this machine is named in mails. Default: the hostname.",
                default=lambda: socket.gethostname(),
                example="nas01",
            ),
            "state_dir": Str(
                description="Where the spool (alert states, outbox, log positions) lives.",
                default="/var/lib/notifier",
                example="/var/lib/notifier",
            ),
            "templates_dir": Str(
                description="Templates here override the built-in ones by name.",
                example="/etc/notifier/templates",
            ),
            "smtp": SMTP_REQUIRED,
            "policy": POLICY,
            "sources": Map(description="What to watch.", fields=source_fields, default=dict),
        }
    )


SMTP_REQUIRED = Map(
    description=SMTP.description, fields=SMTP.fields, refused=SMTP.refused, default=REQUIRED
)


class _LazySourceList(schema.List):
    """`sources.<name>`: a list of entries whose schema is imported only when used."""

    def __init__(self, name: str) -> None:
        super().__init__(description=f"{name} entries", default=list)
        self.name = name

    def convert(self, value, path, line, errors):
        self.item = sources.get(self.name).entry
        return super().convert(value, path, line, errors)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cross_checks(conf: dict[str, Any], raw: LineDict, errors: Errors) -> None:
    smtp = conf["smtp"]
    lines = raw.get("smtp").lines if isinstance(raw.get("smtp"), LineDict) else {}
    if smtp["port"] is None:
        smtp["port"] = DEFAULT_PORTS[smtp["security"]]
    if smtp["security"] == "none":
        if not _is_loopback(smtp["host"]):
            errors.add(
                lines.get("host"),
                "smtp.host",
                f"security: none sends mail in clear; it is allowed only to a relay on this "
                f"machine (127.0.0.1, ::1, localhost), not {smtp['host']!r}. "
                f"Use security: tls (port 465) or starttls (port 587)",
            )
        if smtp["username"] or smtp["password_file"]:
            errors.add(
                lines.get("username") or lines.get("password_file"),
                "smtp.username",
                "security: none never sends a password; remove username/password_file "
                "or use security: tls or starttls",
            )
    elif smtp["port"] == 465 and smtp["security"] == "starttls":
        errors.add(
            lines.get("port"),
            "smtp.port",
            "port 465 speaks implicit TLS; use security: tls with it (or port 587 for starttls)",
        )
    elif smtp["port"] == 587 and smtp["security"] == "tls":
        errors.add(
            lines.get("port"),
            "smtp.port",
            "port 587 speaks STARTTLS; use security: starttls with it (or port 465 for tls)",
        )


def parse_config(
    text: str, filename: str = "config.yaml", *, check_templates: bool = True
) -> dict[str, Any]:
    """Validate YAML text; a dict with every default filled, or ConfigInvalid with all problems."""
    try:
        raw = load_yaml(text)
    except YamlError as exc:
        raise ConfigInvalid(filename, [Problem(exc.line, "", exc.message)]) from None
    if raw is None:
        raw = LineDict()
    if not isinstance(raw, dict):
        raise ConfigInvalid(
            filename,
            [Problem(1, "", "the file must be a mapping of options (smtp:, policy:, sources: …)")],
        )
    errors = Errors()
    conf = top_schema().validate(raw, "", raw.line or 1, errors)
    if conf is not schema.INVALID:
        _cross_checks(conf, raw, errors)
    if conf is not schema.INVALID and check_templates and conf.get("templates_dir"):
        from notifier.mail.render import template_problems

        for problem in template_problems(conf["templates_dir"]):
            errors.add(raw.lines.get("templates_dir"), "templates_dir", problem)
    if errors:
        raise ConfigInvalid(filename, errors.problems)
    conf["_file"] = filename
    conf["_lines"] = key_lines(raw)
    return conf


def key_lines(node: Any, path: str = "", out: dict[str, int] | None = None) -> dict[str, int]:
    """`{"smtp.password_file": 7, …}`: the line of every key, for checks made after parsing."""
    out = {} if out is None else out
    if isinstance(node, LineDict):
        for key, value in node.items():
            sub = schema.join(path, str(key))
            out[sub] = node.lines.get(key, 0)
            key_lines(value, sub, out)
    elif isinstance(node, LineList):
        for i, value in enumerate(node):
            sub = schema.join(path, i)
            out[sub] = node.lines[i] if i < len(node.lines) else 0
            key_lines(value, sub, out)
    return out


def load_config(path: str | os.PathLike[str], **kwargs: Any) -> dict[str, Any]:
    """Read and validate the config file."""
    filename = os.fspath(path)
    try:
        text = Path(filename).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigInvalid(
            filename, [Problem(None, "", "no such file (give another with -c FILE)")]
        ) from None
    except PermissionError:
        raise ConfigInvalid(
            filename, [Problem(None, "", "cannot read the file (permission denied)")]
        ) from None
    except IsADirectoryError:
        raise ConfigInvalid(
            filename, [Problem(None, "", "is a directory, not a config file")]
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigInvalid(
            filename, [Problem(None, "", f"is not UTF-8 text ({exc.reason} at byte {exc.start})")]
        ) from None
    return parse_config(text, filename, **kwargs)
