"""Shared test helpers: waiting on conditions, writing configs, running the real daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from notifier.control import request, socket_path

REPO = Path(__file__).resolve().parent.parent


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `cond` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def exited(pid: int) -> bool:
    """The process has ended: reaped, or a zombie its parent has not waited for yet."""
    from notifier.sources._procfs import NoSuchProcess, Process

    try:
        return Process(pid).is_zombie()
    except NoSuchProcess:
        return True


def notifier_cmd() -> list[str]:
    return [sys.executable, "-m", "notifier"]


def run_cli(
    *args: str,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    cwd: str | None = None,
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("PYTHONPATH", str(REPO))
    return subprocess.run(
        [*notifier_cmd(), *args],
        capture_output=True,
        text=True,
        input=input,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
    )


def smtp_section(catcher: Any, **over: Any) -> dict[str, Any]:
    """An smtp: section pointing at a Catcher."""
    sec = {
        "host": "localhost",
        "port": catcher.port,
        "security": catcher.tls if catcher.tls != "none" else "none",
        "ca_file": str(catcher.ca_file) if catcher.tls != "none" else None,
        "from": "nas01 <alerts@example.com>",
        "to": ["admin@example.com"],
        "timeout": "5s",
    }
    if sec["security"] == "none":
        sec["host"] = "127.0.0.1"
    sec.update(over)
    return {k: v for k, v in sec.items() if v is not None}


def write_config(path: Path, smtp: dict[str, Any], state_dir: Path, **top: Any) -> Path:
    conf = {
        "host_label": "nas01",
        "state_dir": str(state_dir),
        "smtp": smtp,
        "policy": {"group_wait": "0s", "retry_max": "2s"},
    }
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(conf.get(key), dict):
            conf[key] = {**conf[key], **value}
        else:
            conf[key] = value
    path.write_text(yaml.safe_dump(conf, sort_keys=False))
    os.chmod(path, 0o600)
    return path


class DaemonProcess:
    """`notifier run` as a real subprocess, its log in a file."""

    def __init__(
        self,
        config: Path,
        state_dir: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.config, self.state_dir, self.log_path = config, state_dir, log_path
        full_env = {**os.environ, **(env or {})}
        full_env.setdefault("PYTHONPATH", str(REPO))
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [*notifier_cmd(), "run", "-c", str(config), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    def wait_ready(self, timeout: float = 20) -> DaemonProcess:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return bool(
                    request(socket_path(str(self.state_dir)), {"op": "ping"}, timeout=1).get("ok")
                )
            except OSError:
                return False

        wait_for(up, timeout, "the daemon to answer on its socket")
        return self

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        answer = request(socket_path(str(self.state_dir)), {"op": "status"})
        assert answer["ok"], answer
        return answer["status"]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._log.close()


def status_json(config: Path) -> dict[str, Any]:
    out = run_cli("status", "-c", str(config), "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)
