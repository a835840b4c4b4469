"""Persistence of the review queue: every SQL statement on ``review_items``, ``review_claims`` and
``review_audit`` (and the reads of ``documents`` and ``gold_documents`` that the queue needs, and the
state a reviewed document and its job move to).

:class:`ReviewStore` wraps one :class:`~service.store.Store`; its methods are named after what they
do, take and return plain values, and each runs in a transaction of its own. A caller groups several
calls into one transaction with :meth:`ReviewStore.transaction` (nested transactions are savepoints).
The review logic that uses them is :class:`service.review.queue.ReviewService`.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from service.document import Document
from service.store import JobState, Store, utc_now

_ITEM_COLUMNS = ("document_id", "source_name", "page_count", "reason", "reasons", "audit", "uncertainty",
                 "status", "queued_at", "revision", "reviewed_by", "reviewed_at", "split", "claimed_by",
                 "claim_expires_at")


@dataclass(frozen=True)
class RoutedDocument:
    """A document the pipeline routed to review, with what was stored about it."""

    document_id: str
    created_at: str | None
    review_reason: str | None
    routing: dict[str, Any] | None  # the routing record; None for results stored before it was kept


@dataclass(frozen=True)
class StoredRouting:
    """Where the pipeline sent a processed document, and why, as stored with its result."""

    review_reason: str | None
    routing: dict[str, Any] | None


@dataclass(frozen=True)
class Claim:
    """A reviewer's claim on a document (live or lapsed)."""

    reviewer: str
    claimed_at: str
    expires_at: str


class ReviewStore:
    """Named reads and writes of the review tables over one :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the calls inside the ``with`` block in one transaction."""
        with self.store.transaction():
            yield

    # queue items ---------------------------------------------------------------------------

    def routed_documents(self, waiting: str) -> list[RoutedDocument]:
        """Documents in ``needs_review`` not yet queued, or queued with status ``waiting`` but
        processed again since (their ``created_at`` changed)."""
        with self.store.transaction() as db:
            rows = db.execute(
                "SELECT d.id, d.created_at, d.review_reason, d.routing "
                "FROM documents d LEFT JOIN review_items r ON r.document_id = d.id "
                "WHERE d.state = ? AND (r.document_id IS NULL OR "
                "(r.status = ? AND r.document_created_at IS NOT d.created_at))",
                [JobState.NEEDS_REVIEW, waiting]).fetchall()
        return [RoutedDocument(r[0], r[1], r[2], json.loads(r[3]) if r[3] else None) for r in rows]

    def mark_reviewed(self, document_id: str) -> StoredRouting | None:
        """Set a processed document and its job to ``reviewed``; returns why it had been routed where it
        went (for the output JSON), or ``None`` for a document the pipeline never processed (imported gold)."""
        with self.store.transaction() as db:
            row = db.execute("SELECT job_id, review_reason, routing FROM documents WHERE id = ?",
                             [document_id]).fetchone()
            if row is None:
                return None
            now = utc_now()
            db.execute("UPDATE documents SET state = ? WHERE id = ?", [JobState.REVIEWED, document_id])
            db.execute("UPDATE jobs SET state = ?, updated_at = ? WHERE id = ?", [JobState.REVIEWED, now, row[0]])
        return StoredRouting(row[1], json.loads(row[2]) if row[2] else None)

    def document_created_at(self, document_id: str) -> str | None:
        """When a processed document was created; ``KeyError`` if there is no such document."""
        with self.store.transaction() as db:
            row = db.execute("SELECT created_at FROM documents WHERE id = ?", [document_id]).fetchone()
        if row is None:
            raise KeyError(document_id)
        return row[0]

    def item_status(self, document_id: str) -> str | None:
        """The status of a document's queue item; ``None`` if it was never queued."""
        with self.store.transaction() as db:
            row = db.execute("SELECT status FROM review_items WHERE document_id = ?", [document_id]).fetchone()
        return row[0] if row else None

    def put_item(self, document_id: str, document_created_at: str | None, reason: str,
                 reasons: list[dict[str, Any]], audit: bool, uncertainty: float, status: str, queued_at: str,
                 replace: bool = False) -> None:
        """Queue a document at revision 0; ``replace`` overwrites an existing item (a re-run)."""
        row = {"document_id": document_id, "document_created_at": document_created_at, "reason": reason,
               "reasons": json.dumps(reasons), "audit": int(audit), "uncertainty": uncertainty,
               "status": status, "queued_at": queued_at, "revision": 0}
        with self.store.transaction() as db:
            if replace:
                db["review_items"].upsert(row, pk="document_id")
            else:
                db["review_items"].insert(row)

    def items(self, status: str | None, now: str) -> list[dict[str, Any]]:
        """Queue items (all statuses with ``status=None``) joined with their document and the
        claim live at ``now``; ``reasons`` decoded. Keys: see ``_ITEM_COLUMNS``."""
        where, args = ("WHERE r.status = ?", [status]) if status else ("", [])
        with self.store.transaction() as db:
            rows = db.execute(
                "SELECT r.document_id, d.source_name, d.page_count, r.reason, r.reasons, r.audit, r.uncertainty, "
                "r.status, r.queued_at, r.revision, r.reviewed_by, r.reviewed_at, r.split, c.reviewer, c.expires_at "
                "FROM review_items r LEFT JOIN documents d ON d.id = r.document_id "
                "LEFT JOIN review_claims c ON c.document_id = r.document_id AND c.expires_at > ? "
                f"{where}", [now, *args]).fetchall()
        items = [dict(zip(_ITEM_COLUMNS, r)) for r in rows]
        for item in items:
            item["reasons"] = json.loads(item["reasons"] or "[]")
        return items

    def item_state(self, document_id: str) -> dict[str, Any] | None:
        """``revision``, ``split``, ``reviewed_by``, ``reviewed_at`` and ``status`` of a queue item."""
        with self.store.transaction() as db:
            row = db.execute("SELECT revision, split, reviewed_by, reviewed_at, status FROM review_items "
                             "WHERE document_id = ?", [document_id]).fetchone()
        if row is None:
            return None
        return {"revision": int(row[0] or 0), "split": row[1], "reviewed_by": row[2], "reviewed_at": row[3],
                "status": row[4]}

    def update_item(self, document_id: str, fields: dict[str, Any]) -> None:
        """Set fields of a queue item."""
        with self.store.transaction() as db:
            db["review_items"].update(document_id, fields)

    def stratum_splits(self, stratum: str) -> tuple[int, int]:
        """(items with a split, of them in holdout) of a stratum."""
        with self.store.transaction() as db:
            n, holdout = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(split = 'holdout'), 0) FROM review_items "
                "WHERE stratum = ? AND split IS NOT NULL", [stratum]).fetchone()
        return int(n), int(holdout)

    # claims --------------------------------------------------------------------------------

    def claim(self, document_id: str) -> Claim | None:
        """The claim on a document, live or lapsed; ``None`` if there is none."""
        with self.store.transaction() as db:
            row = db.execute("SELECT reviewer, claimed_at, expires_at FROM review_claims WHERE document_id = ?",
                             [document_id]).fetchone()
        return Claim(*row) if row else None

    def put_claim(self, document_id: str, reviewer: str, claimed_at: str, expires_at: str) -> None:
        """Record (or replace) the claim on a document."""
        with self.store.transaction() as db:
            db["review_claims"].upsert({"document_id": document_id, "reviewer": reviewer,
                                        "claimed_at": claimed_at, "expires_at": expires_at}, pk="document_id")

    def delete_claim(self, document_id: str, reviewer: str) -> None:
        """Remove a reviewer's claim on a document (another reviewer's claim stays)."""
        with self.store.transaction() as db:
            db.execute("DELETE FROM review_claims WHERE document_id = ? AND reviewer = ?", [document_id, reviewer])

    def live_claimant(self, document_id: str, now: str) -> str | None:
        """Who holds a claim on the document that is live at ``now``."""
        with self.store.transaction() as db:
            row = db.execute("SELECT reviewer FROM review_claims WHERE document_id = ? AND expires_at > ?",
                             [document_id, now]).fetchone()
        return row[0] if row else None

    # audit log -----------------------------------------------------------------------------

    def add_audit_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows to the audit log; ``before``, ``after`` (``None`` stays NULL) and
        ``model_versions`` are JSON-encoded here."""
        with self.store.transaction() as db:
            db["review_audit"].insert_all({
                **row, "before": _json_or_none(row.get("before")), "after": _json_or_none(row.get("after")),
                "model_versions": json.dumps(row.get("model_versions")),
            } for row in rows)

    def audit_rows(self, document_id: str | None = None) -> list[dict[str, Any]]:
        """Audit rows, newest first, of one document or all; JSON columns decoded."""
        where, args = ("WHERE document_id = ?", [document_id]) if document_id else ("", [])
        with self.store.transaction() as db:
            cursor = db.execute(f"SELECT * FROM review_audit {where} ORDER BY id DESC", args)
            names = [c[0] for c in cursor.description]
            rows = [dict(zip(names, r)) for r in cursor.fetchall()]
        for row in rows:
            for key in ("before", "after", "model_versions"):
                row[key] = json.loads(row[key]) if row[key] else None
        return rows

    # gold documents ------------------------------------------------------------------------

    def gold_split(self, document_id: str) -> str | None:
        """The split of a stored gold document; ``None`` if there is none."""
        with self.store.transaction() as db:
            row = db.execute("SELECT split FROM gold_documents WHERE id = ?", [document_id]).fetchone()
        return row[0] if row else None

    def gold_label_counts(self, source: str) -> dict[str, int]:
        """Segments per label over the gold documents of one source."""
        with self.store.transaction() as db:
            return dict(db.execute(
                "SELECT json_extract(s.value, '$.label'), COUNT(*) FROM gold_documents g, "
                "json_each(g.document, '$.pages') p, json_each(p.value, '$.segments') s "
                "WHERE g.source = ? GROUP BY 1", [source]).fetchall())

    def gold_rows(self) -> list[tuple[Document, str, str, str]]:
        """(document, split, source, updated_at) of every gold document, by id."""
        with self.store.transaction() as db:
            rows = db.execute("SELECT document, split, source, updated_at FROM gold_documents ORDER BY id").fetchall()
        return [(Document.from_dict(json.loads(r[0])), r[1], r[2], r[3]) for r in rows]


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)
