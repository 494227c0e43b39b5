"""Generated logs for the scan, idle and start-up benchmarks, and ten rules to run over them.

The lines are the everyday noise of a NAS's auth.log and syslog (sshd, cron, systemd, the
kernel) with about one in ten that a rule is for, mostly sshd brute force.
"""

from __future__ import annotations

import datetime
import os
import random
import re
from collections.abc import Callable
from pathlib import Path

# -- log lines and rules ------------------------------------------------------------------------
# Ten rules as a NAS admin would write them: named groups, alternations, anchoring words.
RULES: list[dict[str, str]] = [
    {
        "name": "ssh-failed-password",
        "severity": "warning",
        "key": "{{ ip }}",
        "match": r"Failed password for (?:invalid user )?(?P<user>\S+) from (?P<ip>[0-9.]+) "
        r"port (?P<port>[0-9]+)",
    },
    {
        "name": "ssh-invalid-user",
        "severity": "info",
        "key": "{{ ip }}",
        "match": r"Invalid user (?P<user>\S*) from (?P<ip>[0-9.]+)",
    },
    {
        "name": "ssh-root-login",
        "severity": "critical",
        "key": "{{ ip }}",
        "match": r"Accepted (?:password|publickey|keyboard-interactive/pam) for root from "
        r"(?P<ip>[0-9.]+)",
    },
    {
        "name": "ssh-max-auth",
        "severity": "warning",
        "key": "{{ ip }}",
        "match": r"(?:error: )?maximum authentication attempts exceeded for (?:invalid user )?"
        r"(?P<user>\S+) from (?P<ip>[0-9.]+)",
    },
    {
        "name": "sudo-failure",
        "severity": "warning",
        "key": "{{ user }}",
        "match": r"sudo: +(?P<user>\S+) : (?:[0-9]+ incorrect password attempts?|user NOT in "
        r"sudoers)",
    },
    {
        "name": "unit-failed",
        "severity": "critical",
        "key": "{{ unit }}",
        "match": r"systemd\[1\]: (?P<unit>\S+\.(?:service|mount|timer|socket)): Failed with "
        r"result '(?P<result>[a-z-]+)'",
    },
    {
        "name": "disk-io-error",
        "severity": "critical",
        "key": "{{ dev }}",
        "match": r"kernel: .*(?:Buffer I/O error on dev|I/O error, dev|critical medium error, dev) "
        r"(?P<dev>[a-z0-9]+)",
    },
    {
        "name": "oom-kill",
        "severity": "critical",
        "key": "{{ comm }}",
        "match": r"Out of memory: Killed process (?P<pid>[0-9]+) \((?P<comm>[^)]+)\)",
    },
    {
        "name": "cron-error",
        "severity": "warning",
        "key": "{{ user }}",
        "match": r"CRON\[[0-9]+\]: \((?P<user>\S+)\) (?:ERROR|MAIL) \((?P<what>[^)]*)\)",
    },
    {
        "name": "smart-failure",
        "severity": "critical",
        "key": "{{ dev }}",
        "match": r"smartd\[[0-9]+\]: Device: (?P<dev>/dev/\S+).*(?:FAILURE|Currently unreadable|"
        r"Offline uncorrectable)",
    },
]


def ere(pattern: str) -> str:
    """`pattern` for `grep -E`: the same regex without Python's group syntax."""
    return re.sub(r"\(\?P<\w+>|\(\?:", "(", pattern)


_HOSTS = ["nas01"]
_USERS = ["root", "admin", "oracle", "test", "ubuntu", "pi", "git", "postgres", "user", "guest"]
_UNITS = [
    "smbd.service",
    "nfs-server.service",
    "backup.timer",
    "srv-media.mount",
    "zfs-zed.service",
]


def _ip(rng: random.Random) -> str:
    return (
        f"{rng.choice((185, 45, 103, 194, 61))}.{rng.randrange(256)}.{rng.randrange(256)}."
        f"{rng.randrange(1, 255)}"
    )


# (weight, matches a rule, maker): mostly the everyday noise of auth.log and syslog.
def _templates() -> list[tuple[int, Callable[[random.Random], str]]]:
    def pid(rng: random.Random) -> int:
        return rng.randrange(1000, 65000)

    return [
        (
            20,
            lambda r: (
                f"sshd[{pid(r)}]: Connection closed by {_ip(r)} port {r.randrange(1024, 65535)} [preauth]"
            ),
        ),
        (
            14,
            lambda r: (
                f"sshd[{pid(r)}]: pam_unix(sshd:session): session closed for user {r.choice(_USERS)}"
            ),
        ),
        (
            14,
            lambda r: (
                f"CRON[{pid(r)}]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)"
            ),
        ),
        (
            12,
            lambda r: (
                f"CRON[{pid(r)}]: (root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)"
            ),
        ),
        (
            10,
            lambda r: (
                f"systemd[1]: Started Session {r.randrange(1, 99999)} of User {r.choice(_USERS)}."
            ),
        ),
        (8, lambda r: f"systemd[1]: {r.choice(_UNITS)}: Deactivated successfully."),
        (
            6,
            lambda r: (
                f"sshd[{pid(r)}]: Received disconnect from {_ip(r)} port {r.randrange(1024, 65535)}:11: Bye Bye [preauth]"
            ),
        ),
        (
            5,
            lambda r: (
                f"kernel: [{r.randrange(10**6)}.{r.randrange(10**6):06d}] IPv4: martian source {_ip(r)} from {_ip(r)}, on dev eth0"
            ),
        ),
        (
            4,
            lambda r: (
                f"sshd[{pid(r)}]: Accepted publickey for admin from 192.168.1.{r.randrange(2, 250)} port {r.randrange(1024, 65535)} ssh2: ED25519 SHA256:x"
            ),
        ),
        # The lines the rules are for: about 8 % of the file, most of them sshd brute force.
        (
            4,
            lambda r: (
                f"sshd[{pid(r)}]: Failed password for {r.choice(('', 'invalid user '))}{r.choice(_USERS)} from {_ip(r)} port {r.randrange(1024, 65535)} ssh2"
            ),
        ),
        (
            2,
            lambda r: (
                f"sshd[{pid(r)}]: Invalid user {r.choice(_USERS)} from {_ip(r)} port {r.randrange(1024, 65535)}"
            ),
        ),
        (
            1,
            lambda r: (
                f"sshd[{pid(r)}]: error: maximum authentication attempts exceeded for root from {_ip(r)} port {r.randrange(1024, 65535)} ssh2 [preauth]"
            ),
        ),
        (
            1,
            lambda r: (
                f"CRON[{pid(r)}]: (root) MAIL (mailed 120 bytes of output but got status 0x004b from MTA)"
            ),
        ),
        (
            1,
            lambda r: (
                f"sudo:   {r.choice(_USERS)} : 3 incorrect password attempts ; TTY=pts/0 ; PWD=/home ; USER=root ; COMMAND=/bin/bash"
            ),
        ),
        (1, lambda r: f"systemd[1]: {r.choice(_UNITS)}: Failed with result 'exit-code'."),
        (
            1,
            lambda r: (
                f"kernel: [{r.randrange(10**6)}.000000] blk_update_request: I/O error, dev sd{r.choice('abcd')}, sector {r.randrange(10**9)}"
            ),
        ),
    ]


def generate_log(path: Path, lines: int, seed: int = 5) -> Path:
    """A syslog-style file of `lines` lines (~100 bytes each), made once and kept in the cache."""
    if path.exists() and path.stat().st_size > 0:
        return path
    rng = random.Random(seed)
    templates = _templates()
    weights = [w for w, _ in templates]
    # A pool of distinct lines, drawn from by weight: realistic variety, generated quickly.
    pool = [[make(rng) for _ in range(400)] for _, make in templates]
    tmp = path.with_suffix(".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    start = datetime.datetime(2024, 3, 1, 0, 0, 0)
    with open(tmp, "w", encoding="ascii") as f:
        done = 0
        while done < lines:
            n = min(50_000, lines - done)
            kinds = rng.choices(range(len(templates)), weights, k=n)
            stamp = (start + datetime.timedelta(seconds=done // 20)).strftime("%b %d %H:%M:%S")
            f.write("".join(f"{stamp} nas01 {rng.choice(pool[k])}\n" for k in kinds))
            done += n
    os.replace(tmp, path)
    return path
