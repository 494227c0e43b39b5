"""Throwaway TLS certificates (trustme) for the local SMTP servers of the demo and the tests."""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

import trustme


class Certs:
    """A throwaway CA and a server certificate for `hostnames`, as ca.pem and server.pem."""

    def __init__(
        self,
        hostnames: tuple[str, ...] | list[str] = ("localhost", "127.0.0.1"),
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        self.hostnames = tuple(hostnames)
        self._tmp = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="notifier-certs-")
            directory = self._tmp.name
        self.dir = Path(directory)
        self.ca = trustme.CA(organization_name="notifier catcher")
        leaf = self.ca.issue_cert(*self.hostnames)
        self.ca_file = str(self.dir / "ca.pem")
        self.server_pem = str(self.dir / "server.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        leaf.private_key_and_cert_chain_pem.write_to_path(self.server_pem)

    def server_context(self) -> ssl.SSLContext:
        """A server-side TLS context presenting the certificate."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.server_pem)
        return ctx

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
