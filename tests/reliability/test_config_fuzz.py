"""Broken configs, one table: every case exits 2 with `file:line: key.path: reason`, no traceback.

Each case runs the real `notifier check` (and, when the file itself is invalid, the real
`notifier run`, which must refuse to start the same way).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, run_cli

from .config_cases import CASES, Case
from .rigging import PASSWORD, assert_no_secret


def _materialize(case: Case, tmp: Path) -> Path:
    """Write the case's files; the config's path."""
    pw = tmp / "smtp-password"
    pw.write_text(PASSWORD + "\n")
    os.chmod(pw, 0o600)
    (tmp / "empty-pw").write_text("")
    os.chmod(tmp / "empty-pw", 0o600)
    public = tmp / "public-pw"
    public.write_text(PASSWORD + "\n")
    os.chmod(public, 0o644)
    (tmp / "not-a-ca.pem").write_text("this is not a certificate\n")
    tpl = tmp / "templates"
    tpl.mkdir()
    (tpl / "alert.txt.j2").write_text("{% for i in items %}\n{{ i.summary }}\n{% endfor %\n")
    unknown = tmp / "templates-unknown"
    unknown.mkdir()
    (unknown / "alert.j2").write_text("{{ host }}\n")
    config = tmp / "config.yaml"
    if case.id == "config-missing":
        return tmp / "no-such-config.yaml"
    if case.id == "config-is-a-directory":
        config.mkdir()
        return config
    if isinstance(case.text, bytes):
        config.write_bytes(case.text)
    else:
        text = case.text or ""
        for key, value in {
            "{pw}": pw,
            "{state}": tmp / "state",
            "{tpl}": tpl,
            "{tpl_unknown}": unknown,
            "{empty_pw}": tmp / "empty-pw",
            "{public_pw}": public,
            "{notpem}": tmp / "not-a-ca.pem",
        }.items():
            text = text.replace(key, str(value))
        config.write_text(text)
    os.chmod(config, case.mode)
    return config


def _run_as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    """`notifier ARGS` as uid 65534 (the interpreter may live where nobody cannot exec it,
    so the child starts as root, imports, then drops its privileges)."""
    code = (
        "import os, sys; from notifier.cli import main; import notifier.check, "
        "notifier.config, notifier.daemon, notifier.logsetup, notifier.secrets, locale; os.setgroups([]); "
        "os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534); "
        "sys.exit(main(sys.argv[1:]))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=30
    )


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """What a system service sees: no credentials, no keyring choice."""
    for name in ("CREDENTIALS_DIRECTORY", "PYTHON_KEYRING_BACKEND", "NOTIFIER_KEYRING_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))


def test_the_table_is_big_enough():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_broken_config_exits_2_with_file_line_and_key(
    case: Case, tmp_path: Path, clean_env
) -> None:
    config = _materialize(case, tmp_path)
    commands = [("check", "-c", str(config))]
    if case.config_error:
        commands.append(("run", "-c", str(config)))
    for args in commands:
        if case.id == "config-unreadable":
            out = _run_as_nobody(*args)
        else:
            out = run_cli(*args, timeout=30)
        text = out.stdout + out.stderr
        assert out.returncode == 2, f"notifier {args[0]}: exit {out.returncode}\n{text}"
        assert "Traceback" not in text, text
        where = f"{config}:{case.line}: " if case.line else f"{config}: "
        expected = f"{where}{case.path}: " if case.path else where
        assert expected in text, f"notifier {args[0]}: expected {expected!r} in:\n{text}"
        assert case.words in text, f"notifier {args[0]}: expected {case.words!r} in:\n{text}"
        assert "hunter2" not in text and "pwned" not in text
        assert_no_secret(text, f"notifier {args[0]} output")
    assert not Path("/tmp/pwned").exists()
