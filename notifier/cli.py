"""The `notifier` command line. Heavy modules are imported by the command that needs them."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

log = logging.getLogger("notifier")

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    from notifier import __version__
    from notifier.config import default_config_path

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        default=default_config_path(),
        help="the config file (default: $NOTIFIER_CONFIG or /etc/notifier/config.yaml)",
    )
    common.add_argument("-v", "--verbose", action="count", default=0, help="more detail (debug)")
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")

    p = argparse.ArgumentParser(prog="notifier", description="E-mail alerts for this machine.")
    p.add_argument("--version", action="version", version=f"notifier {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "run", parents=[common], help="the daemon, in the foreground (systemd runs this)"
    )
    sub.add_parser(
        "check",
        parents=[common],
        help="validate the config, render every template, check the password can be read",
    )
    t = sub.add_parser("test-email", parents=[common], help="send one test mail now")
    t.add_argument("--to", action="append", help="send to this address instead (repeatable)")
    s = sub.add_parser(
        "send", parents=[common], help="an event from a script, through the daemon's queue"
    )
    s.add_argument("--severity", required=True, choices=["info", "warning", "critical"])
    s.add_argument("--subject", required=True, help="one line saying what happened")
    s.add_argument("--body", help="more text; '-' reads it from standard input")
    s.add_argument(
        "--key", help="what it is about (default: the subject); repeats with one key are counted"
    )
    s.add_argument("--source", default="send", help="who reports it (default: send)")
    s.add_argument("--check", help="the kind of event (default: the source)")
    s.add_argument(
        "--state",
        choices=["event", "problem", "resolved"],
        default="event",
        help="event (one-shot, default), or open/clear a stateful alert",
    )
    sub.add_parser(
        "set-password",
        parents=[common],
        help="store the SMTP password in the keyring (reads standard input when not a terminal)",
    )
    st = sub.add_parser(
        "status", parents=[common], help="active alerts, outbox, last delivery and error"
    )
    st.add_argument("--json", action="store_true", help="machine-readable")
    sc = sub.add_parser("scan", parents=[common], help="run the configured log rules over files")
    sc.add_argument("--rule", help="only this rule")
    sc.add_argument("files", nargs="+", metavar="LOGFILE")
    d = sub.add_parser("demo", help="the whole thing on this machine, no account needed")
    d.add_argument("-v", "--verbose", action="count", default=0)
    d.add_argument("-q", "--quiet", action="store_true")
    d.add_argument("--dir", help="keep the demo's files here (default: a new temporary directory)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from notifier.logsetup import setup_logging

    setup_logging(-1 if args.quiet else args.verbose)
    from notifier.config import ConfigInvalid

    try:
        return COMMANDS[args.command](args)
    except ConfigInvalid as exc:
        print(exc.report(), file=sys.stderr)
        n = len(exc.problems)
        print(
            f"{exc.filename}: {n} problem{'s' if n != 1 else ''}; nothing was changed",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug or an environment problem: one clear line, details with -v
        from notifier.spool import SpoolError

        if isinstance(exc, SpoolError | OSError):
            from notifier.logsetup import redact

            print(redact(f"notifier: {exc}"), file=sys.stderr)
            return 1
        if args.verbose:
            raise
        from notifier.logsetup import redact

        print(
            redact(
                f"notifier: internal error: {type(exc).__name__}: {exc} (run with -v for details)"
            ),
            file=sys.stderr,
        )
        return 1


def _load(args: argparse.Namespace) -> dict[str, Any]:
    from notifier.config import load_config

    return load_config(args.config)


def cmd_run(args: argparse.Namespace) -> int:
    conf = _load(args)
    _permission_warnings(conf)
    from notifier.daemon import Daemon

    return Daemon(conf, args.config).run()


def _permission_warnings(conf: dict[str, Any]) -> list[str]:
    from notifier.secrets import config_warnings

    warnings = config_warnings(conf)
    for w in warnings:
        log.warning("%s", w)
    return warnings


def cmd_check(args: argparse.Namespace) -> int:
    conf = _load(args)
    from notifier.check import check_everything

    return check_everything(conf, print)


def cmd_test_email(args: argparse.Namespace) -> int:
    conf = _load(args)
    from notifier.testmail import send_test_mail

    return send_test_mail(conf, args.to, verbose=bool(args.verbose))


def _conf_for_send(args: argparse.Namespace) -> dict[str, Any]:
    """The config, or, if it is broken (mid-edit), enough of it to hand the event over anyway:
    an alert from smartd must not be lost because someone is editing the YAML."""
    from notifier.config import ConfigInvalid

    try:
        return _load(args)
    except ConfigInvalid as exc:
        import socket

        import yaml

        try:
            raw = yaml.safe_load(open(args.config, encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            raw = None
        raw = raw if isinstance(raw, dict) else {}
        state_dir = (
            raw.get("state_dir") if isinstance(raw.get("state_dir"), str) else "/var/lib/notifier"
        )
        host = (
            raw.get("host_label")
            if isinstance(raw.get("host_label"), str)
            else socket.gethostname()
        )
        print(
            f"notifier send: warning: {exc.filename} has {len(exc.problems)} problem(s) (see "
            f"`notifier check`); handing the event over through {state_dir} anyway",
            file=sys.stderr,
        )
        return {"state_dir": state_dir, "host_label": host}


def cmd_send(args: argparse.Namespace) -> int:
    conf = _conf_for_send(args)
    import time
    import uuid

    from notifier.control import request, socket_path
    from notifier.events import Event, Severity

    body = args.body
    if body == "-":
        body = sys.stdin.read(1_000_000)
    source = args.source
    event = Event(
        source=source,
        check=args.check or source,
        key=args.key or args.subject,
        severity=Severity.parse(args.severity),
        state=args.state,
        summary=args.subject,
        details={"body": body} if body else {},
        time=time.time(),
        host=conf["host_label"],
        id=uuid.uuid4().hex,
    )  # if our answer is lost and we spool it, it counts once
    try:
        answer = request(socket_path(conf["state_dir"]), {"op": "send", "event": event.to_dict()})
    except (OSError, ValueError):
        answer = None
    if answer is not None:
        if not answer.get("ok"):
            print(
                f"notifier send: the daemon refused the event: {answer.get('error')}",
                file=sys.stderr,
            )
            return 1
        if answer.get("spool_error"):
            print(
                f"notifier send: queued, but the daemon's spool is unwritable: {answer['spool_error']}",
                file=sys.stderr,
            )
        return 0
    from notifier.spool import Spool

    spool = Spool(conf["state_dir"])
    try:
        spool.add_inbox(event.to_dict())
    finally:
        spool.close()
    print(
        f"notifier send: the daemon is not running; the event is kept in {spool.path} "
        f"and will be sent when `notifier run` starts",
        file=sys.stderr,
    )
    return 0


def cmd_set_password(args: argparse.Namespace) -> int:
    conf = _load(args)
    if not conf["smtp"].get("username"):
        print(
            f"{conf['_file']}: smtp.username is not set; a password is only used with a username",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass(f"SMTP password for {conf['smtp']['username']}: ")
        if getpass.getpass("Again: ") != password:
            print("notifier set-password: the two entries differ; nothing stored", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("notifier set-password: empty password; nothing stored", file=sys.stderr)
        return 1
    from notifier.secrets import store_password

    where = store_password(conf, password)
    print(f"stored the SMTP password for {conf['smtp']['username']} in {where}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    conf = _load(args)
    from notifier.control import request, socket_path
    from notifier.status import collect_status, format_status

    status = None
    try:
        answer = request(socket_path(conf["state_dir"]), {"op": "status"})
        if answer.get("ok"):
            status = answer["status"]
    except (OSError, ValueError):
        pass
    if status is None:
        from notifier.spool import Spool

        spool = Spool(conf["state_dir"], readonly=True)
        try:
            status = collect_status(spool)
        finally:
            spool.close()
    print(json.dumps(status, indent=2, ensure_ascii=False) if args.json else format_status(status))
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    conf = _load(args)
    from notifier.scan import run_scan

    return run_scan(conf, args.files, args.rule, sys.stdout)


def cmd_demo(args: argparse.Namespace) -> int:
    from notifier.demo import run_demo

    return run_demo(args.dir, verbose=bool(args.verbose))


COMMANDS = {
    "run": cmd_run,
    "check": cmd_check,
    "test-email": cmd_test_email,
    "send": cmd_send,
    "set-password": cmd_set_password,
    "status": cmd_status,
    "scan": cmd_scan,
    "demo": cmd_demo,
}

if __name__ == "__main__":  # pragma: no cover
    os._exit(main())
