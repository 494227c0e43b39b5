"""How the services source looks at one thing: a systemd unit, a TCP port, a URL, a command.

Each probe returns Observations (the service's state). A probe raises ProbeError
only when the check itself cannot run (no systemctl, a missing program): that is
a failure of the source, not news about the service.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from notifier import units
from notifier.events import Severity
from notifier.sources.base import Observation

OUTPUT_LIMIT = 4096  # bytes of a command's output kept for the mail


def format_timeout(seconds: float) -> str:
    """`0.5s`, `10s`, `2m`: sub-second timeouts stay readable."""
    if seconds < 9.95:
        return f"{seconds:.1f}".rstrip("0").rstrip(".") + "s"
    return units.format_duration(seconds)


class ProbeError(Exception):
    """The check could not be made at all; the message says why and what to do."""


# -- systemd ------------------------------------------------------------------------------------

SYSTEMD_PROPERTIES = (
    "Id", "Description", "LoadState", "LoadError", "ActiveState", "SubState", "Result",
    "ExecMainCode", "ExecMainStatus", "Type", "RemainAfterExit", "UnitFileState", "NRestarts",
    "ActiveEnterTimestamp", "InactiveEnterTimestamp",
)  # fmt: skip

# ActiveStates that are on their way or fine; `activating (auto-restart)` is handled apart.
_SYSTEMD_FINE = {"active", "reloading", "activating", "deactivating", "refreshing"}

# siginfo si_code values systemd shows as ExecMainCode (CLD_EXITED, CLD_KILLED, CLD_DUMPED).
_EXIT_CODES = {"1": "exited", "2": "killed", "3": "dumped core"}


def parse_systemctl_show(text: str) -> dict[str, str]:
    """KEY=VALUE lines of `systemctl show` as a dict (values may contain '=')."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key and " " not in key:
            props[key] = value
    return props


def systemctl_show(unit: str, timeout: float, systemctl: str = "systemctl") -> dict[str, str]:
    """The unit's properties from `systemctl show`; ProbeError when systemctl cannot answer."""
    argv = [systemctl, "show", unit, "--property=" + ",".join(SYSTEMD_PROPERTIES)]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env={**os.environ, "LC_ALL": "C", "SYSTEMD_PAGER": ""})  # fmt: skip
    except FileNotFoundError:
        raise ProbeError(
            f"systemctl not found: this machine does not run systemd; watch {unit} with "
            "`process:` instead"
        ) from None
    except subprocess.TimeoutExpired:
        raise ProbeError(f"systemctl show {unit} gave no answer within "
                         f"{format_timeout(timeout)}: is systemd hung?") from None  # fmt: skip
    if done.returncode != 0:
        why = "; ".join(done.stderr.decode("utf-8", "replace").split("\n")).strip("; ")
        raise ProbeError(f"systemctl failed: {why or f'exit status {done.returncode}'}")
    props = parse_systemctl_show(done.stdout.decode("utf-8", "replace"))
    if "ActiveState" not in props:
        raise ProbeError(f"systemctl show {unit} printed no ActiveState; is it a unit name?")
    return props


def systemd_observation(unit: str, props: dict[str, str]) -> Observation:
    """The state of one unit, judged from its `systemctl show` properties."""
    load = props.get("LoadState", "")
    active = props.get("ActiveState", "")
    sub = props.get("SubState", "")
    result = props.get("Result", "")
    details: dict[str, Any] = {
        "unit": unit, "description": props.get("Description", ""), "load_state": load,
        "active_state": active, "sub_state": sub, "result": result,
        "unit_file_state": props.get("UnitFileState", ""),
    }  # fmt: skip
    if props.get("ExecMainCode", "0") != "0":
        how = _EXIT_CODES.get(props["ExecMainCode"], f"code {props['ExecMainCode']}")
        details["main_process"] = f"{how}, status {props.get('ExecMainStatus', '?')}"
    if props.get("NRestarts", "0") not in ("", "0"):
        details["restarts"] = int(props["NRestarts"]) if props["NRestarts"].isdigit() else 0
    state = f"{active} ({sub})" if sub else active
    details["state"] = state

    def seen(severity: Severity | None, summary: str) -> Observation:
        return Observation("systemd", unit, severity, summary, details)

    if load == "not-found":
        return seen(Severity.CRITICAL,
                    f"{unit} does not exist (LoadState=not-found): a typo, or its package was "
                    "removed?")  # fmt: skip
    if load in ("error", "bad-setting"):
        error = props.get("LoadError", "").strip()
        return seen(Severity.CRITICAL,
                    f"{unit} cannot be loaded ({load}{': ' + error if error else ''}); "
                    f"see systemctl status {unit}")  # fmt: skip
    if active == "failed":
        why = f"Result: {result}" if result else "no result"
        if "main_process" in details:
            why += f", main process {details['main_process']}"
        return seen(Severity.CRITICAL, f"{unit} failed ({why}); see journalctl -u {unit}")
    if sub == "auto-restart":
        # A crash loop sits in activating (auto-restart) between attempts: not fine.
        n = details.get("restarts", 0)
        return seen(Severity.WARNING,
                    f"{unit} crashed (Result: {result or 'unknown'}) and is being restarted"
                    f"{f', {n} restarts so far' if n else ''}")  # fmt: skip
    if active in _SYSTEMD_FINE:
        return seen(None, f"{unit} is {state}")
    if load == "masked":
        return seen(Severity.WARNING, f"{unit} is masked and {state}: it cannot be started")
    if active == "inactive":
        oneshot = props.get("Type") == "oneshot" and props.get("RemainAfterExit") != "yes"
        if oneshot and result in ("success", ""):
            return seen(None, f"{unit} is a one-shot service that last ran fine ({state})")
        return seen(Severity.WARNING, f"{unit} is {state} but should be running "
                                      f"(Result: {result or 'none'}); start it with "
                                      f"systemctl start {unit}")  # fmt: skip
    return seen(Severity.WARNING, f"{unit} is in an unexpected state: {state}")


# -- TCP ----------------------------------------------------------------------------------------


def parse_host_port(text: str) -> tuple[str, int]:
    """`host:port`, `[::1]:22` -> (host, port); ValueError with the reason."""
    text = str(text).strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"must be [IPv6]:PORT like [::1]:22, got {text!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"must be HOST:PORT like 127.0.0.1:5432 (IPv6 as [::1]:22), "
                             f"got {text!r}")  # fmt: skip
    if not host:
        raise ValueError(f"has no host name, got {text!r}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 1..65535, got {text!r}")
    return host, int(port_text)


def _network_error(exc: BaseException, timeout: float) -> str:
    """What a sysadmin wants to read for a failed connection."""
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within {format_timeout(timeout)}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there?)"
    # ssl and http.client (+2 MiB with email, libssl) are loaded by an http check, the only
    # probe that raises their errors: the daemon without one never imports them.
    ssl, client = sys.modules.get("ssl"), sys.modules.get("http.client")
    if ssl is not None and isinstance(exc, ssl.SSLCertVerificationError):
        return (f"certificate not trusted: {exc.verify_message}; if a private CA signed it, "
                "name that CA with ca_file:")  # fmt: skip
    if ssl is not None and isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if client is not None and isinstance(exc, client.HTTPException):
        return f"not a valid HTTP answer ({type(exc).__name__}: {exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def tcp_observation(key: str, host: str, port: int, timeout: float) -> Observation:
    """Whether HOST:PORT accepts a TCP connection within `timeout`."""
    started = time.monotonic()
    details: dict[str, Any] = {"host": host, "port": port}
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        details["error"] = _network_error(exc, timeout)
        return Observation("tcp", key, Severity.CRITICAL, f"{key}: {details['error']}", details)
    details["connect_ms"] = round((time.monotonic() - started) * 1000, 1)
    return Observation("tcp", key, None,
                       f"{key} accepts connections ({details['connect_ms']:g} ms)", details)  # fmt: skip


# -- HTTP ---------------------------------------------------------------------------------------


def parse_status_ranges(value: Any) -> list[tuple[int, int]]:
    """`200`, `"200-399"`, `"200,204"` or a list of those -> [(lo, hi), ...]."""
    items = value if isinstance(value, list) else str(value).split(",")
    ranges = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"must be HTTP status codes like 200 or 200-399, got {item!r}")
        lo, _, hi = str(item).strip().partition("-")
        try:
            low, high = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(
                f"must be HTTP status codes like 200 or 200-399, got {item!r}"
            ) from None
        if not 100 <= low <= high <= 599:
            raise ValueError(f"must be a status range within 100-599, got {item!r}")
        ranges.append((low, high))
    return ranges


def http_observations(url: str, expect: list[tuple[int, int]], timeout: float,
                      ca_file: str | None, cert_expiry: float, now: float) -> list[Observation]:  # fmt: skip
    """The answer of GET `url`, and for https the certificate's remaining validity."""
    import http.client
    import ssl

    parts = urlsplit(url)
    details: dict[str, Any] = {"url": url}
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        # Verified against the system store (plus ca_file); never silently unverified.
        context = ssl.create_default_context(cafile=ca_file)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=context)  # fmt: skip
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    observations = []
    started = time.monotonic()
    try:
        conn.connect()
        # The rest of the exchange gets what is left of the timeout, not a fresh one per step.
        conn.sock.settimeout(max(0.05, started + timeout - time.monotonic()))
        if isinstance(conn.sock, ssl.SSLSocket) and cert_expiry > 0:
            observations.append(_certificate(url, conn.sock.getpeercert(), cert_expiry, now))
        conn.request("GET", path, headers={"User-Agent": "notifier health check",
                                           "Connection": "close"})  # fmt: skip
        response = conn.getresponse()
        status, reason = response.status, response.reason
    except (OSError, http.client.HTTPException) as exc:
        details["error"] = _network_error(exc, timeout)
        return [Observation("http", url, Severity.CRITICAL, f"{url}: {details['error']}", details)]
    finally:
        conn.close()
    details.update(status=status, reason=reason,
                   response_ms=round((time.monotonic() - started) * 1000, 1))  # fmt: skip
    wanted = ", ".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in expect)
    if any(lo <= status <= hi for lo, hi in expect):
        observations.insert(0, Observation("http", url, None, f"{url} answers {status} {reason}",
                                           details))  # fmt: skip
    else:
        details["expected"] = wanted
        observations.insert(0, Observation(
            "http", url, Severity.CRITICAL,
            f"{url} answers {status} {reason}, expected {wanted}", details))  # fmt: skip
    return observations


def _certificate(url: str, cert: dict[str, Any], warn_within: float, now: float) -> Observation:
    import ssl

    not_after = ssl.cert_time_to_seconds(cert["notAfter"])
    left = not_after - now
    subject = dict(x[0] for x in cert.get("subject", ()))
    details = {"url": url, "not_after": cert["notAfter"], "subject": subject.get("commonName", ""),
               "expires_in": units.format_duration(max(left, 0)),
               "days_left": int(left // 86400)}  # fmt: skip
    if left < warn_within:
        return Observation("certificate", url, Severity.WARNING,
                           f"the certificate of {url} expires in {details['expires_in']} "
                           f"({cert['notAfter']}); renew it", details)  # fmt: skip
    return Observation("certificate", url, None,
                       f"the certificate of {url} is valid until {cert['notAfter']}", details)  # fmt: skip


# -- commands -----------------------------------------------------------------------------------


def run_command(argv: list[str], timeout: float) -> tuple[int | None, bytes, float]:
    """Run `argv`; (exit status or None if it was killed at the timeout, first 4 KiB of
    stdout+stderr, seconds taken). ProbeError if it cannot be started."""
    started = time.monotonic()
    deadline = started + timeout
    try:
        # Its own session, so a timeout kills the children of a shell script too.
        # Without CREDENTIALS_DIRECTORY: a check command has no business with our secrets.
        env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)  # fmt: skip
    except OSError as exc:
        raise ProbeError(f"cannot run {argv[0]}: {exc.strerror or exc}; check the path "
                         "and that it is executable") from None  # fmt: skip
    assert proc.stdout is not None
    output = bytearray()
    with proc.stdout, selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            # Keep reading past the limit so the command never blocks on a full pipe.
            output += chunk[: max(0, OUTPUT_LIMIT - len(output))]
        try:
            status: int | None = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            status = None
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the command, or what it left behind
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
    return status, bytes(output), time.monotonic() - started


def command_observation(key: str, argv: list[str], timeout: float,
                        severity: Severity) -> Observation:  # fmt: skip
    """Exit status 0 is fine, anything else (or a timeout) is `severity`."""
    status, raw, took = run_command(argv, timeout)
    output = raw.decode("utf-8", "replace").rstrip()
    details: dict[str, Any] = {"command": key, "exit_status": status, "output": output,
                               "seconds": round(took, 3)}  # fmt: skip
    first_line = output.splitlines()[0] if output else ""
    if status == 0:
        return Observation("command", key, None, f"{key}: OK", details)
    if status is None:
        summary = f"{key}: timed out after {format_timeout(timeout)}, killed"
    elif status < 0:
        summary = f"{key}: killed by signal {-status}"
    else:
        summary = f"{key}: exit status {status}"
    if first_line:
        summary += f": {first_line[:200]}"
    return Observation("command", key, severity, summary, details)
