"""Each source end to end: the real daemon subprocess, real things watched, mail at a real server."""

from __future__ import annotations

import signal
import socket
import subprocess

import pytest
import yaml

from notifier.catcher import Catcher
from tests.helpers import DaemonProcess, smtp_section, wait_for, write_config


@pytest.fixture
def catcher(tmp_path):
    with Catcher(tmp_path / "mail", tls="tls") as c:
        yield c


def start(tmp_path, catcher, sources, **top):
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "config.yaml", smtp_section(catcher), state, sources=sources, **top
    )
    return config, DaemonProcess(config, state, tmp_path / "daemon.log").wait_ready()


def subjects(catcher):
    return [m.message["Subject"] for m in catcher.messages]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_services_tcp_problem_resolution_and_removal_by_reload(tmp_path, catcher):
    port = free_port()
    down = {"tcp": f"127.0.0.1:{port}", "every": "1s", "timeout": "1s"}
    config, d = start(tmp_path, catcher, {"services": [down]})
    try:
        (problem,) = catcher.wait_for(1, timeout=20)
        assert "CRITICAL" in problem.message["Subject"] and str(port) in problem.message["Subject"]
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", port))
            listener.listen()
            resolved = catcher.wait_for(2, timeout=20)[1]
        assert resolved.message["Subject"].startswith("[nas01] RESOLVED:")
        assert resolved.message["In-Reply-To"] == problem.message["Message-ID"]
        # down again, then the check is removed from the config: the open alert is resolved
        catcher.wait_for(3, timeout=20)
        conf = yaml.safe_load(config.read_text())
        conf["sources"] = {}
        config.write_text(yaml.safe_dump(conf))
        d.signal(signal.SIGHUP)
        gone = catcher.wait_for(4, timeout=20)[3]
        assert "RESOLVED: no longer checked" in gone.message["Subject"]
    finally:
        d.stop()


def test_disk_threshold_on_a_real_tmpfs(tmp_path, catcher):
    mnt = tmp_path / "pool"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {done.stderr.decode().strip()}")
    try:
        (mnt / "fill").write_bytes(b"x" * (3 * 1024 * 1024 + 512 * 1024))
        config, d = start(
            tmp_path,
            catcher,
            {"disk": [{"mounts": [str(mnt)], "warning": "50%", "critical": "80%", "every": "1s"}]},
        )
        try:
            (m,) = catcher.wait_for(1, timeout=20)
            assert (
                m.message["Subject"].startswith("[nas01] CRITICAL:")
                and str(mnt) in m.message["Subject"]
            )
            body = m.message.get_body(("plain",)).get_content()
            assert "MiB" in body
        finally:
            d.stop()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_journal_rule_through_the_daemon(tmp_path, catcher):
    from tests.test_journal import REMOTE, Journal

    if REMOTE is None:
        pytest.skip("needs systemd-journal-remote")
    jdir = Journal(tmp_path / "journal")
    jdir.append("Server listening on 0.0.0.0 port 22.")
    rules = [
        {
            "name": "ssh-failed-password",
            "severity": "warning",
            "key": "{{ ip }}",
            "match": r"Failed password for (?:invalid user )?(?P<user>\S+) from (?P<ip>\S+)",
        }
    ]
    config, d = start(
        tmp_path,
        catcher,
        {"journal": [{"name": "ssh", "directory": str(jdir.directory), "rules": rules}]},
    )
    try:
        wait_for(
            lambda: d.status()["sources"] and d.status()["sources"][0]["last_check"],
            20,
            "the journal source to be running",
        )
        jdir.append(
            *[f"Failed password for root from 203.0.113.7 port {4000 + i} ssh2" for i in range(5)]
        )
        (m,) = catcher.wait_for(1, timeout=30)
        assert "Failed password for root from 203.0.113.7" in m.message["Subject"]
        assert "(5 times)" in m.message["Subject"]
    finally:
        d.stop()


def test_log_rule_through_the_daemon_and_a_restart_reads_what_was_missed(tmp_path, catcher):
    log = tmp_path / "auth.log"
    log.write_text("Dec  3 14:00:00 nas sshd[1]: Server listening on 0.0.0.0 port 22.\n")
    rules = [
        {
            "name": "ssh-failed-password",
            "severity": "warning",
            "key": "{{ ip }}",
            "match": r"Failed password for (?:invalid user )?(?P<user>\S+) from (?P<ip>\S+)",
        }
    ]
    config, d = start(
        tmp_path, catcher, {"logs": [{"name": "auth", "path": str(log), "rules": rules}]}
    )
    line = "Dec  3 14:02:{:02d} nas sshd[812]: Failed password for root from 203.0.113.7 port 22 ssh2\n"
    try:
        wait_for(lambda: d.status()["sources"][0]["last_check"], 20, "the log source to start")
        with open(log, "a") as f:
            f.write(line.format(1))
        (m,) = catcher.wait_for(1, timeout=20)
        assert m.message["Subject"] == "[nas01] WARNING: " + " ".join(line.format(1).split())
    finally:
        assert d.stop() == 0
    with open(log, "a") as f:  # written while the daemon is down
        for i in range(2, 6):
            f.write(line.format(i))
    d = DaemonProcess(config, tmp_path / "state", tmp_path / "daemon2.log").wait_ready()
    try:
        second = catcher.wait_for(2, timeout=20)[1]
        assert "(4 times)" in second.message["Subject"]
    finally:
        d.stop()
    assert len(catcher.messages) == 2
