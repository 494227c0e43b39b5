"""The SMTP client keeps its TLS context between sessions (loading the system CA store costs
~30 ms a mail), but never at the price of trusting a CA file that has changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from smtpservers import make_envelope

from notifier.catcher import Certs
from notifier.mail.smtp import SmtpError, deliver, tls_context


def _replace(path: Path, pem: str) -> None:
    """Write `pem` to `path` the way tools do: a new file renamed over the old one."""
    tmp = path.with_suffix(".new")
    tmp.write_bytes(Path(pem).read_bytes())
    os.replace(tmp, path)


def test_the_context_is_reused_while_the_ca_file_is_unchanged(tmp_path, smtp_certs):
    ca = tmp_path / "ca.pem"
    _replace(ca, smtp_certs.ca_file)
    assert tls_context(str(ca)) is tls_context(str(ca))
    assert tls_context(None) is tls_context(None)


def test_a_replaced_ca_file_is_trusted_at_once(make_catcher, tmp_path):
    catcher = make_catcher(tls="tls")
    other = Certs()  # a CA that did not sign the server's certificate
    ca = tmp_path / "ca.pem"
    try:
        _replace(ca, other.ca_file)
        settings = catcher.settings(ca_file=str(ca))
        with pytest.raises(SmtpError, match="not trusted"):
            deliver(settings, None, [make_envelope()], lambda outcome: None)
        _replace(ca, catcher.ca_file)  # the admin fixes ca_file; no restart, no reload
        outcomes = []
        deliver(settings, None, [make_envelope()], outcomes.append)
        assert [o.delivered for o in outcomes] == [True]
        assert len(catcher.wait_for(1)) == 1
        _replace(ca, other.ca_file)  # and back: the old, wrong CA is not remembered as good
        with pytest.raises(SmtpError, match="not trusted"):
            deliver(settings, None, [make_envelope()], lambda outcome: None)
    finally:
        other.cleanup()
