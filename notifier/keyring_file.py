"""A keyring backend in one root-only JSON file: works headless, without D-Bus or a desktop.

The file is protected by its mode (0600 in a 0700 directory), like a password
file; it is not encrypted, because a daemon that starts unattended has nobody
to type a master password. Registered as the `notifier-file` keyring plugin, so
`PYTHON_KEYRING_BACKEND=notifier.keyring_file.FileKeyring` works for any tool.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from keyring.backend import KeyringBackend
from keyring.compat import properties
from keyring.errors import KeyringError, PasswordDeleteError

DEFAULT_PATH = "/var/lib/notifier/keyring.json"
ENV_PATH = "NOTIFIER_KEYRING_FILE"
_FORMAT = "notifier-keyring"


def default_path() -> Path:
    """$NOTIFIER_KEYRING_FILE, else /var/lib/notifier/keyring.json."""
    return Path(os.environ.get(ENV_PATH) or DEFAULT_PATH)


def _usable(path: Path) -> bool:
    """Whether this process could read the file, or create it."""
    if path.exists():
        return os.access(path, os.R_OK)
    parent = path.parent
    while not parent.exists():  # created on first write, like the state directory
        parent = parent.parent
    return os.access(parent, os.W_OK | os.X_OK)


class FileKeyring(KeyringBackend):
    """Passwords in `<state_dir>/keyring.json`, mode 0600, replaced atomically on each change."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self.path = Path(path) if path is not None else default_path()

    @properties.classproperty
    def priority(cls) -> float:
        """Below every real keyring, so it is only chosen where nothing else works.

        Not viable (RuntimeError) where the file cannot be used, so a desktop user's
        tools never pick a file they could not write.
        """
        path = default_path()
        if not _usable(path):
            raise RuntimeError(
                f"cannot read or create {path}; run as root or set {ENV_PATH} to a file you own"
            )
        return 0.2

    def __str__(self) -> str:
        return f"notifier file backend, {self.path}"

    # -- the keyring API -------------------------------------------------------------
    def get_password(self, service: str, username: str) -> str | None:
        return self._load().get(service, {}).get(username)

    def set_password(self, service: str, username: str, password: str) -> None:
        with self._locked():
            data = self._load()
            data.setdefault(service, {})[username] = password
            self._save(data)

    def delete_password(self, service: str, username: str) -> None:
        with self._locked():
            data = self._load()
            if username not in data.get(service, {}):
                raise PasswordDeleteError(
                    f"no password for {username!r} of {service!r} in {self.path}"
                )
            del data[service][username]
            if not data[service]:
                del data[service]
            self._save(data)

    # -- the file --------------------------------------------------------------------
    def _load(self) -> dict[str, dict[str, str]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise KeyringError(
                f"cannot read the keyring file {self.path}: {exc.strerror}; "
                "run notifier as root (it is root-only on purpose)"
            ) from None
        try:
            doc: Any = json.loads(text)
            passwords = doc["passwords"]
            if doc.get("format") != _FORMAT or not isinstance(passwords, dict):
                raise ValueError
        except (ValueError, KeyError, TypeError, AttributeError):
            # Never quote the content: it holds passwords.
            raise KeyringError(
                f"{self.path} is not a notifier keyring file (damaged?); move it away and "
                "store the password again with `notifier set-password`"
            ) from None
        return {
            str(s): {str(u): str(p) for u, p in users.items()} for s, users in passwords.items()
        }

    def _save(self, data: dict[str, dict[str, str]]) -> None:
        text = json.dumps({"format": _FORMAT, "version": 1, "passwords": data}, indent=1)
        # mkstemp creates the file 0600 whatever the umask; rename makes the change atomic.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)

    def _locked(self) -> _DirectoryLock:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise KeyringError(
                f"cannot create {self.path.parent} for the keyring file: {exc.strerror}; "
                "run as root, or set state_dir to a directory you own"
            ) from None
        return _DirectoryLock(self.path.parent)


class _DirectoryLock:
    """flock() on the directory: two `set-password` runs cannot lose each other's change."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fd = -1

    def __enter__(self) -> _DirectoryLock:
        try:
            self.fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise KeyringError(f"cannot open {self.directory}: {exc.strerror}") from None
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing releases the lock
