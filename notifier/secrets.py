"""Where the SMTP password comes from: a systemd credential, a root-only file, or the keyring.

Looked up in that order. A password found is registered with the log filter at
once, so it cannot reach a log line afterwards. Nothing here ever puts the
value in a message, an exception or a repr.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from notifier.logsetup import register_secret

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

log = logging.getLogger("notifier.secrets")

CREDENTIAL = "smtp-password"
KEYRING_SERVICE = "notifier"


class SecretError(Exception):
    """The password should be readable but is not; the message says where and what to do."""


@dataclass(frozen=True, slots=True)
class Secret:
    """A password and a description of where it was found (never the value itself)."""

    value: str = field(repr=False)
    origin: str

    def __repr__(self) -> str:
        return f"Secret(origin={self.origin!r}, value=<hidden>)"

    def __str__(self) -> str:
        return f"<password from {self.origin}>"


def _read_secret_file(path: Path, what: str, fix: str) -> str:
    """The file's text without one trailing newline; SecretError naming `path` and `fix`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SecretError(f"{what} {path} does not exist; {fix}") from None
    except PermissionError:
        raise SecretError(
            f"cannot read {what} {path} (permission denied); run notifier as root, "
            f"or make the file readable by the user running it (chmod 600, chown USER {path})"
        ) from None
    except IsADirectoryError:
        raise SecretError(f"{what} {path} is a directory, not a file; {fix}") from None
    except OSError as exc:
        raise SecretError(f"cannot read {what} {path}: {exc.strerror}; {fix}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # Not the codec's message: it quotes a byte of the password.
        raise SecretError(f"{what} {path} is not UTF-8 text; write the password as UTF-8") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise SecretError(f"{what} {path} is empty; put the password in it (one line)")
    return text


def _from_credential() -> Secret | None:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory, CREDENTIAL)
    value = _read_secret_file(
        path,
        f"systemd credential {CREDENTIAL}",
        f"the unit passes credentials but not {CREDENTIAL}: add "
        f"LoadCredential={CREDENTIAL}:/etc/notifier/smtp-password with `systemctl edit notifier`",
    )
    return Secret(value, f"systemd credential {CREDENTIAL} ($CREDENTIALS_DIRECTORY/{CREDENTIAL})")


def _from_file(path_text: str) -> Secret:
    path = Path(path_text)
    value = _read_secret_file(
        path,
        "smtp.password_file",
        f"create it with the password on one line (chmod 600 {path}), or remove password_file "
        "from the config to use the keyring",
    )
    return Secret(value, f"file {path}")


def keyring_config_file() -> Path:
    """keyring's own config file (keyringrc.cfg) for this user."""
    from keyring.util import platform_

    return Path(platform_.config_root(), "keyringrc.cfg")


def _keyring_chosen_by_user() -> bool:
    """True if the user named a keyring backend (environment or keyringrc.cfg)."""
    if os.environ.get("PYTHON_KEYRING_BACKEND"):
        return True
    import configparser  # here, not at import: the daemon without AUTH never needs it

    parser = configparser.RawConfigParser()
    try:
        parser.read(keyring_config_file(), encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return False
    return parser.has_option("backend", "default-keyring")


def keyring_backend(conf: dict[str, Any]) -> KeyringBackend:
    """The keyring notifier uses: the user's explicit choice, else the file in state_dir."""
    if _keyring_chosen_by_user():
        import keyring

        return keyring.get_keyring()
    from notifier.keyring_file import FileKeyring

    return FileKeyring(Path(conf.get("state_dir") or "/var/lib/notifier", "keyring.json"))


def describe_backend(backend: KeyringBackend) -> str:
    """`keyring (notifier file backend, /var/lib/notifier/keyring.json)` and the like."""
    from notifier.keyring_file import FileKeyring

    if isinstance(backend, FileKeyring):
        return f"keyring (notifier file backend, {backend.path})"
    cls = type(backend)
    return f"keyring ({cls.__module__}.{cls.__qualname__})"


def _from_keyring(conf: dict[str, Any], username: str) -> Secret | None:
    from keyring.errors import KeyringError

    backend = keyring_backend(conf)
    origin = describe_backend(backend)
    try:
        value = backend.get_password(KEYRING_SERVICE, username)
    except KeyringError as exc:
        raise SecretError(f"{origin} failed: {exc}") from None
    except Exception as exc:  # a third-party backend may fail in any way; name it, not the value
        raise SecretError(
            f"{origin} failed ({type(exc).__name__}); choose another backend with "
            "PYTHON_KEYRING_BACKEND, or use smtp.password_file"
        ) from None
    return Secret(value, origin) if value else None


def find_password(conf: dict[str, Any]) -> Secret | None:
    """The SMTP password: credential `smtp-password`, then smtp.password_file, then the keyring.

    None when there is none (a relay without AUTH). SecretError when a place that
    should hold it cannot be read.
    """
    smtp = conf.get("smtp") or {}
    username = smtp.get("username")
    secret = _from_credential()
    if secret is None and smtp.get("password_file"):
        secret = _from_file(smtp["password_file"])
    if secret is None and username:
        secret = _from_keyring(conf, username)
    if secret is not None:
        register_secret(secret.value, username=username)
    return secret


def store_password(conf: dict[str, Any], password: str) -> str:
    """Store the password for smtp.username in the keyring; where it went, for the user."""
    from keyring.errors import KeyringError

    username = (conf.get("smtp") or {}).get("username")
    if not username:
        raise SecretError(
            "smtp.username is not set in the config; a relay without a login needs no "
            "password (set smtp.username first if the server wants AUTH)"
        )
    if not password:
        raise SecretError("the password is empty; nothing was stored")
    if "\n" in password or "\r" in password:
        raise SecretError("the password contains a line break; nothing was stored")
    register_secret(password, username=username)
    backend = keyring_backend(conf)
    origin = describe_backend(backend)
    try:
        backend.set_password(KEYRING_SERVICE, username, password)
    except KeyringError as exc:
        raise SecretError(f"{origin} could not store the password: {exc}") from None
    except Exception as exc:
        raise SecretError(
            f"{origin} could not store the password ({type(exc).__name__}); choose another "
            "backend with PYTHON_KEYRING_BACKEND, or use smtp.password_file"
        ) from None
    if os.environ.get("CREDENTIALS_DIRECTORY") or (conf.get("smtp") or {}).get("password_file"):
        log.warning(
            "stored in the %s, but a systemd credential or smtp.password_file is configured "
            "and is read first; remove it for the keyring to be used",
            origin,
        )
    return origin


def file_warnings(path: str | os.PathLike[str]) -> list[str]:
    """Warnings for a secret-bearing file that other users can read (none if it is missing)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return []
    who = [
        name
        for bit, name in ((stat.S_IRGRP, "its group"), (stat.S_IROTH, "everyone"))
        if mode & bit
    ]
    if not who:
        return []
    return [
        f"{os.fspath(path)} can be read by {' and '.join(who)} (mode {stat.S_IMODE(mode):04o}); "
        f"it is meant for root only. Fix: chmod 600 {os.fspath(path)}"
    ]


def config_warnings(conf: dict[str, Any]) -> list[str]:
    """file_warnings for the config file and smtp.password_file, for `notifier check` and start-up."""
    warnings: list[str] = []
    if conf.get("_file"):
        warnings += file_warnings(conf["_file"])
    password_file = (conf.get("smtp") or {}).get("password_file")
    if password_file:
        warnings += file_warnings(password_file)
    return warnings
