"""Shared pytest fixtures. Helpers they build on live in sibling modules (smtpservers.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from smtpservers import PASSWORD, USER

from notifier.catcher import Catcher, Certs


# -- SMTP: real aiosmtpd servers on 127.0.0.1 (notifier.catcher) ----------------------------
@pytest.fixture(scope="session")
def smtp_certs() -> Iterator[Certs]:
    """One throwaway CA + certificate for localhost/127.0.0.1, shared by the whole run."""
    certs = Certs()
    yield certs
    certs.cleanup()


@pytest.fixture
def make_catcher(smtp_certs: Certs) -> Iterator[Callable[..., Catcher]]:
    """Start Catchers with any options (default certificate); all are stopped afterwards."""
    started: list[Catcher] = []

    def make(**kwargs: Any) -> Catcher:
        kwargs.setdefault("cert", smtp_certs)
        catcher = Catcher(**kwargs).start()
        started.append(catcher)
        return catcher

    yield make
    for catcher in started:
        catcher.stop()


@pytest.fixture
def tls_catcher(make_catcher: Callable[..., Catcher]) -> Catcher:
    """Implicit TLS (SMTPS, like port 465) requiring AUTH as USER/PASSWORD."""
    return make_catcher(tls="tls", auth={USER: PASSWORD})


@pytest.fixture
def starttls_catcher(make_catcher: Callable[..., Catcher]) -> Catcher:
    """Required STARTTLS (like port 587) requiring AUTH as USER/PASSWORD inside TLS."""
    return make_catcher(tls="starttls", auth={USER: PASSWORD})


@pytest.fixture
def plain_catcher(make_catcher: Callable[..., Catcher]) -> Catcher:
    """Plain SMTP without AUTH, like a relay on this machine."""
    return make_catcher(tls="none")
