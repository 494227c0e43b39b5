"""`notifier status`: what is open, what waits, what went out, what failed."""

from __future__ import annotations

import time
from typing import Any

from notifier.events import Severity
from notifier.spool import Spool
from notifier.units import format_duration


def collect_status(spool: Spool, live: dict[str, Any] | None = None) -> dict[str, Any]:
    """Status from the spool, plus what only a running daemon knows (`live`)."""
    now = time.time()
    alerts = [a for a in spool.load_alerts() if a.open]
    alerts.sort(key=lambda a: (-a.severity, a.since))
    outbox = spool.outbox_stats()
    failed = spool.db.execute(
        "SELECT id, summary, last_error, created FROM outbox WHERE status = 'failed' ORDER BY id DESC LIMIT 10"
    ).fetchall()
    pending = spool.load_pending()
    status: dict[str, Any] = {
        "running": False,
        "active_alerts": [
            {
                "source": a.source,
                "check": a.check,
                "key": a.key,
                "severity": str(Severity(a.severity)),
                "summary": a.summary,
                "since": a.since,
                "last_notified": a.last_notified,
            }
            for a in alerts
        ],
        "pending": {"identities": len(pending), "events": sum(i.count for i in pending)},
        "outbox": {
            "depth": outbox["depth"],
            "oldest_age": (now - outbox["oldest"]) if outbox["oldest"] else None,
            "attempts": outbox["max_attempts"],
            "failed": outbox["failed"],
            "failed_recent": [
                {"id": r["id"], "summary": r["summary"], "error": r["last_error"]} for r in failed
            ],
        },
        "last_delivery": spool.last_delivery(),
        "last_error": spool.get_meta("last_error"),
        "sources": [
            {"name": r["name"], "last_check": r["last_check"], "last_error": r["last_error"]}
            for r in spool.source_health()
        ],
    }
    if live:
        status.update({k: v for k, v in live.items() if k != "sources"})
        status["sources"] = live.get("sources", status["sources"])
    return status


def _ago(ts: float | None) -> str:
    return "never" if not ts else f"{format_duration(max(0.0, time.time() - ts))} ago"


def format_status(s: dict[str, Any]) -> str:
    """The status for a person at a terminal."""
    lines = []
    if s.get("running"):
        lines.append(f"notifier is running (since {_ago(s.get('since'))})")
    else:
        lines.append("notifier is not running (figures from the spool)")
    if s.get("spool_error"):
        lines.append(f"SPOOL UNWRITABLE: {s['spool_error']}")
    alerts = s["active_alerts"]
    lines.append(f"\nActive alerts: {len(alerts)}")
    for a in alerts:
        lines.append(
            f"  {a['severity'].upper():8} {a['summary']}  [{a['source']}/{a['check']}/{a['key']}] "
            f"since {_ago(a['since'])}, last mailed {_ago(a['last_notified'])}"
        )
    p = s["pending"]
    if p["identities"]:
        lines.append(
            f"\nWaiting to be mailed: {p['events']} event(s) in {p['identities']} alert(s)"
        )
    o = s["outbox"]
    lines.append(
        f"\nOutbox: {o['depth']} mail(s)"
        + (
            f", oldest {format_duration(o['oldest_age'])} old, {o['attempts']} attempt(s)"
            if o["depth"]
            else ""
        )
    )
    if o["failed"]:
        lines.append(f"  {o['failed']} mail(s) refused permanently (not retried):")
        for f in o["failed_recent"]:
            lines.append(f"    #{f['id']} {f['summary']}: {f['error']}")
    d = s.get("last_delivery")
    lines.append(
        "Last delivery: " + (f"{_ago(d['time'])}: {d['summary']} ({d['reply']})" if d else "never")
    )
    e = s.get("last_error")
    if e:
        lines.append(f"Last SMTP error: {_ago(e['time'])}: {e['error']}")
    for t in s.get("template_errors") or []:
        lines.append(f"Template error: {t}")
    if s["sources"]:
        lines.append("\nSources:")
        for src in s["sources"]:
            state = f"FAILING: {src['last_error']}" if src["last_error"] else "ok"
            lines.append(f"  {src['name']:24} last check {_ago(src['last_check'])}: {state}")
    return "\n".join(lines)
