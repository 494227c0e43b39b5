"""The daemon: sources feed the core thread, the core runs the policy and fills the outbox,
the sender empties it. The main thread only waits for signals.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from typing import Any

from notifier.events import PROBLEM, RESOLVED, Event, Severity
from notifier.mail.compose import compose, summary
from notifier.memory import one_malloc_arena, release_free_memory
from notifier.policy import AnchoredClock, Policy, PolicySettings
from notifier.sender import Sender
from notifier.sourceset import SourceSet
from notifier.spool import OutboxRow, Spool, SpoolError

log = logging.getLogger("notifier")

INBOX_EVERY = 60.0  # how often the core looks for events `send` spooled while it was busy starting
MAX_BATCH = 5000  # queue items applied before one commit
TRIM_AFTER = 10.0  # seconds after start or reload to free memory: first checks and reads done


class SourceContextImpl:
    """What sources see of the daemon (the SourceContext protocol)."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    @property
    def host(self) -> str:
        return self._daemon.host

    def post(self, events: list[Event], positions: dict[str, Any] | None = None) -> None:
        self._daemon.submit(("events", events, positions, None, True))

    def position(self, key: str) -> Any | None:
        return self._daemon.positions.get(key)

    def now(self) -> float:
        return self._daemon.clock()


class Daemon:
    """One running notifier: build with a validated config, then `run()`."""

    def __init__(self, conf: dict[str, Any], config_path: str) -> None:
        from notifier.mail.delivery import SmtpSettings
        from notifier.mail.message import make_message_id

        self.conf = conf
        self.config_path = config_path
        self.clock = AnchoredClock()
        self.host: str = conf["host_label"]
        self.state_dir: str = conf["state_dir"]
        self.spool = Spool(self.state_dir)
        self.positions: dict[str, Any] = self.spool.positions()
        now = self.clock()
        self.policy = Policy(
            PolicySettings.from_config(conf["policy"]), now, lambda: make_message_id(self.host)
        )
        self.policy.restore(
            self.spool.load_alerts(),
            self.spool.load_pending(),
            self.spool.get_meta("policy", {}) or {},
            now,
        )
        self._renderer: Any = None  # made for the first mail: Jinja (~5 MB) is not loaded before
        self.inq: queue.Queue[tuple] = queue.Queue(maxsize=2000)
        self.sender = Sender(
            self.state_dir,
            SmtpSettings.from_config(conf["smtp"]),
            self._password,
            self.clock,
            conf["policy"]["retry_max"],
        )
        self.sources = SourceSet(SourceContextImpl(self))
        self.spool_error: str | None = None
        self.started = time.time()
        self._core_thread: threading.Thread | None = None
        self._core_beat = time.monotonic()
        self._taken_ids: list[str] = []  # ids of `send` events taken, saved with the policy
        self._last_status = ""
        self._inbox_checked = 0.0
        self._health_saved: dict[str, tuple] = {}
        from notifier.sdnotify import SystemdNotifier

        self.notify = SystemdNotifier()

    @property
    def renderer(self) -> Any:
        """The mail renderer, made on first use: a daemon with nothing to mail never loads Jinja."""
        if self._renderer is None:
            from notifier.mail.render import Renderer

            self._renderer = Renderer(self.conf["templates_dir"], self.host)
        return self._renderer

    # -- secrets ---------------------------------------------------------------
    def _password(self) -> str | None:
        from notifier.secrets import find_password

        if not self.conf["smtp"].get("username"):
            return None
        secret = find_password(self.conf)
        if secret is None:
            raise RuntimeError(
                "no SMTP password found: store one with `notifier set-password`, "
                "smtp.password_file, or the systemd credential smtp-password"
            )
        return secret.value

    # -- the queue into the core ------------------------------------------------------
    def submit(self, item: tuple) -> None:
        self.inq.put(item)

    def post_and_wait(self, events: list[Event], timeout: float = 10.0) -> bool:
        """Post events and wait until they are committed to the spool (for `send`)."""
        done = threading.Event()
        self.submit(("events", events, None, done, False))
        return done.wait(timeout)

    # -- sources -------------------------------------------------------------------------
    # -- the core thread ---------------------------------------------------------------
    def _core(self) -> None:
        try:
            self.spool.retry_now()  # on start-up, try the outbox at once
        except SpoolError as exc:
            self._spool_failed(exc)
        self.sender.wake()
        self._take_inbox()
        while True:
            self._core_beat = time.monotonic()
            now = self.clock()
            deadline = self.policy.next_deadline(now)
            timeout = (
                INBOX_EVERY if deadline is None else min(INBOX_EVERY, max(0.0, deadline - now))
            )
            batch = []
            try:
                batch.append(self.inq.get(timeout=timeout))
                while len(batch) < MAX_BATCH:
                    batch.append(self.inq.get_nowait())
            except queue.Empty:
                pass
            stop = False
            positions: dict[str, Any] = {}
            waiting: list[threading.Event] = []
            for item in batch:
                kind = item[0]
                if kind == "events":
                    _, events, pos, done, by_source = item
                    for event in events:
                        try:
                            event.clean()  # a source may hand over undecodable bytes as text
                            self.policy.observe(event, self.clock(), by_source=by_source)
                            if event.id:
                                self._taken_ids.append(event.id)
                        except Exception:
                            log.exception("could not take event %.200r", event)
                    if pos:
                        positions.update(pos)
                    if done is not None:
                        waiting.append(done)
                elif kind == "reload":
                    self._reload_core(item[1])
                    waiting.append(item[2])
                elif kind == "stop":
                    stop = True
            if time.monotonic() - self._inbox_checked > INBOX_EVERY:
                self._take_inbox()
            self._sweep()
            self._flush(positions)
            for done in waiting:
                done.set()
            self._update_status()
            if stop:
                return

    def _sweep(self) -> None:
        """Resolve the open alerts that nothing checks any more (see SourceSet.stale)."""
        now = self.clock()
        for alert in self.sources.stale(self.policy.open_alerts()):
            log.info("resolving %s/%s/%s: no longer checked", *alert.identity)
            self.policy.observe(
                Event(
                    alert.source,
                    alert.check,
                    alert.key,
                    Severity.INFO,
                    "resolved",
                    f"no longer checked: {alert.summary}",
                    {"reason": "removed from the configuration or no longer reported"},
                    now,
                    self.host,
                ),
                now,
            )

    def _take_inbox(self) -> None:
        self._inbox_checked = time.monotonic()
        try:
            if not self.spool.has_inbox():
                return
            with self.spool.transaction() as db:
                raw = self.spool.take_inbox(db)
                # Taken before a restart, or in memory before a failed write of this very inbox.
                taken = self.spool.was_taken([d["id"] for d in raw if isinstance(d.get("id"), str)])
                taken.update(self._taken_ids)
                for d in raw:
                    try:
                        event = Event.from_dict(d)
                    except (KeyError, ValueError, TypeError) as exc:
                        log.error("dropping an unusable spooled event (%s): %.200r", exc, d)
                        continue
                    if event.id in taken:  # `send` lost our answer to a crash and spooled it too
                        log.info(
                            "event %s was already taken before a restart; not counting it twice",
                            event.id,
                        )
                        continue
                    if event.id:
                        taken.add(event.id)
                        self._taken_ids.append(event.id)
                    event.host = event.host or self.host
                    self.policy.observe(event, self.clock())
                self._write_policy(db, {})
            self._taken_ids = []
            if raw:
                log.info(
                    "took %d event(s) spooled by `notifier send` while the daemon was not running",
                    len(raw),
                )
        except SpoolError as exc:
            self._spool_failed(exc)

    def _write_policy(self, db: Any, positions: dict[str, Any]) -> None:
        self.spool.save_policy(db, self.policy)
        if self._taken_ids:
            self.spool.remember_taken(db, self._taken_ids, time.time())
        if positions:
            self.spool.save_positions(db, positions)

    def _flush(self, positions: dict[str, Any]) -> None:
        now = self.clock()
        mails = self.policy.tick(now)
        gone = self.policy.forget_old(now) if not mails else []
        smtp = self.conf["smtp"]
        rows = [
            {
                "created": mail.created,
                "message_id": mail.message_id,
                "mail_from": smtp["from"],
                "rcpts": list(smtp["to"]),
                "data": compose(mail, self.renderer, smtp, self.host),
                "summary": summary(mail),
                "events": mail.total_events,
            }
            for mail in mails
        ]
        try:
            with self.spool.transaction() as db:
                for row in rows:
                    self.spool.add_outbox(db, **row)
                self._write_policy(db, positions)
                if gone:
                    self.spool.forget_alerts(db, gone)
                self._save_health(db)
        except SpoolError as exc:
            # The policy's changes stay marked and are written once the spool takes them again;
            # the mails go out from memory now rather than wait for the disk.
            self._spool_failed(exc)
            if rows:
                self.sender.send_from_memory(
                    [
                        OutboxRow(
                            id=0,
                            attempts=0,
                            next_attempt=0.0,
                            last_error=None,
                            status="ready",
                            **row,
                        )
                        for row in rows
                    ]
                )
            return
        self.positions.update(positions)
        self.policy.dirty_alerts.clear()
        self.policy.dirty_pending.clear()
        self.policy.removed_pending.clear()
        self._taken_ids = []
        if self.spool_error:
            log.warning("the spool is writable again; %s", self.spool.path)
            self.spool_error = None
            self._spool_alert(RESOLVED, f"the spool in {self.state_dir} is writable again")
        if mails:
            self.sender.wake()

    def _spool_failed(self, exc: Exception) -> None:
        if str(exc) != self.spool_error:
            log.error(
                "SPOOL UNWRITABLE: %s. Mail is sent from memory meanwhile and is lost if "
                "notifier stops; free space or fix permissions on %s.",
                exc,
                self.state_dir,
            )
        if self.spool_error is None:
            self._spool_alert(
                PROBLEM,
                f"cannot write the spool in {self.state_dir} ({exc}); "
                "mail is sent from memory until it is fixed",
            )
        self.spool_error = str(exc)

    def _spool_alert(self, state: str, summary: str) -> None:
        """An alert about the spool itself, so the admin hears of a full disk by mail too."""
        now = self.clock()
        severity = Severity.CRITICAL if state == PROBLEM else Severity.INFO
        self.policy.observe(
            Event(
                "notifier",
                "spool",
                self.state_dir,
                severity,
                state,
                summary,
                {"state_dir": self.state_dir},
                now,
                self.host,
            ),
            now,
        )

    def _save_health(self, db: Any) -> None:
        health = self.sources.health()
        if health != self._health_saved:
            self.spool.save_source_health(db, health)
            self._health_saved = health

    def _update_status(self) -> None:
        try:
            stats = self.spool.outbox_stats()
        except Exception:
            return
        text = f"{len(self.policy.open_alerts())} active alert(s), outbox {stats['depth']}"
        if self.sender.last_delivery:
            text += f", last delivery {time.strftime('%H:%M:%S', time.localtime(self.sender.last_delivery))}"
        if self.spool_error:
            text += ", SPOOL UNWRITABLE"
        if self.sender.last_error:
            text += f", last error: {self.sender.last_error[:80]}"
        if text != self._last_status:
            self._last_status = text
            self.notify.status(text)

    # -- reload ---------------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: re-read the config; keep running the old one if the new one is invalid."""
        from notifier.config import ConfigInvalid, load_config

        self.notify.reloading()
        try:
            try:
                conf = load_config(self.config_path)
            except ConfigInvalid as exc:
                for problem in exc.problems:
                    log.error("reload refused: %s", problem.format(exc.filename))
                log.error(
                    "reload refused: %d problem(s) in %s; still running the previous configuration",
                    len(exc.problems),
                    self.config_path,
                )
                return
            if conf["state_dir"] != self.state_dir:
                log.warning(
                    "state_dir changed to %s; that takes a restart, still using %s",
                    conf["state_dir"],
                    self.state_dir,
                )
                conf["state_dir"] = self.state_dir
            done = threading.Event()
            self.submit(("reload", conf, done))
            done.wait(30)
            log.info("reloaded %s", self.config_path)
        finally:
            self.notify.ready()

    def _reload_core(self, conf: dict[str, Any]) -> None:
        from notifier.mail.delivery import SmtpSettings

        self.conf = conf
        self.host = conf["host_label"]
        self.policy.reconfigure(PolicySettings.from_config(conf["policy"]), self.clock())
        self._renderer = None  # the next mail is rendered with the new templates_dir and host
        self.sources.apply(conf)
        try:
            self.spool.retry_now()  # the admin has usually just fixed something
        except SpoolError as exc:
            self._spool_failed(exc)
        self.sender.reconfigure(SmtpSettings.from_config(conf["smtp"]), conf["policy"]["retry_max"])

    # -- control socket -----------------------------------------------------------------------
    def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "ping":
            return {"ok": True}
        if op == "send":
            try:
                event = Event.from_dict(request.get("event") or {})
            except (KeyError, ValueError, TypeError) as exc:
                return {"ok": False, "error": f"malformed event: {exc}"}
            event.host = event.host or self.host
            event.time = event.time or self.clock()
            if not self.post_and_wait([event]):
                return {"ok": False, "error": "the daemon did not take the event in time"}
            return {"ok": True, "queued": True, "spool_error": self.spool_error}
        if op == "status":
            from notifier.status import collect_status

            spool = Spool(self.state_dir, readonly=True)
            try:
                return {"ok": True, "status": collect_status(spool, self.live_status())}
            finally:
                spool.close()
        return {"ok": False, "error": f"unknown op {op!r} (known: ping, send, status)"}

    def live_status(self) -> dict[str, Any]:
        return {
            "running": True,
            "since": self.started,
            "spool_error": self.spool_error,
            "sender_error": self.sender.last_error,
            "template_errors": self._renderer.errors if self._renderer is not None else [],
            "sources": [
                {"name": n, "last_check": s.last_check, "last_error": s.last_error}
                for n, s in sorted(self.sources.by_name.items())
            ],
        }

    # -- lifecycle ------------------------------------------------------------------------------
    def healthy(self) -> bool:
        """For the systemd watchdog: every worker alive and the core turning."""
        core_ok = (
            self._core_thread is not None
            and self._core_thread.is_alive()
            and time.monotonic() - self._core_beat < 3 * INBOX_EVERY
        )
        return core_ok and self.sender.healthy() and self.sources.alive() and self.control.alive()

    def run(self) -> int:
        from notifier.control import ControlServer
        from notifier.sdnotify import WatchdogPinger

        signals = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # threads started below inherit the mask
        one_malloc_arena()
        self.control = ControlServer(self.state_dir, self.handle_request)
        self.control.start()
        self._core_thread = threading.Thread(target=self._core, name="core", daemon=True)
        self._core_thread.start()
        self.sender.start()
        self.sources.start()
        self.sources.apply(self.conf)
        pinger = WatchdogPinger(self.notify, self.healthy)
        pinger.start()
        self.notify.ready()
        log.info(
            "notifier %s running: %d source(s), state in %s",
            _version(),
            len(self.sources.by_name),
            self.state_dir,
        )
        trim_at: float | None = time.monotonic() + TRIM_AFTER
        try:
            while True:
                if trim_at is None:
                    sig = signal.sigwait(signals)
                else:
                    info = signal.sigtimedwait(signals, max(0.0, trim_at - time.monotonic()))
                    if info is None:
                        trim_at = None
                        release_free_memory()
                        continue
                    sig = info.si_signo
                if sig == signal.SIGHUP:
                    self.reload()
                    trim_at = time.monotonic() + TRIM_AFTER
                else:
                    log.info("%s: stopping", signal.Signals(sig).name)
                    break
        finally:
            self.notify.stopping()
            self.shutdown()
            pinger.stop()
        return 0

    def shutdown(self) -> None:
        self.sources.stop()
        self.submit(("stop",))
        if self._core_thread:
            self._core_thread.join(timeout=10)
        self.sender.stop(grace=5.0)
        self.control.stop()
        log.info(
            "stopped; %d mail(s) left in the outbox for next time",
            self.spool.outbox_stats()["depth"],
        )
        self.spool.close()


def _version() -> str:
    from notifier import __version__

    return __version__
