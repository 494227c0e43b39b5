"""Service health: systemd units, processes, TCP ports, URLs and check commands.

Each entry watches one thing and names its kind with exactly one key
(`systemd:`, `process:`, `tcp:`, `http:`, `command:`). The state is reported on
every check; the daemon mails the problem once and again when it recovers.
"""

from __future__ import annotations

import os
import re
import shlex
from typing import Any
from urllib.parse import urlsplit

from notifier import schema, units
from notifier.events import Severity
from notifier.sources._probes import (
    command_observation,
    http_observations,
    parse_host_port,
    parse_status_ranges,
    systemctl_show,
    systemd_observation,
    tcp_observation,
)
from notifier.sources._process import ProcessWatch
from notifier.sources._procfs import memory_total
from notifier.sources.base import PERIODIC_FIELDS, Observation, PeriodicSource

KINDS = ("systemd", "process", "tcp", "http", "command")
# Options that only make sense with one kind of check.
KIND_OPTIONS = {
    "process": ("cmdline", "pidfile", "cpu", "memory"),
    "http": ("status", "cert_expiry", "ca_file"),
    "command": ("severity",),
}
DEFAULT_STATUS = "200-399"
DEFAULT_CERT_EXPIRY = 14 * 86400.0
# The probe enforces `timeout` itself (connecting and TLS may each take it, so up to twice);
# the scheduler's hung-check is a backstop after that.
SCHEDULER_GRACE = 5.0


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression: {exc}") from None
    return value


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    if parts.username or parts.password:
        raise ValueError("must not carry a user name or password: it would appear in every mail")
    try:
        parts.port  # noqa: B018 - raises for a bad port
    except ValueError:
        raise ValueError(f"has an invalid port: {value!r}") from None
    return value


def _tcp(value: str) -> str:
    parse_host_port(value)
    return value.strip()


def _readable_file(value: str) -> str:
    if not os.path.isfile(value):
        raise ValueError(f"no such file: {value}")
    if not os.access(value, os.R_OK):
        raise ValueError(f"cannot read {value} (permission denied)")
    return value


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    return value


class Argv(schema.Field):
    """A command: a list of arguments, or one string split like a shell would (no shell runs)."""

    def convert(self, value: Any, path: str, line: int | None, errors: schema.Errors) -> Any:
        if isinstance(value, list):
            argv = schema.List(item=schema.Str()).convert(value, path, line, errors)
        elif isinstance(value, str):
            try:
                argv = shlex.split(value)
            except ValueError as exc:
                raise ValueError(f"cannot be split into arguments: {exc}") from None
        else:
            raise ValueError(f"must be a command line or a list of arguments, got {value!r}")
        if argv is not schema.INVALID and not argv:
            raise ValueError("must not be empty")
        return argv


class CpuPercent(schema.Field):
    """`80%` of one core; above 100% for programs using several cores, as top shows it."""

    def convert(self, value: Any, path: str, line: int | None, errors: schema.Errors) -> Any:
        try:
            pct = float(str(value).strip().rstrip("%"))
        except ValueError:
            raise ValueError(f"must be a percentage like 80% or 250%, got {value!r}") from None
        if isinstance(value, bool) or pct <= 0:
            raise ValueError(f"must be a percentage above 0, got {value!r}")
        return pct


class MemoryLimit(schema.Field):
    """A size (`500MiB`) or a share of the machine's memory (`20%`), as bytes."""

    def convert(self, value: Any, path: str, line: int | None, errors: schema.Errors) -> Any:
        if isinstance(value, str) and value.strip().endswith("%"):
            return int(units.parse_percent(value) / 100.0 * memory_total())
        return units.parse_size(value)


class StatusCodes(schema.Field):
    def convert(self, value: Any, path: str, line: int | None, errors: schema.Errors) -> Any:
        return parse_status_ranges(value)


def _check_entry(conf: dict[str, Any]) -> dict[str, Any]:
    """Exactly one kind per entry, and only the options of that kind."""
    kinds = [k for k in KINDS if conf.get(k) is not None]
    if len(kinds) != 1:
        got = " and ".join(kinds) if kinds else "none"
        raise ValueError(f"needs exactly one of {', '.join(KINDS)} (what to watch); got {got}")
    kind = kinds[0]
    for other, options in KIND_OPTIONS.items():
        for option in options:
            if other != kind and conf.get(option) is not None:
                raise ValueError(f"{option}: applies only to {other}: checks, not to {kind}:")
    if conf.get("cmdline") is not None and conf.get("pidfile") is not None:
        raise ValueError("give either cmdline: or pidfile: to find the process, not both")
    if kind == "http" and not conf["http"].startswith("https:"):
        for option in ("cert_expiry", "ca_file"):
            if conf.get(option) is not None:
                raise ValueError(f"{option}: applies only to https:// URLs")
    return conf


ENTRY = schema.Map(
    description="One service to watch; give exactly one of systemd, process, tcp, http, command.",
    check=_check_entry,
    fields={
        **PERIODIC_FIELDS,
        "timeout": schema.Duration(
            description="How long the probe may take (connect, HTTP answer, command run); "
            "longer is reported as a problem of the service.",
            default=10.0,
            example="10s",
            min=0.1,
        ),
        "systemd": schema.Str(
            description="A systemd unit: failed is critical, stopped (inactive) is a warning.",
            example="smbd.service",
        ),
        "process": schema.Str(
            description="A program that must be running, found by its name (or cmdline:, "
            "pidfile:). None running is critical.",
            example="nginx",
        ),
        "cmdline": schema.Str(description="process: find it by a regex on its command line.",
                              check=_regex, example=r"java .*jenkins\.war"),
        "pidfile": schema.Str(description="process: find it by its pidfile.", check=_absolute,
                              example="/run/nginx.pid"),
        "cpu": CpuPercent(description="process: warn above this CPU use (100% = one core), "
                          "measured between two checks.", example="90%"),
        "memory": MemoryLimit(description="process: warn above this resident memory, a size "
                              "or a share of the machine's RAM.", example="2GiB"),
        "tcp": schema.Str(description="HOST:PORT that must accept connections ([::1]:22 for IPv6).",
                          check=_tcp, example="127.0.0.1:5432"),
        "http": schema.Str(description="A URL that must answer (GET, redirects not followed).",
                           check=_url, example="https://nas01.example.com/"),
        "status": StatusCodes(description=f"http: the expected status codes (default "
                              f"{DEFAULT_STATUS}).", example="200-299"),
        "cert_expiry": schema.Duration(
            description="https: warn when the certificate expires within this (default 14d; "
            "0s to not check).",
            example="14d",
        ),
        "ca_file": schema.Str(description="https: a PEM file with a private CA to trust besides "
                              "the system store.", check=_readable_file,
                              example="/etc/ssl/private-ca.pem"),
        "command": Argv(description="A check command (no shell): exit status 0 is fine, other "
                        "statuses are a problem; its first 4 KiB of output go into the mail.",
                        example=["/usr/local/bin/check_raid", "--all"]),
        "severity": schema.Str(description="command: how bad a failing check is (default "
                               "warning).", choices=("info", "warning", "critical"),
                               example="critical"),
    },
)  # fmt: skip


class ServiceSource(PeriodicSource):
    """One watched service of any kind."""

    key = "services"
    entry = ENTRY

    def __init__(self, conf: dict[str, Any], index: int, ctx: Any) -> None:
        super().__init__(conf, index, ctx)
        self.kind = next(k for k in KINDS if conf.get(k) is not None)
        self.probe_timeout: float = conf.get("timeout") or 10.0
        self.timeout = 2 * self.probe_timeout + SCHEDULER_GRACE
        if self.kind == "process":
            self.processes = ProcessWatch(conf["process"], conf.get("cmdline"), conf.get("pidfile"))
        self.target = self._target()

    def _target(self) -> str:
        """The alert key: the unit, the process name, HOST:PORT, the URL, or the command."""
        if self.kind == "command":
            return self.conf.get("name") or shlex.join(self.conf["command"])
        return str(self.conf[self.kind])

    def check(self) -> list[Observation]:
        conf, timeout = self.conf, self.probe_timeout
        if self.kind == "systemd":
            return [systemd_observation(self.target, systemctl_show(self.target, timeout))]
        if self.kind == "process":
            return self.processes.observe(conf.get("cpu"), conf.get("memory"))
        if self.kind == "tcp":
            host, port = parse_host_port(self.target)
            return [tcp_observation(self.target, host, port, timeout)]
        if self.kind == "http":
            https = self.target.startswith("https:")
            expiry = conf.get("cert_expiry")
            return http_observations(
                self.target,
                conf.get("status") or parse_status_ranges(DEFAULT_STATUS),
                timeout,
                conf.get("ca_file"),
                (DEFAULT_CERT_EXPIRY if expiry is None else expiry) if https else 0.0,
                self.ctx.now(),
            )
        severity = Severity.parse(conf.get("severity") or "warning")
        return [command_observation(self.target, conf["command"], timeout, severity)]


SOURCE = ServiceSource
