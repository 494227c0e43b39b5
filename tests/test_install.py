"""`pip install .` into a fresh venv gives a `notifier` that works outside the source tree."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv

from tests.helpers import REPO


def test_wheel_installs_into_a_fresh_venv_and_finds_its_templates(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("notifier-*.whl")
    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    py = target / "bin" / "python"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    # The dependencies come from the test environment (no network needed); notifier itself
    # only from the wheel.
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    with open(os.path.join(purelib, "deps.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    where = subprocess.run(
        [
            str(py),
            "-c",
            "import notifier, notifier.mail.render as r; "
            "print(notifier.__file__); print(r.builtin_dir())",
        ],
        capture_output=True,
        text=True,
        cwd=outside,
        env=env,
    )
    module_file, templates = where.stdout.split()
    assert module_file.startswith(str(target)), module_file
    assert templates.startswith(str(target)) and os.path.isfile(
        os.path.join(templates, "alert.html.j2")
    )
    config = outside / "config.yaml"
    config.write_text(
        f"state_dir: {tmp_path}/state\nsmtp:\n  host: smtp.example.com\n  from: a@example.com\n"
        f"  to: [b@example.com]\n"
    )
    os.chmod(config, 0o600)
    check = subprocess.run(
        [str(target / "bin" / "notifier"), "check", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=outside,
        env=env,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "all rendered with sample events" in check.stdout
