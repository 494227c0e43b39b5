"""The spool's durability switch, on a real SQLite file and a real killed process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from notifier.spool import Spool, SpoolError


def synchronous(spool: Spool) -> int:
    return spool.db.execute("PRAGMA synchronous").fetchone()[0]  # 2 = FULL, 1 = NORMAL


def add_mail(spool: Spool, n: int = 1) -> None:
    with spool.transaction() as db:
        for i in range(n):
            spool.add_outbox(
                db,
                created=1.0,
                message_id=f"<m{i}@test>",
                mail_from="a@example.com",
                rcpts=["b@example.com"],
                data=b"Subject: x\r\n\r\nbody\r\n",
                summary=f"mail {i}",
                events=1,
            )


def test_commits_are_durable_unless_asked(tmp_path):
    spool = Spool(tmp_path)
    assert synchronous(spool) == 2
    with spool.transaction(durable=False):
        assert synchronous(spool) == 1
    assert synchronous(spool) == 2
    with pytest.raises(RuntimeError), spool.transaction(durable=False):
        raise RuntimeError("boom")
    assert synchronous(spool) == 2  # restored after a failure too


def test_a_failed_lazy_commit_still_raises_spool_error(tmp_path):
    spool = Spool(tmp_path)
    other = Spool(tmp_path)
    other.db.execute("PRAGMA busy_timeout=0")
    with spool.transaction():
        with pytest.raises(SpoolError), other.transaction(durable=False):
            pass  # the first connection holds the write lock
    assert synchronous(other) == 2


def test_delivery_mark_survives_the_process_being_killed(tmp_path):
    """mark_delivered does not wait for the disk, but a kill -9 right after it loses nothing:
    the commit is in the WAL before the call returns."""
    spool = Spool(tmp_path)
    add_mail(spool, 3)
    spool.close()
    child = textwrap.dedent(f"""
        import os, sys
        from notifier.spool import Spool
        spool = Spool({str(tmp_path)!r})
        for row in spool.ready(float("inf")):
            spool.mark_delivered(row, 2.0, "250 ok", {{}})
        print("marked", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "marked"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    spool = Spool(tmp_path)
    assert spool.outbox_stats()["depth"] == 0
    assert [r["summary"] for r in spool.delivered_since(0)] == ["mail 0", "mail 1", "mail 2"]


def test_a_delivered_mail_leaves_the_outbox_at_once_and_its_bytes_later(tmp_path):
    spool = Spool(tmp_path)
    add_mail(spool, 3)
    first, second, third = spool.ready(float("inf"))
    spool.mark_delivered(second, 2.0, "250 ok", {})
    # Every reader sees it gone: what is ready, what waits, the depth, a retry.
    assert [r.id for r in spool.ready(float("inf"))] == [first.id, third.id]
    assert [i for i, _ in spool.waiting_times()] == [first.id, third.id]
    assert spool.outbox_stats()["depth"] == 2
    spool.retry_now()
    assert spool.last_delivery() == {"time": 2.0, "reply": "250 ok", "summary": "mail 1"}
    rows = spool.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    assert rows == 3  # the bytes are still there until forget_delivered
    spool.forget_delivered()
    assert [r[0] for r in spool.db.execute("SELECT id FROM outbox ORDER BY id")] == [
        first.id,
        third.id,
    ]
    assert [r["summary"] for r in spool.delivered_since(0)] == ["mail 1"]


def test_forget_delivered_keeps_the_latest_for_status(tmp_path, monkeypatch):
    monkeypatch.setattr("notifier.spool.KEEP_DELIVERED", 2)
    spool = Spool(tmp_path)
    add_mail(spool, 5)
    for row in spool.ready(float("inf")):
        spool.mark_delivered(row, 2.0, "250 ok", {})
    spool.forget_delivered()
    assert spool.outbox_stats()["depth"] == 0
    assert spool.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    assert [r["summary"] for r in spool.delivered_since(0)] == ["mail 3", "mail 4"]
