"""SQLite persistence (through sqlite-utils): the job table and the processed results.

Job states (:class:`JobState`): ``queued`` → ``processing`` → ``done`` | ``needs_review`` |
``failed``; a file whose content was seen before is recorded as ``duplicate`` of the original job and
not processed again. Each processed document keeps its routing record (``documents.routing``, the
JSON of :meth:`service.review.routing.Decision.to_dict`). The database runs in WAL mode so
``paperloop status`` can read while the daemon writes. The review queue's tables (``review_items``,
``review_claims``, ``review_audit``) are reached through :class:`service.review_store.ReviewStore`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import sqlite_utils

from service.document import Document, Link, Page, Segment, Word
from service.errors import Reason


class JobState(str, Enum):
    """The state of a job; members are ``str`` and equal to their value, which the database stores."""

    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    NEEDS_REVIEW = "needs_review"
    FAILED = "failed"
    DUPLICATE = "duplicate"
    REVIEWED = "reviewed"  # a reviewer saved it: the output JSON holds the reviewed result

    __str__ = str.__str__  # "done", not "JobState.DONE", in messages and f-strings
    __format__ = str.__format__


# Module-level aliases of the members, for ``from service.store import DONE``.
QUEUED, PROCESSING, DONE, NEEDS_REVIEW, FAILED, DUPLICATE, REVIEWED = (
    JobState.QUEUED, JobState.PROCESSING, JobState.DONE, JobState.NEEDS_REVIEW, JobState.FAILED, JobState.DUPLICATE,
    JobState.REVIEWED,
)
STATES = tuple(JobState)
FINISHED_STATES = (DONE, NEEDS_REVIEW, REVIEWED, FAILED, DUPLICATE)
# A new file with the same content as a job in one of these states is a duplicate.
DEDUP_STATES = (QUEUED, PROCESSING, DONE, NEEDS_REVIEW, REVIEWED)


def utc_now() -> str:
    """Current time as an ISO-8601 UTC string."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Job:
    """One file that entered the inbox."""

    id: int
    source_path: str
    source_name: str
    sha256: str
    size: int
    state: JobState
    work_path: str | None = None
    final_path: str | None = None
    document_id: str | None = None
    duplicate_of: int | None = None
    reason_code: str | None = None
    reason: str | None = None
    attempts: int = 0
    created_at: str = ""
    updated_at: str = ""
    claimed_by: int | None = None  # pid of the process whose worker last claimed the job

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Job":
        """Build from a ``jobs`` row."""
        fields = {k: row[k] for k in cls.__dataclass_fields__}
        return cls(**{**fields, "state": JobState(fields["state"])})


def _migration_1(db: sqlite_utils.Database) -> None:
    db["jobs"].create({
        "id": int, "source_path": str, "source_name": str, "sha256": str, "size": int,
        "state": str, "work_path": str, "final_path": str, "document_id": str,
        "duplicate_of": int, "reason_code": str, "reason": str, "attempts": int,
        "created_at": str, "updated_at": str,
    }, pk="id", not_null={"source_path", "sha256", "state"}, defaults={"attempts": 0})
    db["jobs"].create_index(["sha256"])
    db["jobs"].create_index(["state"])
    db["documents"].create({
        "id": str, "job_id": int, "source_name": str, "sha256": str, "created_at": str,
        "page_count": int, "state": str, "review_reason": str, "json_path": str,
        "model_versions": str,
    }, pk="id", foreign_keys=[("job_id", "jobs", "id")])
    db["pages"].create({
        "document_id": str, "number": int, "width": int, "height": int, "image": str,
    }, pk=("document_id", "number"), foreign_keys=[("document_id", "documents", "id")])
    db["segments"].create({
        "id": str, "document_id": str, "page": int, "position": int, "box": str, "text": str,
        "det_score": float, "rec_score": float, "det_version": str, "rec_version": str,
    }, pk=("document_id", "id"), foreign_keys=[("document_id", "documents", "id")])
    db["segments"].create_index(["document_id", "page", "position"])


def _migration_2(db: sqlite_utils.Database) -> None:
    segments = db["segments"]
    segments.add_column("label", str)
    segments.add_column("label_score", float)
    segments.add_column("ser_version", str)
    segments.add_column("words", str)
    db["links"].create({
        "document_id": str, "key": str, "value": str, "score": float, "re_version": str,
    }, pk=("document_id", "key", "value"), foreign_keys=[("document_id", "documents", "id")])
    db["gold_documents"].create({
        "id": str, "source": str, "split": str, "document": str, "created_at": str, "updated_at": str,
    }, pk="id")
    db["gold_documents"].create_index(["split"])


def _migration_3(db: sqlite_utils.Database) -> None:
    # The review queue (one row per document sent to review), reviewers' claims, and the audit log
    # of every change a reviewer saved (see service/review/queue.py).
    db["review_items"].create({
        "document_id": str, "document_created_at": str, "reason": str, "reasons": str, "audit": int,
        "uncertainty": float, "status": str, "queued_at": str, "reviewed_at": str, "reviewed_by": str,
        "revision": int, "split": str, "stratum": str,
    }, pk="document_id", not_null={"status"}, defaults={"audit": 0, "revision": 0})
    db["review_items"].create_index(["status"])
    db["review_claims"].create({
        "document_id": str, "reviewer": str, "claimed_at": str, "expires_at": str,
    }, pk="document_id")
    db["review_audit"].create({
        "id": int, "save_id": str, "document_id": str, "reviewer": str, "at": str, "action": str,
        "target": str, "before": str, "after": str, "model_versions": str,
    }, pk="id", not_null={"document_id", "reviewer", "at", "action"})
    db["review_audit"].create_index(["document_id", "at"])


def _migration_4(db: sqlite_utils.Database) -> None:
    db["learning_runs"].create({
        "id": int, "task": str, "started_at": str, "finished_at": str, "status": str, "reason": str,
        "candidate": str, "current": str, "new_documents": int, "metrics": str,
    }, pk="id")
    db["learning_runs"].create_index(["task", "started_at"])


def _migration_5(db: sqlite_utils.Database) -> None:
    # Review app accounts (scrypt hashes), every login attempt, and login sessions (token hashes);
    # see service/review/accounts.py.
    db["reviewers"].create({
        "name": str, "password_hash": str, "created_at": str, "disabled": int,
    }, pk="name", not_null={"password_hash", "created_at"}, defaults={"disabled": 0})
    db["review_logins"].create({
        "id": int, "name": str, "at": str, "ok": int, "address": str, "reason": str,
    }, pk="id", not_null={"name", "at", "ok"})
    db["review_logins"].create_index(["name", "at"])
    db["review_logins"].create_index(["address", "at"])
    db["review_sessions"].create({
        "token_hash": str, "name": str, "created_at": str, "last_seen": str, "expires_at": str,
    }, pk="token_hash", not_null={"name", "created_at", "last_seen", "expires_at"})
    db["review_sessions"].create_index(["name"])


def _migration_6(db: sqlite_utils.Database) -> None:
    # The routing decision stored with the result (JSON of Decision.to_dict(); NULL for documents
    # processed before this migration).
    db["documents"].add_column("routing", str)


def _migration_7(db: sqlite_utils.Database) -> None:
    # Which process claimed a job (its pid), so that the daemon can requeue exactly the job of a
    # worker process that died (daemon.workers > 1).
    db["jobs"].add_column("claimed_by", int)


def _migration_8(db: sqlite_utils.Database) -> None:
    # Segments formed by the grouping model (entities of OCR words): its confidence and version.
    segments = db["segments"]
    segments.add_column("group_score", float)
    segments.add_column("group_version", str)


def _migration_9(db: sqlite_utils.Database) -> None:
    # RE's probability for its decision about each segment as a value (Segment.link_score).
    db["segments"].add_column("link_score", float)


# Append-only: a migration, once released, is never edited; add a new one instead.
MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("0001_jobs_documents_pages_segments", _migration_1),
    ("0002_labels_links_gold", _migration_2),
    ("0003_review_queue_claims_audit", _migration_3),
    ("0004_learning_runs", _migration_4),
    ("0005_reviewer_accounts", _migration_5),
    ("0006_routing_decision", _migration_6),
    ("0007_job_claims", _migration_7),
    ("0008_segment_groups", _migration_8),
    ("0009_segment_link_scores", _migration_9),
]


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply the migrations not yet applied; returns their names."""
    if "_migrations" not in db.table_names():
        db["_migrations"].create({"name": str, "applied_at": str}, pk="name")
    done = {row["name"] for row in db["_migrations"].rows}
    applied = []
    for name, apply in MIGRATIONS:
        if name in done:
            continue
        with db.atomic():
            apply(db)
            db["_migrations"].insert({"name": name, "applied_at": utc_now()})
        applied.append(name)
    return applied


class Store:
    """Thread-safe access to the Paperloop database (one connection, one lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        self.db.execute("PRAGMA busy_timeout = 30000")
        self.db.enable_wal()
        self.db.execute("PRAGMA foreign_keys = ON")
        self._lock = threading.RLock()
        # Under the write lock: processes opening a brand-new database together (the daemon, its
        # workers, the review app) migrate it one after the other, each seeing what the others did.
        with self._write():
            migrate(self.db)

    def close(self) -> None:
        """Close the connection."""
        self.db.conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite_utils.Database]:
        """One write transaction that takes SQLite's write lock at ``BEGIN IMMEDIATE``.

        Several processes (the daemon's workers, the review app) write to the database. A deferred
        transaction that reads and then writes fails at once with "database is locked" when another
        connection committed in between (WAL gives it a stale snapshot, and ``busy_timeout`` does not
        apply); taking the lock first makes it wait its turn instead. Nested calls use savepoints.
        """
        with self._lock:
            if self.db.conn.in_transaction:
                with self.db.atomic():
                    yield self.db
                return
            self.db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                if self.db.conn.in_transaction:
                    self.db.conn.execute("ROLLBACK")
                raise
            self.db.conn.execute("COMMIT")

    @contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        """Exclusive use of the connection inside one write transaction (see :meth:`_write`; nested
        calls use savepoints)."""
        with self._write() as db:
            yield db

    # -- jobs -------------------------------------------------------------------------------

    def job(self, job_id: int) -> Job:
        """One job by id."""
        with self._lock:
            return Job.from_row(self.db["jobs"].get(job_id))

    def jobs(self, state: str | None = None) -> list[Job]:
        """Jobs, oldest first, optionally of one state."""
        where, args = ("state = ?", [state]) if state else (None, None)
        with self._lock:
            return [Job.from_row(r) for r in self.db["jobs"].rows_where(where, args, order_by="id")]

    def enqueue(self, source: Path, sha256: str, size: int,
                duplicate_path: Callable[[int], Path | None] = lambda _job_id: None) -> Job:
        """Record a new file: ``queued``, or ``duplicate`` when its content is already known.

        ``duplicate_path(job_id)`` names where a duplicate will be kept; it is stored in the same
        transaction so the record never lacks it.
        """
        with self._write():
            placeholders = ",".join("?" for _ in DEDUP_STATES)
            original = next(self.db["jobs"].rows_where(
                f"sha256 = ? AND state IN ({placeholders})", [sha256, *DEDUP_STATES],
                order_by="id", limit=1), None)
            now = utc_now()
            job_id = self.db["jobs"].insert({
                "source_path": str(source), "source_name": source.name, "sha256": sha256,
                "size": size, "state": QUEUED, "created_at": now, "updated_at": now,
            }).last_pk
            if original is not None:
                target = duplicate_path(job_id)
                self.db["jobs"].update(job_id, {
                    "state": DUPLICATE, "duplicate_of": original["id"],
                    "reason": f"same content as job {original['id']}",
                    "final_path": str(target) if target else None,
                })
            return Job.from_row(self.db["jobs"].get(job_id))

    def record_rejected(self, source: Path, reason: Reason, message: str,
                        final_path: Callable[[int], Path]) -> Job:
        """Record an inbox entry refused at intake (a link, a FIFO): a ``failed`` job from the start.

        ``final_path(job_id)`` names where the entry is kept in quarantine.
        """
        now = utc_now()
        with self._write():
            job_id = self.db["jobs"].insert({
                "source_path": str(source), "source_name": source.name, "sha256": "", "size": 0,
                "state": FAILED, "reason_code": reason.value, "reason": message, "created_at": now,
                "updated_at": now,
            }).last_pk
            self.db["jobs"].update(job_id, {"final_path": str(final_path(job_id))})
            return Job.from_row(self.db["jobs"].get(job_id))

    def pending_sources(self) -> set[str]:
        """Source paths of jobs not yet taken from the inbox or still in flight."""
        with self._lock:
            rows = self.db.execute(
                "SELECT source_path FROM jobs WHERE state IN (?, ?)", [QUEUED, PROCESSING]).fetchall()
        return {r[0] for r in rows}

    def claim_next(self, work_path_for: Callable[[Job], Path]) -> Job | None:
        """Take the oldest queued job into ``processing``; returns ``None`` when the queue is empty."""
        with self._write():
            row = next(self.db["jobs"].rows_where("state = ?", [QUEUED], order_by="id", limit=1), None)
            return None if row is None else self.claim(row["id"], work_path_for)

    def claim(self, job_id: int, work_path_for: Callable[[Job], Path]) -> Job | None:
        """Take one queued job into ``processing``; ``None`` if it is not queued (any more)."""
        with self._write():
            job = Job.from_row(self.db["jobs"].get(job_id))
            if job.state != QUEUED:
                return None
            job.work_path = job.work_path or str(work_path_for(job))
            self.db["jobs"].update(job.id, {
                "state": PROCESSING, "work_path": job.work_path,
                "attempts": job.attempts + 1, "claimed_by": os.getpid(), "updated_at": utc_now(),
            })
            return Job.from_row(self.db["jobs"].get(job.id))

    def requeue_interrupted(self) -> int:
        """After a crash, put jobs left in ``processing`` back in the queue; returns how many."""
        with self._write():
            cursor = self.db.execute(
                "UPDATE jobs SET state = ?, updated_at = ? WHERE state = ?", [QUEUED, utc_now(), PROCESSING])
            return cursor.rowcount

    def requeue_claimed_by(self, pid: int) -> list[Job]:
        """Put the jobs in ``processing`` that process ``pid`` claimed (a worker that died) back in
        the queue; returns them as they are now. Their ``attempts`` keep counting."""
        with self._write():
            rows = list(self.db["jobs"].rows_where("state = ? AND claimed_by = ?", [PROCESSING, pid], order_by="id"))
            for row in rows:
                self.db["jobs"].update(row["id"], {"state": QUEUED, "updated_at": utc_now()})
            return [Job.from_row(self.db["jobs"].get(row["id"])) for row in rows]

    def update_job(self, job_id: int, **fields: Any) -> None:
        """Set fields of a job."""
        with self._write():
            self.db["jobs"].update(job_id, {**fields, "updated_at": utc_now()})

    def fail(self, job_id: int, reason: Reason, message: str, final_path: Path | None) -> None:
        """Mark a job failed with its coded reason."""
        self.update_job(job_id, state=FAILED, reason_code=reason.value, reason=message,
                        final_path=str(final_path) if final_path else None)

    def counts(self) -> dict[str, int]:
        """Number of jobs per state (every state present, zero when none)."""
        with self._lock:
            rows = self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        found = dict(rows)
        return {state: found.get(state, 0) for state in STATES}

    # -- results ----------------------------------------------------------------------------

    def save_result(self, job_id: int, document: Document, state: JobState | str, review_reason: str | None,
                    json_path: Path, final_path: Path, routing: dict[str, Any] | None = None) -> None:
        """Store a processed document and finish its job, all in one transaction.

        ``routing`` is the routing record (:meth:`service.review.routing.Decision.to_dict`), kept as
        JSON in ``documents.routing``.
        """
        with self._write():
            self._delete_document(document.id)
            self.db["documents"].insert({
                "id": document.id, "job_id": job_id, "source_name": document.source_name,
                "sha256": document.sha256, "created_at": document.created_at,
                "page_count": len(document.pages), "state": state, "review_reason": review_reason,
                "json_path": str(json_path), "model_versions": json.dumps(document.model_versions),
                "routing": json.dumps(routing, ensure_ascii=False) if routing is not None else None,
            })
            self.db["pages"].insert_all({
                "document_id": document.id, "number": p.number, "width": p.width,
                "height": p.height, "image": p.image,
            } for p in document.pages)
            self.db["segments"].insert_all(_segment_row(document.id, page.number, i, s)
                                           for page in document.pages for i, s in enumerate(page.segments))
            self.db["links"].insert_all({"document_id": document.id, **link.to_dict()} for link in document.links)
            self.db["jobs"].update(job_id, {
                "state": state, "document_id": document.id, "final_path": str(final_path),
                "reason_code": None, "reason": review_reason, "updated_at": utc_now(),
            })

    def _delete_document(self, document_id: str) -> None:
        for table in ("links", "segments", "pages"):
            self.db.execute(f"DELETE FROM {table} WHERE document_id = ?", [document_id])
        self.db.execute("DELETE FROM documents WHERE id = ?", [document_id])

    def document_ids(self, states: Sequence[str]) -> list[str]:
        """Ids of the processed documents whose state is one of ``states``, in the order of their jobs."""
        if not states:
            return []
        with self._lock:
            rows = self.db.execute(f"SELECT id FROM documents WHERE state IN ({','.join('?' * len(states))}) "
                                   "ORDER BY job_id", [str(state) for state in states]).fetchall()
        return [row[0] for row in rows]

    def routing(self, document_id: str) -> dict[str, Any] | None:
        """The routing record stored with a document; ``None`` if it was processed before records
        were kept. ``KeyError`` for an unknown document."""
        with self._lock:
            row = self.db.execute("SELECT routing FROM documents WHERE id = ?", [document_id]).fetchone()
        if row is None:
            raise KeyError(document_id)
        return json.loads(row[0]) if row[0] else None

    def document(self, document_id: str) -> Document:
        """Rebuild a stored document."""
        with self._lock:
            row = self.db["documents"].get(document_id)
            pages = list(self.db["pages"].rows_where("document_id = ?", [document_id], order_by="number"))
            segments = list(self.db["segments"].rows_where(
                "document_id = ?", [document_id], order_by="page, position"))
            links = list(self.db["links"].rows_where("document_id = ?", [document_id]))
        by_page: dict[int, list[Segment]] = {}
        for s in segments:
            by_page.setdefault(s["page"], []).append(Segment(
                id=s["id"], box=[tuple(p) for p in json.loads(s["box"])], text=s["text"],
                label=s["label"], label_score=s["label_score"],
                words=[Word.from_dict(w) for w in json.loads(s["words"] or "[]")],
                det_score=s["det_score"], rec_score=s["rec_score"], det_version=s["det_version"],
                rec_version=s["rec_version"], ser_version=s["ser_version"],
                group_score=s["group_score"], group_version=s["group_version"], link_score=s["link_score"]))
        return Document(
            id=row["id"], source_name=row["source_name"], sha256=row["sha256"],
            created_at=row["created_at"], model_versions=json.loads(row["model_versions"]),
            pages=[Page(number=p["number"], width=p["width"], height=p["height"], image=p["image"],
                        segments=by_page.get(p["number"], [])) for p in pages],
            links=[Link(key=r["key"], value=r["value"], score=r["score"], re_version=r["re_version"])
                   for r in links])


def _segment_row(document_id: str, page: int, position: int, segment: Segment) -> dict[str, Any]:
    return {
        "id": segment.id, "document_id": document_id, "page": page, "position": position,
        "box": json.dumps([list(p) for p in segment.box]), "text": segment.text,
        "det_score": segment.det_score, "rec_score": segment.rec_score,
        "det_version": segment.det_version, "rec_version": segment.rec_version,
        "label": segment.label, "label_score": segment.label_score, "ser_version": segment.ser_version,
        "words": json.dumps([w.to_dict() for w in segment.words]),
        "group_score": segment.group_score, "group_version": segment.group_version,
        "link_score": segment.link_score,
    }
