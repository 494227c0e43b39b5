"""Fixtures for the reliability suite: rigs with a real TLS+AUTH catcher and the real daemon,
and, after every test that used one, a grep of everything it left behind (logs, CLI output,
mails, spool files) for the password in any form."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from notifier.catcher import Catcher, Certs

from .rigging import FORMS, PASSWORD, SCANNED, USER, Rig, scan_tree


@pytest.fixture
def make_rig(tmp_path: Path, smtp_certs: Certs) -> Iterator[Callable[..., Rig]]:
    """Rigs with any catcher options (default: implicit TLS + AUTH); every file they leave
    is grepped for the password afterwards."""
    made: list[tuple[Rig, Catcher]] = []

    def make(name: str = "rig", **catcher_kwargs: Any) -> Rig:
        catcher_kwargs.setdefault("tls", "tls")
        catcher_kwargs.setdefault("auth", {USER: PASSWORD})
        catcher_kwargs.setdefault("cert", smtp_certs)
        base = tmp_path / name
        base.mkdir()
        catcher = Catcher(base / "mail", **catcher_kwargs).start()
        rig = Rig(base, catcher)
        made.append((rig, catcher))
        return rig

    yield make
    for rig, catcher in made:
        rig.close()
        catcher.stop()
    # The password file and the file keyring hold the password by design; nothing else may.
    scan_tree(
        tmp_path, {p for rig, _ in made for p in (rig.password_file, rig.state / "keyring.json")}
    )


@pytest.fixture
def rig(make_rig: Callable[..., Rig]) -> Rig:
    """The usual rig: implicit TLS with AUTH, group_wait 0s, retry_max 2s."""
    return make_rig()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SCANNED["files"] or SCANNED["texts"]:
        terminalreporter.write_line(
            f"reliability: grepped {SCANNED['files']} files ({SCANNED['bytes'] / 1e6:.1f} MB) and "
            f"{SCANNED['texts']} outputs for the SMTP password in {len(FORMS)} forms: "
            f"{SCANNED['leaks']} leak(s)"
        )
