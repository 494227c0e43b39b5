"""The services source against real things: processes, sockets, HTTP(S) servers, commands.

systemd cannot run here (like CI): unit states are judged from `systemctl show` samples in
tests/data/systemctl (written by hand from the systemd docs, see the README there), served by
a stand-in `systemctl` script; the real systemctl is used to prove a missing systemd is a
source failure, not a crash.
"""

from __future__ import annotations

import datetime
import http.server
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from helpers import exited

from notifier import schema, sources
from notifier.events import PROBLEM, Event, Severity
from notifier.sources import services
from notifier.sources._probes import parse_systemctl_show, systemd_observation
from notifier.sources.services import ServiceSource

DATA = Path(__file__).parent / "data" / "systemctl"


class FakeContext:
    """The daemon edge: collects posted events; the clock is wall time unless the test sets it."""

    def __init__(self) -> None:
        self.host = "testhost"
        self.events: list[Event] = []
        self.positions: dict[str, Any] = {}
        self.clock: float | None = None

    def post(self, events: list[Event], positions: dict[str, Any] | None = None) -> None:
        self.events.extend(events)
        self.positions.update(positions or {})

    def position(self, key: str) -> Any | None:
        return self.positions.get(key)

    def now(self) -> float:
        return time.time() if self.clock is None else self.clock


def wait_for(cond, timeout: float):
    """Poll `cond` until it returns something true or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def validate(options: dict[str, Any]) -> tuple[Any, list[str]]:
    errors = schema.Errors()
    conf = services.ENTRY.validate(options, "sources.services[3]", 12, errors)
    return conf, [p.format("config.yaml") for p in errors.problems]


def source(**options: Any) -> ServiceSource:
    conf, problems = validate(options)
    assert not problems, problems
    return ServiceSource(conf, 0, FakeContext())


def observe(src: ServiceSource) -> dict[str, Any]:
    return {ob.check: ob for ob in src.check()}


@pytest.fixture
def spawn():
    """Start real processes; every one is killed at the end."""
    procs: list[subprocess.Popen] = []

    def start(argv: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


# -- config -------------------------------------------------------------------------------------


def test_registered_under_its_module_name():
    assert sources.get("services") is ServiceSource


def test_entry_needs_exactly_one_kind_and_says_which():
    _, problems = validate({"every": "1m"})
    assert problems == [
        "config.yaml:12: sources.services[3]: needs exactly one of systemd, process, tcp, "
        "http, command (what to watch); got none"
    ]
    _, problems = validate({"tcp": "127.0.0.1:22", "http": "http://127.0.0.1/"})
    assert problems[0].endswith("got tcp and http")


def test_options_of_another_kind_are_refused():
    _, problems = validate({"tcp": "127.0.0.1:22", "status": 200})
    assert problems == [
        "config.yaml:12: sources.services[3]: status: applies only to http: checks, not to tcp:"
    ]
    _, problems = validate({"http": "http://127.0.0.1/", "cert_expiry": "7d"})
    assert "cert_expiry: applies only to https:// URLs" in problems[0]


@pytest.mark.parametrize(
    ("address", "error"),
    [
        ("127.0.0.1:5432", None),
        ("[::1]:22", None),
        ("nas01.example.com:445", None),
        ("::1:22", "IPv6 as [::1]:22"),
        ("127.0.0.1:99999", "port must be 1..65535"),
        ("127.0.0.1", "must be HOST:PORT"),
    ],
)
def test_tcp_address_forms(address, error):
    _, problems = validate({"tcp": address})
    if error is None:
        assert problems == []
    else:
        assert len(problems) == 1 and error in problems[0]


def test_url_with_a_password_is_refused_so_it_never_reaches_a_mail():
    _, problems = validate({"http": "https://admin:s3cret@nas01.example.com/"})
    assert len(problems) == 1 and "must not carry a user name or password" in problems[0]
    assert "s3cret" not in problems[0]


def test_command_string_is_split_like_a_shell_and_status_ranges_parse():
    conf, problems = validate({"command": "/usr/local/bin/check_raid --array 'md0 md1'"})
    assert not problems and conf["command"] == ["/usr/local/bin/check_raid", "--array", "md0 md1"]
    conf, problems = validate({"http": "http://127.0.0.1/", "status": "200,204-206"})
    assert not problems and conf["status"] == [(200, 200), (204, 206)]
    _, problems = validate({"http": "http://127.0.0.1/", "status": "20x"})
    assert "must be HTTP status codes" in problems[0]


# -- systemd ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "severity", "summary"),
    [
        ("smbd-running", None, "smbd.service is active (running)"),
        ("apache2-reloading", None, "apache2.service is reloading (reload)"),
        ("smbd-failed", Severity.CRITICAL,
         "smbd.service failed (Result: exit-code, main process exited, status 1); "
         "see journalctl -u smbd.service"),
        ("mariadb-oom-killed", Severity.CRITICAL,
         "mariadb.service failed (Result: oom-kill, main process killed, status 9)"),
        ("nginx-stopped", Severity.WARNING,
         "nginx.service is inactive (dead) but should be running (Result: success)"),
        ("backup-oneshot-done", None, "backup.service is a one-shot service that last ran fine"),
        ("worker-auto-restart", Severity.WARNING,
         "app-worker.service crashed (Result: exit-code) and is being restarted, 3 restarts"),
        ("smdb-not-found", Severity.CRITICAL, "smdb.service does not exist (LoadState=not-found)"),
    ],
)  # fmt: skip
def test_systemctl_show_samples_are_judged(sample, severity, summary):
    props = parse_systemctl_show((DATA / f"{sample}.txt").read_text())
    unit = props["Id"]
    ob = systemd_observation(unit, props)
    assert (ob.check, ob.key, ob.severity) == ("systemd", unit, severity)
    assert ob.summary.startswith(summary)


def test_parser_keeps_equals_signs_inside_values():
    props = parse_systemctl_show((DATA / "smdb-not-found.txt").read_text())
    assert (
        props["LoadError"] == 'org.freedesktop.systemd1.NoSuchUnit "Unit smdb.service not found."'
    )
    assert props["UnitFileState"] == ""


@pytest.fixture
def fake_systemctl(tmp_path, monkeypatch):
    """A `systemctl` on PATH that prints a sample and records how it was called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/argv\ncat "$SAMPLE"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    def use(sample: str) -> Path:
        monkeypatch.setenv("SAMPLE", str(DATA / f"{sample}.txt"))
        return tmp_path / "argv"

    return use


def test_systemd_unit_is_read_through_systemctl_show(fake_systemctl):
    argv_file = fake_systemctl("smbd-failed")
    src = source(systemd="smbd.service")
    src.run_once()
    (event,) = src.ctx.events
    assert event.identity == ("services", "systemd", "smbd.service")
    assert (event.state, event.severity) == (PROBLEM, Severity.CRITICAL)
    assert event.details["result"] == "exit-code"
    argv = argv_file.read_text().split()
    assert argv[:2] == ["show", "smbd.service"]
    assert argv[2].startswith("--property=") and "ActiveState" in argv[2]
    fake_systemctl("smbd-running")
    src.run_once()
    assert src.ctx.events[-1].state == "resolved"


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="systemd runs here")
@pytest.mark.skipif(shutil.which("systemctl") is None, reason="no systemctl installed")
def test_without_systemd_it_is_a_source_failure_not_a_crash():
    src = source(systemd="smbd.service")
    src.run_once()
    (event,) = src.ctx.events
    assert (event.source, event.check, event.key) == ("notifier", "source-failing", src.name)
    assert "systemctl failed: System has not been booted with systemd" in event.summary
    assert src.last_error is not None


# -- processes ----------------------------------------------------------------------------------


def test_process_by_name_even_when_the_kernel_truncates_it(tmp_path, spawn):
    program = tmp_path / "nas-media-indexer"  # 17 characters; the kernel keeps 15
    shutil.copy("/bin/sleep", program)
    proc = spawn([str(program), "300"])
    src = source(process="nas-media-indexer")
    assert wait_for(lambda: observe(src)["process"].severity is None, 5)
    ob = observe(src)["process"]
    assert (
        ob.details["pids"] == [proc.pid]
        and ob.summary == "nas-media-indexer is running (1 process)"
    )
    proc.kill()
    proc.wait()
    ob = observe(src)["process"]
    assert ob.severity is Severity.CRITICAL
    assert ob.summary == "no process named nas-media-indexer is running"


def test_process_by_cmdline_regex(spawn):
    proc = spawn(["sleep", "3021.5"])
    src = source(process="media-sleep", cmdline=r"^sleep 3021\.5$")
    ob = wait_for(lambda: observe(src)["process"], 5)
    assert ob.severity is None and ob.details["pids"] == [proc.pid]
    proc.kill()
    proc.wait()
    assert "no process has a command line matching" in observe(src)["process"].summary


def test_process_by_pidfile_detects_stale_and_reused_ids(tmp_path, spawn):
    pidfile = tmp_path / "sleep.pid"
    proc = spawn(["sleep", "300"])
    pidfile.write_text(f"{proc.pid}\n")
    src = source(process="sleep", pidfile=str(pidfile))
    assert observe(src)["process"].severity is None
    pidfile.write_text(f"{os.getpid()}\n")  # this python, not sleep: the id was reused
    assert "stale pidfile, the id was reused" in observe(src)["process"].summary
    proc.kill()
    proc.wait()
    pidfile.write_text(f"{proc.pid}\n")
    ob = observe(src)["process"]
    assert ob.severity is Severity.CRITICAL and "is not running (stale pidfile)" in ob.summary
    pidfile.unlink()
    assert "does not exist" in observe(src)["process"].summary


def test_process_cpu_and_memory_thresholds(spawn):
    hog = [sys.executable, "-c",
           "b = bytearray(80 * 1024 * 1024)  # notifier-hog\nwhile True: pass"]  # fmt: skip
    proc = spawn(hog)
    src = source(process="hog", cmdline="# notifier-hog", cpu="20%",
                 memory="40MiB")  # fmt: skip
    first = wait_for(lambda: (obs := observe(src))["process"].severity is None and obs, 5)
    assert "process-cpu" not in first  # nothing to compare with yet
    mem = wait_for(lambda: observe(src)["process-memory"].severity, 10)
    assert mem is Severity.WARNING
    # Measured between two checks; checks 20 ms apart can see 0% (10 ms clock ticks).
    cpu = wait_for(lambda: (o := observe(src).get("process-cpu")) and o.severity and o, 10)
    assert cpu and cpu.severity is Severity.WARNING
    assert cpu.summary.startswith("hog uses ") and cpu.summary.endswith("% CPU, more than 20%")
    assert cpu.details["cpu_percent"] > 20 and cpu.details["pids"] == [proc.pid]
    relaxed = source(process="hog", cmdline="# notifier-hog", memory="95%")
    assert observe(relaxed)["process-memory"].severity is None


# -- TCP ----------------------------------------------------------------------------------------


def test_tcp_port_open_then_refused():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    src = source(tcp=f"127.0.0.1:{port}")
    ob = observe(src)["tcp"]
    assert ob.severity is None and ob.key == f"127.0.0.1:{port}"
    listener.close()
    ob = observe(src)["tcp"]
    assert ob.severity is Severity.CRITICAL
    assert ob.summary == f"127.0.0.1:{port}: connection refused (nothing listens there?)"


def test_tcp_on_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with listener:
        port = listener.getsockname()[1]
        assert observe(source(tcp=f"[::1]:{port}"))["tcp"].severity is None


def test_tcp_timeout_when_the_listener_queue_is_full():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # never accepts; the kernel then drops further SYNs
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        started = time.monotonic()
        ob = observe(source(tcp=f"127.0.0.1:{port}", timeout="0.5s"))["tcp"]
        assert time.monotonic() - started < 3
        assert ob.severity is Severity.CRITICAL
        assert ob.summary == f"127.0.0.1:{port}: no answer within 0.5s"
    finally:
        for s in fillers:
            s.close()
        listener.close()


# -- HTTP ---------------------------------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        code = {"/": 200, "/moved": 302, "/missing": 404, "/broken": 503}.get(self.path, 404)
        self.send_response(code)
        if code == 302:
            self.send_header("Location", "/")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def web():
    """Start real HTTP(S) servers on 127.0.0.1; returns a function (ssl context) -> base URL."""
    servers = []

    def start(context: ssl.SSLContext | None = None) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if context is not None:
            server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        scheme = "https" if context else "http"
        return f"{scheme}://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_http_status_expectations(web):
    base = web()
    assert observe(source(http=f"{base}/"))["http"].severity is None
    assert observe(source(http=f"{base}/moved"))["http"].severity is None  # 3xx: not followed
    ob = observe(source(http=f"{base}/broken"))["http"]
    assert ob.severity is Severity.CRITICAL
    assert ob.summary == f"{base}/broken answers 503 Service Unavailable, expected 200-399"
    assert ob.details["status"] == 503
    assert observe(source(http=f"{base}/missing", status=404))["http"].severity is None


def test_http_server_gone_is_critical(web):
    base = web()
    with socket.create_server(("127.0.0.1", 0)) as probe:
        free_port = probe.getsockname()[1]
    ob = observe(source(http=f"http://127.0.0.1:{free_port}/health"))["http"]
    assert ob.severity is Severity.CRITICAL and "connection refused" in ob.summary
    assert base.startswith("http://")


def test_http_answer_that_is_not_http_is_critical_and_says_so():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

        threading.Thread(target=answer, daemon=True).start()
        ob = observe(source(http=f"http://127.0.0.1:{port}/"))["http"]
    assert ob.severity is Severity.CRITICAL
    assert "not a valid HTTP answer (BadStatusLine" in ob.summary


def test_without_an_http_check_neither_ssl_nor_http_client_is_loaded():
    """They cost ~2 MiB of the idle daemon; only an http check needs them."""
    code = """
import socket, sys
from notifier import schema
from notifier.sources import services
listener = socket.create_server(("127.0.0.1", 0))
for conf in ({"tcp": "127.0.0.1:%d" % listener.getsockname()[1]}, {"tcp": "127.0.0.1:1"},
             {"command": ["true"]}, {"process": "init"}):
    errors = schema.Errors()
    conf = services.ENTRY.validate(conf, "sources.services[0]", 1, errors)
    assert not errors.problems and services.ServiceSource(conf, 0, None).check()
print(sorted(m for m in ("ssl", "http.client", "_ssl", "hashlib") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.fixture
def private_ca(tmp_path):
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return ca, str(ca_file)


def server_context(ca: trustme.CA, days: float) -> ssl.SSLContext:
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
    cert = ca.issue_cert("127.0.0.1", not_after=expires)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


def test_https_certificate_expiring_soon_warns(web, private_ca):
    ca, ca_file = private_ca
    base = web(server_context(ca, days=6.5))
    obs = observe(source(http=f"{base}/", ca_file=ca_file))
    assert obs["http"].severity is None
    cert = obs["certificate"]
    assert (cert.key, cert.severity) == (f"{base}/", Severity.WARNING)
    assert cert.summary.startswith(f"the certificate of {base}/ expires in 6d 1")
    assert cert.details["days_left"] == 6
    relaxed = observe(source(http=f"{base}/", ca_file=ca_file, cert_expiry="3d"))
    assert relaxed["certificate"].severity is None
    assert "certificate" not in observe(source(http=f"{base}/", ca_file=ca_file,
                                               cert_expiry="0s"))  # fmt: skip


def test_https_from_an_unknown_ca_is_never_accepted_silently(web, private_ca):
    ca, _ = private_ca
    base = web(server_context(ca, days=90))
    obs = observe(source(http=f"{base}/"))
    assert obs["http"].severity is Severity.CRITICAL
    assert "certificate not trusted" in obs["http"].summary
    assert "ca_file:" in obs["http"].summary
    assert "certificate" not in obs


# -- commands -----------------------------------------------------------------------------------


def test_command_exit_status_and_output():
    assert observe(source(command="sh -c 'echo all arrays clean'"))["command"].severity is None
    src = source(command=["sh", "-c", "echo 'md1: degraded (sdb missing)'; exit 2"])
    ob = observe(src)["command"]
    assert ob.severity is Severity.WARNING
    assert ob.summary == "sh -c 'echo '\"'\"'md1: degraded (sdb missing)'\"'\"'; exit 2': " \
        "exit status 2: md1: degraded (sdb missing)"  # fmt: skip
    assert ob.details["output"] == "md1: degraded (sdb missing)" and ob.details["exit_status"] == 2
    named = source(name="raid", command=["sh", "-c", "echo oops >&2; exit 1"], severity="critical")
    ob = observe(named)["command"]
    assert (ob.key, ob.severity, ob.details["output"]) == ("raid", Severity.CRITICAL, "oops")


def test_command_output_is_capped_and_never_blocks():
    ob = observe(source(name="chatty", command=[sys.executable, "-c",
                                                "print('x' * 1_000_000); raise SystemExit(3)"]))  # fmt: skip
    assert ob["command"].details["exit_status"] == 3
    assert len(ob["command"].details["output"]) == 4096


def test_command_timeout_kills_it_and_its_children(tmp_path):
    pids = tmp_path / "pids"
    src = source(name="stuck", timeout="0.5s",
                 command=["sh", "-c", f"sleep 60 & echo $! > {pids}; echo started; wait"])  # fmt: skip
    started = time.monotonic()
    ob = observe(src)["command"]
    assert time.monotonic() - started < 3
    assert ob.severity is Severity.WARNING
    assert ob.summary == "stuck: timed out after 0.5s, killed: started"
    child = int(pids.read_text())
    assert wait_for(lambda: exited(child), 5)


def test_command_that_cannot_start_is_a_source_failure():
    src = source(command="/nonexistent/check_raid")
    src.run_once()
    (event,) = src.ctx.events
    assert (event.source, event.check) == ("notifier", "source-failing")
    assert "cannot run /nonexistent/check_raid: No such file or directory" in event.summary


def test_command_does_not_inherit_the_credentials_directory(monkeypatch):
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/notifier.service")
    ob = observe(source(command=["sh", "-c", 'echo "${CREDENTIALS_DIRECTORY:-unset}"']))
    assert ob["command"].details["output"] == "unset"
