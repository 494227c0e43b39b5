"""Password lookup with real files, the real keyring library and the real file backend."""

from __future__ import annotations

import configparser
import importlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import traceback
from pathlib import Path

import pytest
from keyring.backend import KeyringBackend

from notifier import logsetup, secrets
from notifier.keyring_file import FileKeyring
from notifier.secrets import Secret, SecretError

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "pässword-7Q!x'\\z"
USER = "alerts@example.com"
# The interpreter may live where nobody cannot exec it (pyenv under /root), so a child
# starts as root, imports what it needs, then drops to nobody.
DROP_TO_NOBODY = "import os; os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No credentials, no keyring choice, no desktop session: what a system service sees."""
    for name in (
        "CREDENTIALS_DIRECTORY",
        "PYTHON_KEYRING_BACKEND",
        "NOTIFIER_KEYRING_FILE",
        "DBUS_SESSION_BUS_ADDRESS",
        "DISPLAY",
        "WAYLAND_DISPLAY",
    ):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    saved = logsetup._secrets
    yield
    logsetup._secrets = saved


@pytest.fixture
def public_dir():
    """A directory nobody can traverse (pytest's tmp_path sits inside a root-only one)."""
    d = Path(tempfile.mkdtemp(prefix="notifier-test-"))
    d.chmod(0o755)
    (d / "home").mkdir()
    yield d
    shutil.rmtree(d)


def make_conf(tmp_path: Path, **smtp: object) -> dict:
    return {
        "state_dir": str(tmp_path / "state"),
        "smtp": {"host": "smtp.example.com", "username": USER, "password_file": None, **smtp},
        "_file": str(tmp_path / "config.yaml"),
    }


def write_secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a headless service: no D-Bus session, no display."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "DBUS_SESSION_BUS_ADDRESS",
            "DISPLAY",
            "WAYLAND_DISPLAY",
            "PYTHON_KEYRING_BACKEND",
            "NOTIFIER_KEYRING_FILE",
            "CREDENTIALS_DIRECTORY",
        )
    }
    env.update(
        PYTHONPATH=str(REPO),
        HOME=str(tmp_path / "home"),
        XDG_CONFIG_HOME=str(tmp_path / "home" / ".config"),
        **extra,
    )
    return env


def run_py(code: str, env: dict[str, str], stdin: str = "", **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )


# -- Secret -------------------------------------------------------------------------------


def test_secret_never_shows_its_value():
    s = Secret(PASSWORD, "file /etc/notifier/smtp-password")
    for text in (repr(s), str(s), f"{s}", repr([s]), repr({"pw": s}), f"{s} {s!r}"):
        assert PASSWORD not in text
        assert "/etc/notifier/smtp-password" in text
    assert s.value == PASSWORD


# -- lookup order -------------------------------------------------------------------------


def test_order_credential_then_file_then_keyring(tmp_path, monkeypatch):
    conf = make_conf(tmp_path, password_file=str(write_secret(tmp_path / "pwfile", "from-file\n")))
    FileKeyring(Path(conf["state_dir"]) / "keyring.json").set_password(
        "notifier", USER, "from-keyring"
    )
    creds = tmp_path / "creds"
    creds.mkdir()
    write_secret(creds / "smtp-password", "from-credential\n", 0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))

    s = secrets.find_password(conf)
    assert s.value == "from-credential"
    assert s.origin == "systemd credential smtp-password ($CREDENTIALS_DIRECTORY/smtp-password)"

    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    s = secrets.find_password(conf)
    assert (s.value, s.origin) == ("from-file", f"file {tmp_path / 'pwfile'}")

    conf["smtp"]["password_file"] = None
    s = secrets.find_password(conf)
    assert s.value == "from-keyring"
    assert s.origin == f"keyring (notifier file backend, {tmp_path / 'state' / 'keyring.json'})"

    conf["smtp"]["username"] = "someone-else@example.com"
    assert secrets.find_password(conf) is None


def test_found_password_is_masked_in_logs(tmp_path):
    conf = make_conf(tmp_path, password_file=str(write_secret(tmp_path / "pw", "Zx9-long-secret")))
    secrets.find_password(conf)
    assert logsetup.redact("AUTH with Zx9-long-secret") == "AUTH with ********"


def test_only_one_trailing_newline_is_stripped(tmp_path):
    conf = make_conf(tmp_path, password_file=str(write_secret(tmp_path / "pw", "two \n\n")))
    assert secrets.find_password(conf).value == "two \n"
    write_secret(tmp_path / "pw", "crlf\r\n")
    assert secrets.find_password(conf).value == "crlf"
    write_secret(tmp_path / "pw", "  spaces kept  ")
    assert secrets.find_password(conf).value == "  spaces kept  "


def test_no_username_and_no_file_means_no_password(tmp_path):
    conf = make_conf(tmp_path, username=None)
    assert secrets.find_password(conf) is None


# -- errors -------------------------------------------------------------------------------


def test_credentials_directory_without_the_credential(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with pytest.raises(SecretError) as err:
        secrets.find_password(make_conf(tmp_path))
    msg = str(err.value)
    assert str(creds / "smtp-password") in msg
    assert "LoadCredential=smtp-password:" in msg


@pytest.mark.parametrize(
    "setup, expected",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(PASSWORD.encode("latin-1")), "is not UTF-8"),
    ],
)
def test_password_file_errors_name_the_file_and_never_the_value(tmp_path, setup, expected):
    path = tmp_path / "smtp-password"
    setup(path)
    with pytest.raises(SecretError) as err:
        secrets.find_password(make_conf(tmp_path, password_file=str(path)))
    msg = str(err.value)
    assert str(path) in msg and expected in msg
    assert PASSWORD not in msg and repr(PASSWORD)[1:-1] not in msg
    shown = "".join(traceback.format_exception(err.value))
    assert PASSWORD not in shown
    assert "UnicodeDecodeError" not in shown  # its message would quote a byte of the password


def test_unreadable_password_file_as_another_user(public_dir):
    """As an unprivileged user: tests run as root, so the child drops to nobody itself."""
    pw = write_secret(public_dir / "smtp-password", PASSWORD)
    code = f"""
        from notifier import secrets
        {DROP_TO_NOBODY}
        conf = {{"state_dir": "/nonexistent", "smtp": {{"username": "u", "password_file": {str(pw)!r}}}}}
        try:
            secrets.find_password(conf)
        except secrets.SecretError as exc:
            print(repr(exc))
        """
    out = run_py(code, child_env(public_dir))
    assert out.returncode == 0, out.stderr
    assert f"cannot read smtp.password_file {pw} (permission denied)" in out.stdout
    assert "chmod 600" in out.stdout
    assert PASSWORD not in out.stdout + out.stderr


def test_damaged_keyring_file_error_does_not_quote_it(tmp_path):
    conf = make_conf(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "keyring.json").write_text('{"passwords": {"notifier": "' + PASSWORD)
    with pytest.raises(SecretError) as err:
        secrets.find_password(conf)
    msg = str(err.value)
    assert "keyring.json is not a notifier keyring file" in msg and "set-password" in msg
    assert PASSWORD not in msg


def test_store_password_refuses_nonsense(tmp_path):
    with pytest.raises(SecretError, match="smtp.username is not set"):
        secrets.store_password(make_conf(tmp_path, username=None), PASSWORD)
    with pytest.raises(SecretError, match="empty"):
        secrets.store_password(make_conf(tmp_path), "")
    with pytest.raises(SecretError, match="line break") as err:
        secrets.store_password(make_conf(tmp_path), PASSWORD + "\n")
    assert PASSWORD not in str(err.value)
    assert not (tmp_path / "state").exists()


def test_store_password_warns_when_a_file_shadows_the_keyring(tmp_path, caplog):
    conf = make_conf(tmp_path, password_file=str(write_secret(tmp_path / "pw", "x")))
    secrets.store_password(conf, PASSWORD)
    assert "smtp.password_file is configured" in caplog.text
    assert PASSWORD not in caplog.text


# -- file warnings ------------------------------------------------------------------------


def test_file_warnings_for_a_world_readable_password_file(tmp_path):
    path = write_secret(tmp_path / "smtp-password", PASSWORD, 0o644)
    (warning,) = secrets.file_warnings(path)
    assert str(path) in warning and "0644" in warning
    assert f"chmod 600 {path}" in warning
    assert PASSWORD not in warning
    path.chmod(0o640)
    assert "its group" in secrets.file_warnings(path)[0]
    path.chmod(0o600)
    assert secrets.file_warnings(path) == []
    assert secrets.file_warnings(tmp_path / "missing") == []


def test_config_warnings_cover_config_and_password_file(tmp_path):
    conf = make_conf(tmp_path, password_file=str(write_secret(tmp_path / "pw", "x", 0o604)))
    write_secret(tmp_path / "config.yaml", "smtp: {}\n", 0o644)
    warnings = secrets.config_warnings(conf)
    assert len(warnings) == 2
    assert f"chmod 600 {tmp_path / 'config.yaml'}" in warnings[0]
    assert f"chmod 600 {tmp_path / 'pw'}" in warnings[1]


# -- the file keyring, headless, across processes -----------------------------------------


def test_store_then_read_back_in_another_process(tmp_path):
    conf = make_conf(tmp_path)
    env = child_env(tmp_path)
    store = run_py(
        f"""
        import sys
        from notifier import secrets
        conf = {conf!r}
        print(secrets.store_password(conf, sys.stdin.read()))
        """,
        env,
        stdin=PASSWORD,
    )
    assert store.returncode == 0, store.stderr
    keyring_file = tmp_path / "state" / "keyring.json"
    assert store.stdout.strip() == f"keyring (notifier file backend, {keyring_file})"
    assert stat.S_IMODE(keyring_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(keyring_file.parent.stat().st_mode) == 0o700
    assert [p.name for p in keyring_file.parent.iterdir()] == ["keyring.json"]  # no temp left

    read = run_py(
        f"""
        from notifier import secrets
        s = secrets.find_password({conf!r})
        print(s.origin)
        print(repr(s))
        print(s.value.encode("unicode_escape").decode())
        """,
        env,
    )
    assert read.returncode == 0, read.stderr
    origin, rep, value = read.stdout.splitlines()
    assert origin == f"keyring (notifier file backend, {keyring_file})"
    assert PASSWORD not in rep
    assert value.encode().decode("unicode_escape") == PASSWORD


def test_other_tools_select_it_by_environment(tmp_path):
    """`PYTHON_KEYRING_BACKEND=notifier.keyring_file.FileKeyring keyring set/get` via the CLI."""
    path = tmp_path / "elsewhere" / "kr.json"
    env = child_env(
        tmp_path,
        PYTHON_KEYRING_BACKEND="notifier.keyring_file.FileKeyring",
        NOTIFIER_KEYRING_FILE=str(path),
    )
    cli = [sys.executable, "-m", "keyring"]
    put = subprocess.run(
        [*cli, "set", "notifier", USER],
        input=PASSWORD + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert put.returncode == 0, put.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    got = subprocess.run(
        [*cli, "get", "notifier", USER], env=env, capture_output=True, text=True, timeout=60
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.rstrip("\n") == PASSWORD
    # notifier itself honours that explicit choice over its state_dir file.
    read = run_py(
        f"from notifier import secrets; print(secrets.find_password({make_conf(tmp_path)!r}).origin)",
        env,
    )
    assert read.stdout.strip() == f"keyring (notifier file backend, {path})"


def test_user_keyringrc_choice_wins_over_the_file(tmp_path):
    conf = make_conf(tmp_path)
    FileKeyring(Path(conf["state_dir"]) / "keyring.json").set_password("notifier", USER, "x")
    rc = tmp_path / "home" / ".config" / "python_keyring" / "keyringrc.cfg"
    rc.parent.mkdir(parents=True)
    rc.write_text("[backend]\ndefault-keyring=keyring.backends.null.Keyring\n")
    out = run_py(
        f"""
        from notifier import secrets
        print(secrets.describe_backend(secrets.keyring_backend({conf!r})))
        print(secrets.find_password({conf!r}))
        """,
        child_env(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["keyring (keyring.backends.null.Keyring)", "None"]


def test_auto_detection_picks_it_headless_as_root_but_not_for_others(public_dir):
    code = """
        import keyring, keyring.backend
        import notifier.keyring_file  # what the keyring.backends entry point does
        # Import every backend now: after dropping to nobody the stdlib may be out of reach.
        keyring.backend._load_plugins()
        import keyring.backends.SecretService, keyring.backends.kwallet, keyring.backends.libsecret
        import keyring.backends.chainer, keyring.backends.fail, keyring.backends.null
        {drop}
        print(type(keyring.get_keyring()).__name__)
        """
    env = child_env(public_dir, NOTIFIER_KEYRING_FILE=str(public_dir / "k.json"))
    as_root = run_py(code.format(drop=""), env)
    assert as_root.stdout.strip() == "FileKeyring", as_root.stderr
    # A user who could not write the file never gets it chosen for them.
    env = child_env(public_dir, NOTIFIER_KEYRING_FILE="/root/notifier-test/k.json")
    as_nobody = run_py(code.format(drop=DROP_TO_NOBODY), env)
    assert as_nobody.returncode == 0, as_nobody.stderr
    assert as_nobody.stdout.strip() not in ("", "FileKeyring"), as_nobody.stderr


def test_keyring_file_concurrent_writers_keep_both(tmp_path):
    path = tmp_path / "state" / "keyring.json"
    code = f"""
        import sys
        from notifier.keyring_file import FileKeyring
        k = FileKeyring({str(path)!r})
        for i in range(30):
            k.set_password("svc", sys.argv[1] + str(i), "pw")
        """
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), name], env=child_env(tmp_path)
        )
        for name in ("a", "b")
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    users = json.loads(path.read_text())["passwords"]["svc"]
    assert len(users) == 60


def test_keyring_file_delete(tmp_path):
    from keyring.errors import PasswordDeleteError

    k = FileKeyring(tmp_path / "k.json")
    k.set_password("notifier", USER, PASSWORD)
    assert k.get_password("notifier", USER) == PASSWORD
    k.delete_password("notifier", USER)
    assert k.get_password("notifier", USER) is None
    with pytest.raises(PasswordDeleteError):
        k.delete_password("notifier", USER)


def test_entry_point_names_an_importable_backend():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = cfg["options.entry_points"]["keyring.backends"].strip().splitlines()
    entry_points = dict((part.strip() for part in line.split("=", 1)) for line in lines)
    module = importlib.import_module(entry_points["notifier-file"])
    assert issubclass(module.FileKeyring, KeyringBackend)
