"""The SQLite spool in `state_dir`: alert states, pending items, the outbox, log positions.

One file in WAL mode. Every change the daemon makes after an event commits in
one transaction (the events' effects, the mails they produced, the log
positions they were read up to), so `kill -9` at any moment loses nothing that
was accepted and repeats nothing that was committed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from notifier.policy import Alert, Identity, Item

log = logging.getLogger("notifier.spool")

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (ident TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending (ident TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    message_id TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    rcpts TEXT NOT NULL,
    data BLOB NOT NULL,
    summary TEXT NOT NULL DEFAULT '',
    events INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    status TEXT NOT NULL DEFAULT 'ready'
);
CREATE INDEX IF NOT EXISTS outbox_ready ON outbox (status, next_attempt, id);
-- outbox_stats() from this index alone: without it each call read every queued mail's bytes
-- (0.46 ms for 500 mails, at every turn of the daemon's core while a backlog drains).
CREATE INDEX IF NOT EXISTS outbox_depth ON outbox (status, created, attempts);
CREATE TABLE IF NOT EXISTS delivered (
    id INTEGER PRIMARY KEY, message_id TEXT, summary TEXT, events INTEGER,
    created REAL, delivered REAL, reply TEXT, refused TEXT
);
CREATE TABLE IF NOT EXISTS positions (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inbox (id INTEGER PRIMARY KEY AUTOINCREMENT, event TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (name TEXT PRIMARY KEY, last_check REAL, last_error TEXT);
CREATE TABLE IF NOT EXISTS taken (id TEXT PRIMARY KEY, time REAL NOT NULL);
"""

KEEP_DELIVERED = 200  # how many delivered mails `status` can show
# A mail waiting to be sent: ready, and not yet delivered (mark_delivered only adds the id to
# `delivered`; forget_delivered deletes such rows later, all at once).
WAITING = "status = 'ready' AND id NOT IN (SELECT id FROM delivered)"
KEEP_TAKEN = 7 * 86400  # how long the ids of events taken from `send` are remembered


class _Damaged(Exception):
    """PRAGMA quick_check found damage."""


class SpoolError(Exception):
    """The spool cannot be used (unwritable, disk full); the message says which and why."""


def _ident(ident: Identity) -> str:
    return json.dumps(list(ident), ensure_ascii=False)


@dataclass
class OutboxRow:
    id: int
    created: float
    message_id: str
    mail_from: str
    rcpts: list[str]
    data: bytes
    summary: str
    events: int
    attempts: int
    next_attempt: float
    last_error: str | None
    status: str


class Spool:
    """One connection to the spool file. Use one Spool per thread."""

    def __init__(self, state_dir: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / "spool.db"
        if readonly:
            if not self.path.exists():
                raise SpoolError(
                    f"no spool at {self.path}: the daemon has not run with this state_dir yet"
                )
            self.db = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, timeout=10, check_same_thread=False
            )
        else:
            self._prepare_dir()
            self.db = self._open()
        self.db.row_factory = sqlite3.Row

    def _prepare_dir(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise SpoolError(f"cannot create state_dir {self.dir}: {exc.strerror}") from None
        if not os.access(self.dir, os.W_OK | os.X_OK):
            raise SpoolError(
                f"state_dir {self.dir} is not writable by this user (uid {os.getuid()})"
            )

    def _open(self) -> sqlite3.Connection:
        try:
            db = self._connect()
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            if verdict != "ok":
                db.close()
                raise _Damaged(verdict)
            return db
        except (_Damaged, sqlite3.DatabaseError) as exc:
            damaged = isinstance(exc, _Damaged) or any(
                word in str(exc) for word in ("not a database", "malformed", "corrupt")
            )
            if not damaged:
                raise SpoolError(f"cannot open {self.path}: {exc}") from None
            aside = self.path.with_name(f"spool.db.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    shutil.move(str(src), str(aside) + suffix)
            log.error(
                "spool %s is damaged (%s); moved it aside to %s and started a new one. "
                "Alert states and unsent mail in it are not used; inspect it with sqlite3.",
                self.path,
                exc,
                aside,
            )
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        db.execute("INSERT OR IGNORE INTO meta (k, v) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        os.chmod(self.path, 0o600)
        return db

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT; a failure rolls everything back and raises SpoolError.

        `durable=False` commits without waiting for the disk (synchronous=NORMAL): the change
        survives the daemon being killed, not a power cut (it may be undone back to the last
        durable commit, never half applied). Only for bookkeeping whose loss repeats work and
        loses nothing, like marking a mail delivered.
        """
        if not durable:
            self.db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._transaction() as db:
                yield db
        finally:
            if not durable:
                self.db.execute("PRAGMA synchronous=FULL")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise SpoolError(f"cannot write {self.path}: {exc}") from None
        try:
            yield self.db
            self.db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            # A failed COMMIT (disk full) has already rolled back; a second ROLLBACK would raise.
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise SpoolError(f"cannot write {self.path}: {exc}") from None
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    # -- meta --------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, db: sqlite3.Connection, key: str, value: Any) -> None:
        db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (key, json.dumps(value)))

    # -- policy state --------------------------------------------------------
    def load_alerts(self) -> list[Alert]:
        return [
            Alert.from_dict(json.loads(r[0])) for r in self.db.execute("SELECT data FROM alerts")
        ]

    def load_pending(self) -> list[Item]:
        return [
            Item.from_dict(json.loads(r[0])) for r in self.db.execute("SELECT data FROM pending")
        ]

    def save_policy(self, db: sqlite3.Connection, policy: Any) -> None:
        """Write what changed in the policy since the last save."""
        for ident in policy.dirty_alerts:
            alert = policy.alerts.get(ident)
            if alert is None:
                db.execute("DELETE FROM alerts WHERE ident = ?", (_ident(ident),))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO alerts (ident, data) VALUES (?, ?)",
                    (_ident(ident), json.dumps(alert.to_dict(), ensure_ascii=False)),
                )
        for ident in policy.removed_pending:
            db.execute("DELETE FROM pending WHERE ident = ?", (_ident(ident),))
        for ident in policy.dirty_pending:
            item = policy.pending.get(ident)
            if item is not None:
                db.execute(
                    "INSERT OR REPLACE INTO pending (ident, data) VALUES (?, ?)",
                    (_ident(ident), json.dumps(item.to_dict(), ensure_ascii=False)),
                )
        self.set_meta(db, "policy", policy.meta())

    def forget_alerts(self, db: sqlite3.Connection, idents: Iterable[Identity]) -> None:
        db.executemany("DELETE FROM alerts WHERE ident = ?", [(_ident(i),) for i in idents])

    # -- positions -----------------------------------------------------------
    def positions(self) -> dict[str, Any]:
        return {r[0]: json.loads(r[1]) for r in self.db.execute("SELECT k, v FROM positions")}

    def save_positions(self, db: sqlite3.Connection, positions: dict[str, Any]) -> None:
        """Store positions; a position of None forgets the key (a file gone for good)."""
        db.executemany(
            "INSERT OR REPLACE INTO positions (k, v) VALUES (?, ?)",
            [(k, json.dumps(v)) for k, v in positions.items() if v is not None],
        )
        db.executemany(
            "DELETE FROM positions WHERE k = ?", [(k,) for k, v in positions.items() if v is None]
        )

    # -- inbox: events posted by `notifier send` while no daemon ran -----------
    def add_inbox(self, event: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO inbox (event) VALUES (?)", (json.dumps(event, ensure_ascii=False),)
            )

    def take_inbox(self, db: sqlite3.Connection) -> list[dict[str, Any]]:
        rows = db.execute("SELECT id, event FROM inbox ORDER BY id").fetchall()
        if rows:
            db.execute("DELETE FROM inbox WHERE id <= ?", (rows[-1][0],))
        out = []
        for _, text in rows:
            try:
                out.append(json.loads(text))
            except ValueError:
                log.error("dropping an unreadable inbox row: %.200r", text)
        return out

    def remember_taken(self, db: sqlite3.Connection, ids: Iterable[str], now: float) -> None:
        """Note event ids as taken, so a `send` that lost the daemon's answer and spooled
        the event again is not counted twice."""
        db.executemany(
            "INSERT OR IGNORE INTO taken (id, time) VALUES (?, ?)", [(i, now) for i in ids]
        )
        db.execute("DELETE FROM taken WHERE time < ?", (now - KEEP_TAKEN,))

    def was_taken(self, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                r[0] for r in self.db.execute(f"SELECT id FROM taken WHERE id IN ({marks})", chunk)
            )
        return found

    def has_inbox(self) -> bool:
        return self.db.execute("SELECT 1 FROM inbox LIMIT 1").fetchone() is not None

    # -- outbox ------------------------------------------------------------------
    def add_outbox(
        self,
        db: sqlite3.Connection,
        *,
        created: float,
        message_id: str,
        mail_from: str,
        rcpts: list[str],
        data: bytes,
        summary: str,
        events: int,
    ) -> int:
        cur = db.execute(
            "INSERT INTO outbox (created, message_id, mail_from, rcpts, data, summary, events)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (created, message_id, mail_from, json.dumps(rcpts), data, summary, events),
        )
        return int(cur.lastrowid)

    def ready(self, now: float, limit: int = 1000) -> list[OutboxRow]:
        """Once any waiting mail is due, every waiting mail, oldest first: the session goes
        ahead anyway, and a new mail must not overtake one that waited out a failure."""
        if (
            self.db.execute(
                f"SELECT 1 FROM outbox WHERE {WAITING} AND next_attempt <= ? LIMIT 1", (now,)
            ).fetchone()
            is None
        ):
            return []
        rows = self.db.execute(
            f"SELECT * FROM outbox WHERE {WAITING} ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        return [self._row(r) for r in rows]

    def waiting_times(self) -> list[tuple[int, float]]:
        """(id, next attempt) of every mail waiting to be sent, without their contents."""
        return [
            (r[0], r[1])
            for r in self.db.execute(
                f"SELECT id, next_attempt FROM outbox WHERE {WAITING} ORDER BY id"
            )
        ]

    def next_attempt(self) -> float | None:
        row = self.db.execute(f"SELECT MIN(next_attempt) FROM outbox WHERE {WAITING}").fetchone()
        return row[0]

    @staticmethod
    def _row(r: sqlite3.Row) -> OutboxRow:
        return OutboxRow(
            r["id"],
            r["created"],
            r["message_id"],
            r["mail_from"],
            json.loads(r["rcpts"]),
            bytes(r["data"]),
            r["summary"],
            r["events"],
            r["attempts"],
            r["next_attempt"],
            r["last_error"],
            r["status"],
        )

    def mark_delivered(
        self, row: OutboxRow, now: float, reply: str, refused: dict[str, str]
    ) -> None:
        """The server took the mail: it joins the delivered list, which takes it out of the
        outbox at once (`forget_delivered` deletes its bytes later, in one go).

        The cheapest write that records it, because one follows every mail of a backlog:
        one small row, and no fsync (a power cut right after can only undo the mark, and the
        mail then goes again: at least once, never lost; a kill -9 undoes nothing). The next
        durable commit, or SQLite's WAL checkpoint, makes it final.
        """
        with self.transaction(durable=False) as db:
            db.execute(
                "INSERT OR REPLACE INTO delivered (id, message_id, summary, events, created, delivered,"
                " reply, refused) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.id,
                    row.message_id,
                    row.summary,
                    row.events,
                    row.created,
                    now,
                    reply,
                    json.dumps(refused) if refused else None,
                ),
            )

    def forget_delivered(self) -> None:
        """Delete the outbox rows of delivered mails; keep the last KEEP_DELIVERED of those."""
        with self.transaction(durable=False) as db:
            db.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM delivered)")
            db.execute(
                "DELETE FROM delivered WHERE id <= (SELECT MAX(id) FROM delivered) - ?",
                (KEEP_DELIVERED,),
            )

    def last_delivery(self) -> dict[str, Any] | None:
        """When the latest mail was delivered, the server's reply and the mail's summary."""
        row = self.db.execute(
            "SELECT delivered, reply, summary FROM delivered ORDER BY delivered DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return self.get_meta("last_delivery")  # a spool from before the delivered list
        return {"time": row[0], "reply": row[1], "summary": row[2]}

    def requeue_for(
        self, row: OutboxRow, rcpts: list[str], next_attempt: float, error: str
    ) -> None:
        """A copy of a delivered mail for recipients the server deferred (4xx), tried again later."""
        with self.transaction() as db:
            new_id = self.add_outbox(
                db,
                created=row.created,
                message_id=row.message_id,
                mail_from=row.mail_from,
                rcpts=rcpts,
                data=row.data,
                summary=row.summary,
                events=0,
            )
            db.execute(
                "UPDATE outbox SET attempts = ?, next_attempt = ?, last_error = ? WHERE id = ?",
                (row.attempts + 1, next_attempt, error, new_id),
            )

    def mark_failed(self, row: OutboxRow, now: float, error: str) -> None:
        """A permanent refusal: keep the mail for the admin to see, never retry it in a loop."""
        with self.transaction() as db:
            db.execute(
                "UPDATE outbox SET status = 'failed', last_error = ?, attempts = attempts + 1"
                " WHERE id = ?",
                (error, row.id),
            )
            self.set_meta(db, "last_error", {"time": now, "error": error})

    def defer(self, ids: list[int], next_attempt: float, error: str, now: float) -> None:
        with self.transaction() as db:
            db.executemany(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt = ?, last_error = ?"
                " WHERE id = ?",
                [(next_attempt, error, i) for i in ids],
            )
            self.set_meta(db, "last_error", {"time": now, "error": error})

    def retry_now(self) -> None:
        """Make every waiting mail due now (start-up, reload: the admin just fixed something)."""
        with self.transaction() as db:
            db.execute(f"UPDATE outbox SET next_attempt = 0 WHERE {WAITING}")

    def outbox_stats(self) -> dict[str, Any]:
        ready = self.db.execute(
            f"SELECT COUNT(*), MIN(created), MAX(attempts) FROM outbox WHERE {WAITING}"
        ).fetchone()
        failed = self.db.execute("SELECT COUNT(*) FROM outbox WHERE status = 'failed'").fetchone()
        return {
            "depth": ready[0],
            "oldest": ready[1],
            "max_attempts": ready[2] or 0,
            "failed": failed[0],
        }

    def delivered_since(self, since_id: int = 0) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT * FROM delivered WHERE id > ? ORDER BY id", (since_id,)
        ).fetchall()

    # -- sources' health, for status -----------------------------------------------
    def save_source_health(
        self, db: sqlite3.Connection, health: dict[str, tuple[float | None, str | None]]
    ) -> None:
        db.execute("DELETE FROM sources")
        db.executemany(
            "INSERT INTO sources (name, last_check, last_error) VALUES (?, ?, ?)",
            [(n, c, e) for n, (c, e) in health.items()],
        )

    def source_health(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM sources ORDER BY name").fetchall()
