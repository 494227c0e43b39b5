"""The running sources: built from the config, started, swapped on reload, stopped; and the
sweep that finds open alerts nothing checks any more."""

from __future__ import annotations

import logging
from typing import Any

from notifier import sources as source_registry
from notifier.policy import Alert
from notifier.sources.base import PeriodicSource, Scheduler, Source, SourceContext

log = logging.getLogger("notifier")


class SourceSet:
    """Every configured source by name; periodic ones run on one Scheduler."""

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        self.scheduler = Scheduler()
        self.by_name: dict[str, Source] = {}
        self._sweep_after: dict[str, int] | None = None  # runs each source must pass first

    def _build(self, conf: dict[str, Any]) -> dict[str, Source]:
        built: dict[str, Source] = {}
        for key, entries in (conf.get("sources") or {}).items():
            if not entries:
                continue
            cls = source_registry.get(key)
            for index, entry in enumerate(entries):
                src = cls(entry, index, self.ctx)
                if src.name in built:
                    src.name = f"{key}[{index}]"
                built[src.name] = src
        return built

    def _start(self, src: Source) -> None:
        try:
            if isinstance(src, PeriodicSource):
                self.scheduler.add(src)
            else:
                src.start()
        except Exception as exc:
            log.exception("source %s could not start", src.name)
            src.report_failure(f"could not start: {type(exc).__name__}: {exc}")

    def _stop(self, src: Source) -> None:
        try:
            if isinstance(src, PeriodicSource):
                self.scheduler.remove(src)
            else:
                src.stop()
        except Exception:
            log.exception("source %s did not stop cleanly", src.name)

    def apply(self, conf: dict[str, Any]) -> None:
        """Make the running sources those of `conf`: unchanged ones keep running (and their
        log positions and state), changed ones restart, removed ones stop."""
        wanted = self._build(conf)
        for name, src in list(self.by_name.items()):
            new = wanted.get(name)
            if new is None or new.identity_of_config() != src.identity_of_config():
                self._stop(src)
                del self.by_name[name]
                log.info(
                    "source %s %s", name, "removed" if new is None else "changed, restarting it"
                )
        for name, src in wanted.items():
            if name not in self.by_name:
                self.by_name[name] = src
                self._start(src)
        self._sweep_after = {
            n: s.completed_runs for n, s in self.by_name.items() if isinstance(s, PeriodicSource)
        }

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        for src in list(self.by_name.values()):
            self._stop(src)
        self.scheduler.stop()

    def alive(self) -> bool:
        return self.scheduler.alive()

    def health(self) -> dict[str, tuple[float | None, str | None]]:
        return {n: (s.last_check, s.last_error) for n, s in self.by_name.items()}

    def stale(self, open_alerts: list[Alert]) -> list[Alert]:
        """Open alerts nothing checks any more: a service removed from the config, a source
        gone, a key a source stopped reporting. Answers once after start and each reload, when
        every periodic source has completed a check (before that: []), so nothing still open
        is cleared. Alerts opened by `notifier send` are never stale: only their sender can
        clear them."""
        after = self._sweep_after
        if after is None:
            return []
        periodic = {n: s for n, s in self.by_name.items() if isinstance(s, PeriodicSource)}
        if any(s.completed_runs <= after.get(n, 0) for n, s in periodic.items()):
            return []
        self._sweep_after = None
        configured = {s.key for s in self.by_name.values()}
        periodic_keys = {s.key for s in periodic.values()}
        reported = {(s.key, c, k) for s in periodic.values() for c, k in s.last_keys}
        known = set(source_registry.names())
        stale = []
        for alert in open_alerts:
            if not alert.by_source:
                continue
            if alert.source == "notifier" and alert.check == "source-failing":
                gone = alert.key not in self.by_name
            elif alert.source in known:
                gone = alert.source not in configured or (
                    alert.source in periodic_keys and alert.identity not in reported
                )
            else:
                gone = False
            if gone:
                stale.append(alert)
        return stale
