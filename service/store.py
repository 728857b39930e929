"""Durable study state in SQLite (the embedded default).

A study moves received → complete → processing → exporting → exported, or
→ failed with a reason; an export that exhausts its retries leaves the study
undelivered (the dead letter: its outputs kept, re-sent on request without
re-analysis). A new instance for a study that was already complete, exported or
failed sends it back to received (and bumps its version), so a late or
re-sent series re-triggers it; a study processed while instances kept
arriving is re-queued instead of marked exported.
"""
from __future__ import annotations

import enum
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

__all__ = ["StudyState", "StudyRecord", "InstanceRecord", "StateStore"]


class StudyState(str, enum.Enum):
    RECEIVED = "received"
    COMPLETE = "complete"
    PROCESSING = "processing"
    EXPORTING = "exporting"
    EXPORTED = "exported"
    UNDELIVERED = "undelivered"
    FAILED = "failed"


@dataclass(frozen=True)
class StudyRecord:
    study_uid: str
    state: StudyState
    reason: str
    version: int
    n_instances: int
    first_received: float
    last_received: float
    updated: float
    detail: dict[str, Any]


@dataclass(frozen=True)
class InstanceRecord:
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    path: Path


_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
  study_uid TEXT PRIMARY KEY, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
  version INTEGER NOT NULL DEFAULT 0, n_instances INTEGER NOT NULL DEFAULT 0,
  first_received REAL NOT NULL, last_received REAL NOT NULL, updated REAL NOT NULL,
  detail TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS instances (
  sop_instance_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL,
  sop_class_uid TEXT NOT NULL, path TEXT NOT NULL, received REAL NOT NULL);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS quarantine (
  id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL, reason TEXT NOT NULL, received REAL NOT NULL);
"""


class StateStore:
    """Thread-safe SQLite store of studies, instances and quarantined inputs."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        # The rows are fetched while the lock is held: SCP, worker and HTTP
        # threads share the one connection, and a statement stepped by one
        # thread while another executes on it is not isolated.
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _change(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        """Run one data-changing statement; the number of rows it changed."""
        with self._lock:
            return self._db.execute(sql, args).rowcount

    def has_instance(self, sop_instance_uid: str) -> bool:
        return bool(self._rows("SELECT 1 FROM instances WHERE sop_instance_uid=?", (sop_instance_uid,)))

    def record_instance(self, rec: InstanceRecord, now: float | None = None) -> bool:
        """Record a stored instance; returns False if it was already known."""
        now = time.time() if now is None else now
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.execute(
                    "INSERT OR IGNORE INTO instances VALUES (?,?,?,?,?,?)",
                    (rec.sop_instance_uid, rec.study_uid, rec.series_uid, rec.sop_class_uid, str(rec.path), now),
                )
                if cur.rowcount == 0:
                    cur.execute("COMMIT")
                    return False
                cur.execute(
                    "INSERT INTO studies(study_uid, state, version, n_instances, first_received, last_received, updated)"
                    " VALUES (?, 'received', 1, 1, ?, ?, ?) ON CONFLICT(study_uid) DO UPDATE SET"
                    " version=version+1, n_instances=n_instances+1, last_received=excluded.last_received,"
                    " updated=excluded.updated, reason=CASE WHEN state='processing' THEN reason ELSE '' END,"
                    " state=CASE WHEN state='processing' THEN 'processing' ELSE 'received' END",
                    (rec.study_uid, now, now, now),
                )
                cur.execute("COMMIT")
                return True
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def forget_instances(self, study_uid: str, sop_instance_uids: list[str], version: int) -> bool:
        """Drop the index rows of a study's deleted inputs, atomically and only
        if no instance arrived since ``version`` (else nothing changes and
        False is returned: the inputs are needed for the re-analysis).

        Without their rows a re-sent instance is stored again instead of
        being acknowledged as a duplicate of a file that no longer exists.
        """
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.execute("SELECT version FROM studies WHERE study_uid=?", (study_uid,))
                row = cur.fetchone()
                if row is None or row[0] != version:
                    cur.execute("COMMIT")
                    return False
                cur.executemany("DELETE FROM instances WHERE sop_instance_uid=? AND study_uid=?",
                                [(sop, study_uid) for sop in sop_instance_uids])
                cur.execute("COMMIT")
                return True
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def quarantine(self, path: Path, reason: str) -> None:
        self._change("INSERT INTO quarantine(path, reason, received) VALUES (?,?,?)", (str(path), reason, time.time()))

    def quarantined(self) -> list[tuple[Path, str]]:
        return [(Path(p), r) for p, r in self._rows("SELECT path, reason FROM quarantine ORDER BY id")]

    def instances(self, study_uid: str) -> list[InstanceRecord]:
        rows = self._rows(
            "SELECT sop_instance_uid, study_uid, series_uid, sop_class_uid, path FROM instances WHERE study_uid=?"
            " ORDER BY series_uid, path",
            (study_uid,),
        )
        return [InstanceRecord(r[0], r[1], r[2], r[3], Path(r[4])) for r in rows]

    def study(self, study_uid: str) -> StudyRecord | None:
        rows = self._rows("SELECT * FROM studies WHERE study_uid=?", (study_uid,))
        return _record(rows[0]) if rows else None

    def studies(self, states: tuple[StudyState, ...] = ()) -> Iterator[StudyRecord]:
        for row in self._rows("SELECT * FROM studies ORDER BY first_received"):
            rec = _record(row)
            if not states or rec.state in states:
                yield rec

    def count_by_state(self) -> dict[str, int]:
        return {state: n for state, n in self._rows("SELECT state, COUNT(*) FROM studies GROUP BY state")}

    def oldest_waiting_s(self, now: float | None = None) -> float:
        """Seconds since the oldest study became complete and still waits."""
        (oldest,), = self._rows("SELECT MIN(updated) FROM studies WHERE state=?", (StudyState.COMPLETE.value,))
        return 0.0 if oldest is None else max(0.0, (now or time.time()) - oldest)

    def transition(
        self, study_uid: str, to: StudyState, from_states: tuple[StudyState, ...] = (), reason: str = "",
        detail: dict[str, Any] | None = None, version: int | None = None,
    ) -> bool:
        """Set the state if the current state is in ``from_states`` (any if
        empty) and, when given, the version still equals ``version``."""
        sql = "UPDATE studies SET state=?, reason=?, updated=?"
        args: list[Any] = [to.value, reason, time.time()]
        if detail is not None:
            sql += ", detail=?"
            args.append(json.dumps(detail))
        sql += " WHERE study_uid=?"
        args.append(study_uid)
        if from_states:
            sql += f" AND state IN ({','.join('?' * len(from_states))})"
            args.extend(s.value for s in from_states)
        if version is not None:
            sql += " AND version=?"
            args.append(version)
        return self._change(sql, tuple(args)) == 1


def _record(row: tuple[Any, ...]) -> StudyRecord:
    return StudyRecord(row[0], StudyState(row[1]), row[2], row[3], row[4], row[5], row[6], row[7], json.loads(row[8]))
