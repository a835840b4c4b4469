"""The review queue: :class:`ReviewService` keeps the queue, reviewers' claims and gold saves.

* The queue (``review_items``) is ordered by informativeness for the next training run (the
  document's uncertainty, see :mod:`service.review.routing`), with audit samples mixed in.
  Reviewers claim a document (``review_claims``) so two never edit it at once.
* Saving writes the gold document to the :class:`LabelStore` and one ``review_audit`` row per
  change (reviewer, time, before, after, the model versions that produced the before) in one
  transaction. A save based on an outdated revision is refused, never merged silently; the
  pipeline never writes gold, and a reviewed document never returns to the queue. Accepting saved
  gold without a change only logs who looked (revision, reviewer and gold stay as they were).
* New gold documents are split into ``train`` and ``holdout``, stratified by their rarest label.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from service.config import PaperloopConfig
from service.document import Document
from service.labels import LabelStore, validate
from service.registry import ModelRegistry, RegistryError
from service.review.auth import clean_reviewer_name
from service.review.gold import Change, diff_documents, to_gold
from service.review.routing import ReviewReason, decide, document_uncertainty
from service.store import NEEDS_REVIEW, Store, utc_now

WAITING, REVIEWED = "waiting", "reviewed"
REVIEW_SOURCE = "review"
QUEUE_ORDERS = ("informative", "oldest", "newest")


class ReviewError(RuntimeError):
    """A review action cannot be carried out."""


class ClaimError(ReviewError):
    """The document is claimed by another reviewer."""


class ConflictError(ReviewError):
    """The document was saved by someone else since this reviewer opened it."""


@dataclass
class QueueItem:
    """A document in (or through) the review queue."""

    document_id: str
    source_name: str
    page_count: int
    reason: str
    reasons: list[dict[str, Any]]
    audit: bool
    uncertainty: float
    status: str
    queued_at: str
    revision: int
    reviewed_by: str | None = None
    reviewed_at: str | None = None
    split: str | None = None
    claimed_by: str | None = None
    claim_expires_at: str | None = None

    @property
    def kinds(self) -> list[str]:
        """The kinds of the reasons (rec, ser, re, field, audit...)."""
        return [r["kind"] for r in self.reasons]

    def age_seconds(self, now: datetime | None = None) -> float:
        """Seconds since the document entered the queue."""
        now = now or datetime.now(timezone.utc)
        return max(0.0, (now - datetime.fromisoformat(self.queued_at)).total_seconds())


def human_age(seconds: float) -> str:
    """``42 s``, ``5 min``, ``3 h``, ``2 d``."""
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


@dataclass(frozen=True)
class SaveResult:
    """What a save did."""

    document_id: str
    revision: int
    split: str
    changes: list[Change]


def _iso_in(minutes: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(minutes=minutes)).isoformat(timespec="milliseconds")


class ReviewService:
    """The review queue, claims and gold saves over one :class:`Store`."""

    def __init__(self, cfg: PaperloopConfig, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.labels = LabelStore(store)
        self.data_dir = cfg.paths.resolve("data")

    # queue ---------------------------------------------------------------------------------

    def sync(self) -> int:
        """Bring documents routed to review into the queue (or refresh them after a re-run).

        A reviewed document stays reviewed whatever the pipeline does later. Returns how many
        items were added or refreshed.
        """
        with self.store.transaction() as db:
            rows = db.execute(
                "SELECT d.id, d.created_at, d.review_reason, r.document_created_at, r.status "
                "FROM documents d LEFT JOIN review_items r ON r.document_id = d.id "
                "WHERE d.state = ? AND (r.document_id IS NULL OR "
                "(r.status = ? AND r.document_created_at IS NOT d.created_at))",
                [NEEDS_REVIEW, WAITING]).fetchall()
        changed = 0
        for document_id, created_at, stored_reason, _, status in rows:
            document = self.store.document(document_id)
            decision = decide(document, self.cfg)
            reasons = [r.to_dict() for r in decision.reasons]
            audit = decision.audit
            if not reasons:  # the config changed since: keep the reason given at processing time
                audit = (stored_reason or "").startswith("audit sample")
                reasons = [ReviewReason("audit" if audit else "pipeline",
                                        stored_reason or "sent to review by the pipeline").to_dict()]
            reason = stored_reason or "; ".join(r["detail"] for r in reasons)
            with self.store.transaction() as db:
                current = db.execute("SELECT status FROM review_items WHERE document_id = ?",
                                     [document_id]).fetchone()
                if current is not None and current[0] != WAITING:
                    continue
                db["review_items"].upsert({
                    "document_id": document_id, "document_created_at": created_at, "reason": reason,
                    "reasons": json.dumps(reasons), "audit": int(audit),
                    "uncertainty": decision.uncertainty, "status": WAITING,
                    "queued_at": created_at or utc_now(), "revision": 0,
                }, pk="document_id")
            changed += 1
        return changed

    def ensure_item(self, document_id: str, reason: str = "opened by a reviewer") -> None:
        """Put a document that the pipeline passed into the queue (e.g. to correct it anyway)."""
        with self.store.transaction() as db:
            if db.execute("SELECT 1 FROM review_items WHERE document_id = ?", [document_id]).fetchone():
                return
            row = db.execute("SELECT created_at FROM documents WHERE id = ?", [document_id]).fetchone()
            if row is None:
                raise KeyError(document_id)
            document = self.store.document(document_id)
            db["review_items"].insert({
                "document_id": document_id, "document_created_at": row[0], "reason": reason,
                "reasons": json.dumps([ReviewReason("manual", reason).to_dict()]), "audit": 0,
                "uncertainty": document_uncertainty(document, self.cfg.review.uncertainty),
                "status": WAITING, "queued_at": utc_now(), "revision": 0,
            })

    def items(self, status: str | None = WAITING) -> list[QueueItem]:
        """Queue items (with their live claims), unordered; all statuses with ``status=None``."""
        now = utc_now()
        where, args = ("WHERE r.status = ?", [status]) if status else ("", [])
        with self.store.transaction() as db:
            rows = db.execute(
                "SELECT r.document_id, d.source_name, d.page_count, r.reason, r.reasons, r.audit, r.uncertainty, "
                "r.status, r.queued_at, r.revision, r.reviewed_by, r.reviewed_at, r.split, c.reviewer, c.expires_at "
                "FROM review_items r LEFT JOIN documents d ON d.id = r.document_id "
                "LEFT JOIN review_claims c ON c.document_id = r.document_id AND c.expires_at > ? "
                f"{where}", [now, *args]).fetchall()
        return [QueueItem(
            document_id=r[0], source_name=r[1] or r[0], page_count=r[2] or 0, reason=r[3] or "",
            reasons=json.loads(r[4] or "[]"), audit=bool(r[5]), uncertainty=float(r[6] or 0.0),
            status=r[7], queued_at=r[8], revision=int(r[9] or 0), reviewed_by=r[10], reviewed_at=r[11],
            split=r[12], claimed_by=r[13], claim_expires_at=r[14]) for r in rows]

    def queue(self, order: str = "informative", kinds: Iterable[str] | None = None,
              audit: bool | None = None, min_uncertainty: float = 0.0, search: str = "",
              sync: bool = True) -> list[QueueItem]:
        """Documents waiting for review, in queue order, optionally filtered.

        ``informative`` (the default) puts the most uncertain first and mixes in one audit sample
        after every ``review.audit_every`` others; ``oldest`` and ``newest`` order by age.
        """
        if order not in QUEUE_ORDERS:
            raise ValueError(f"unknown queue order {order!r}; expected one of {QUEUE_ORDERS}")
        if sync:
            self.sync()
        wanted = set(kinds) if kinds else None
        items = [i for i in self.items(WAITING)
                 if (wanted is None or wanted & set(i.kinds))
                 and (audit is None or i.audit == audit)
                 and i.uncertainty >= min_uncertainty
                 and (not search or search.lower() in f"{i.document_id} {i.source_name}".lower())]
        if order == "oldest":
            return sorted(items, key=lambda i: (i.queued_at, i.document_id))
        if order == "newest":
            return sorted(items, key=lambda i: (i.queued_at, i.document_id), reverse=True)
        informative = sorted((i for i in items if not i.audit), key=lambda i: (-i.uncertainty, i.queued_at))
        audits = sorted((i for i in items if i.audit), key=lambda i: (i.queued_at, i.document_id))
        ordered: list[QueueItem] = []
        every = self.cfg.review.audit_every
        while informative or audits:
            ordered.extend(informative[:every])
            del informative[:every]
            if audits:
                ordered.append(audits.pop(0))
        return ordered

    def item(self, document_id: str) -> QueueItem:
        """One item, whatever its status; ``KeyError`` if the document was never queued."""
        for item in self.items(None):
            if item.document_id == document_id:
                return item
        raise KeyError(document_id)

    # claims --------------------------------------------------------------------------------

    def claim(self, document_id: str, reviewer: str) -> str:
        """Claim (or renew the claim on) a document; raises :class:`ClaimError` if another reviewer
        holds a live claim. Returns when the claim lapses."""
        reviewer = clean_reviewer_name(reviewer)
        if not reviewer:
            raise ReviewError("a reviewer name is required")
        now = utc_now()
        with self.store.transaction() as db:
            row = db.execute("SELECT reviewer, expires_at, claimed_at FROM review_claims WHERE document_id = ?",
                             [document_id]).fetchone()
            if row is not None and row[0] != reviewer and row[1] > now:
                raise ClaimError(f"{document_id} is being reviewed by {row[0]} (claimed {row[2][:16]} UTC)")
            expires = _iso_in(self.cfg.review.claim_minutes)
            claimed_at = row[2] if row is not None and row[0] == reviewer and row[1] > now else now
            db["review_claims"].upsert({"document_id": document_id, "reviewer": reviewer,
                                        "claimed_at": claimed_at, "expires_at": expires}, pk="document_id")
        return expires

    def release(self, document_id: str, reviewer: str) -> None:
        """Give up one's claim on a document (someone else's claim is left alone)."""
        with self.store.transaction() as db:
            db.execute("DELETE FROM review_claims WHERE document_id = ? AND reviewer = ?",
                       [document_id, clean_reviewer_name(reviewer)])

    def claimed_by(self, document_id: str) -> str | None:
        """Who holds a live claim on the document."""
        with self.store.transaction() as db:
            row = db.execute("SELECT reviewer FROM review_claims WHERE document_id = ? AND expires_at > ?",
                             [document_id, utc_now()]).fetchone()
        return row[0] if row else None

    def next_for(self, reviewer: str, skip: Iterable[str] = (), **filters: Any) -> str | None:
        """Claim the first waiting document in queue order that no one else holds; its id or ``None``."""
        skipped = set(skip)
        for item in self.queue(**filters):
            if item.document_id in skipped or (item.claimed_by and item.claimed_by != reviewer):
                continue
            try:
                self.claim(item.document_id, reviewer)
            except ClaimError:
                continue
            return item.document_id
        return None

    # documents -----------------------------------------------------------------------------

    def prediction(self, document_id: str) -> Document:
        """The pipeline's result for a document."""
        return self.store.document(document_id)

    def working_copy(self, document_id: str) -> tuple[Document, int]:
        """(document to edit, revision): the saved gold if there is one, else the prediction."""
        revision = 0
        with self.store.transaction() as db:
            row = db.execute("SELECT revision FROM review_items WHERE document_id = ?", [document_id]).fetchone()
        if row is not None:
            revision = int(row[0] or 0)
        if self.labels.exists(document_id):
            return self.labels.get(document_id), revision
        return self.prediction(document_id), revision

    def save(self, document_id: str, edited: Document, reviewer: str, base_revision: int,
             accept: bool = False) -> SaveResult:
        """Save a reviewed document as gold, atomically, with one audit row per change.

        The reviewer must hold (or be able to take) the claim, and ``base_revision`` must be the
        revision the edit started from: a save made by someone else in between is never silently
        overwritten (:class:`ConflictError`). Links naming deleted segments are dropped (and logged).
        """
        reviewer = clean_reviewer_name(reviewer)
        if edited.id != document_id:
            raise ReviewError(f"the edited document is {edited.id}, not {document_id}")
        self.ensure_item(document_id)
        prediction = self.prediction(document_id)
        with self.store.transaction() as db:
            self.claim(document_id, reviewer)
            item = db.execute("SELECT revision, split, reviewed_by, reviewed_at, status FROM review_items "
                              "WHERE document_id = ?", [document_id]).fetchone()
            revision, split = int(item[0] or 0), item[1]
            if revision != base_revision:
                raise ConflictError(f"{document_id} was saved by {item[2]} at {(item[3] or '')[:19]} since you "
                                    f"opened it (revision {revision}, yours {base_revision}); reload to see it")
            from_gold = self.labels.exists(document_id)
            before = self.labels.get(document_id) if from_gold else prediction
            gold = to_gold(edited, prediction)
            changes = diff_documents(before, gold, from_gold=from_gold, revision=revision)
            if not changes:
                changes = [Change("accept", document_id, None, None,
                                  {"gold_revision": revision} if from_gold else dict(prediction.model_versions))]
                if from_gold and item[4] == REVIEWED:  # reviewed gold confirmed: only who looked is logged
                    self._audit(db, document_id, reviewer, changes)
                    if accept:
                        self.release(document_id, reviewer)
                    return SaveResult(document_id, revision, split, changes)
            validate(gold)
            stratum = None
            if split is None and from_gold:  # gold imported before review keeps its split (holdout is frozen)
                split = db.execute("SELECT split FROM gold_documents WHERE id = ?", [document_id]).fetchone()[0]
            if split is None:
                split, stratum = self._assign_split(db, gold)
            self.labels.put(gold, source=REVIEW_SOURCE, split=split)
            now = self._audit(db, document_id, reviewer, changes)
            update = {"status": REVIEWED, "reviewed_by": reviewer, "reviewed_at": now,
                      "revision": revision + 1, "split": split}
            if stratum is not None:
                update["stratum"] = stratum
            db["review_items"].update(document_id, update)
            if accept:
                self.release(document_id, reviewer)
        return SaveResult(document_id, revision + 1, split, changes)

    @staticmethod
    def _audit(db: Any, document_id: str, reviewer: str, changes: list[Change]) -> str:
        """One ``review_audit`` row per change, all with one save id; returns their time."""
        save_id, now = uuid.uuid4().hex, utc_now()
        db["review_audit"].insert_all({
            "save_id": save_id, "document_id": document_id, "reviewer": reviewer, "at": now,
            "action": c.action, "target": c.target,
            "before": json.dumps(c.before, ensure_ascii=False) if c.before is not None else None,
            "after": json.dumps(c.after, ensure_ascii=False) if c.after is not None else None,
            "model_versions": json.dumps(c.model_versions),
        } for c in changes)
        return now

    def _assign_split(self, db: Any, gold: Document) -> tuple[str, str]:
        """``train`` or ``holdout`` for a new gold document, stratified by its rarest label.

        Within a stratum, a document goes to holdout while the holdout share (rounded) is below
        ``review.holdout_fraction``; once assigned, a document's split never changes.
        """
        fraction = self.cfg.review.holdout_fraction
        labels = {s.label for s in gold.segments if s.label}
        stratum = "(unlabelled)"
        if labels:
            counts = dict(db.execute(
                "SELECT json_extract(s.value, '$.label'), COUNT(*) FROM gold_documents g, "
                "json_each(g.document, '$.pages') p, json_each(p.value, '$.segments') s "
                "WHERE g.source = ? GROUP BY 1", [REVIEW_SOURCE]).fetchall())
            stratum = min(sorted(labels), key=lambda label: counts.get(label, 0))
        n, holdout = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(split = 'holdout'), 0) FROM review_items "
            "WHERE stratum = ? AND split IS NOT NULL", [stratum]).fetchone()
        split = "holdout" if fraction > 0 and math.floor(fraction * (n + 1) + 0.5) > holdout else "train"
        return split, stratum

    def audit_log(self, document_id: str | None = None) -> list[dict[str, Any]]:
        """Audit rows, newest first (before/after/model_versions decoded)."""
        where, args = ("WHERE document_id = ?", [document_id]) if document_id else ("", [])
        with self.store.transaction() as db:
            cursor = db.execute(f"SELECT * FROM review_audit {where} ORDER BY id DESC", args)
            names = [c[0] for c in cursor.description]
            rows = [dict(zip(names, r)) for r in cursor.fetchall()]
        for row in rows:
            for key in ("before", "after", "model_versions"):
                row[key] = json.loads(row[key]) if row[key] else None
        return rows

    # gold set ------------------------------------------------------------------------------

    def gold_rows(self) -> list[tuple[Document, str, str, str]]:
        """(document, split, source, updated_at) of every gold document."""
        with self.store.transaction() as db:
            rows = db.execute("SELECT document, split, source, updated_at FROM gold_documents ORDER BY id").fetchall()
        return [(Document.from_dict(json.loads(r[0])), r[1], r[2], r[3]) for r in rows]

    def gold_summary(self) -> dict[str, Any]:
        """Gold label counts per task, per split and per label, and what is new since each task's
        latest model version (the last training run)."""
        registry = ModelRegistry(self.cfg.paths.resolve("models"))
        since: dict[str, tuple[str | None, str | None]] = {}
        for task in ("det", "rec", "ser", "re"):
            latest = (None, None)
            try:
                for version in registry.versions(task):
                    created = registry.card(task, version).created_at
                    if latest[1] is None or created > latest[1]:
                        latest = (version, created)
            except (RegistryError, OSError, ValueError):
                pass
            since[task] = latest
        per_split: dict[str, Counter] = {}
        per_label: dict[str, Counter] = {}
        new = Counter()
        for document, split, _source, updated_at in self.gold_rows():
            counts = task_counts(document)
            per_split.setdefault(split, Counter()).update(counts)
            for segment in document.segments:
                per_label.setdefault(segment.label or "(none)", Counter())[split] += 1
            for task, count in counts.items():
                if task == "documents":
                    continue
                _version, created = since.get(task, (None, None))
                if created is None or _after(updated_at, created):
                    new[task] += count
        return {
            "per_split": {s: dict(c) for s, c in sorted(per_split.items())},
            "per_label": {label: dict(c) for label, c in sorted(per_label.items())},
            "new_since_training": {t: {"count": new.get(t, 0), "since_version": since[t][0],
                                       "since": since[t][1]} for t in ("det", "rec", "ser", "re")},
        }


def _after(a: str, b: str) -> bool:
    try:
        return datetime.fromisoformat(a) > datetime.fromisoformat(b)
    except ValueError:
        return a > b


def task_counts(document: Document) -> dict[str, int]:
    """Gold items per task: det boxes, rec texts, ser labels, re links."""
    segments = document.segments
    return {"documents": 1, "det": len(segments), "rec": sum(1 for s in segments if s.text.strip()),
            "ser": sum(1 for s in segments if s.label), "re": len(document.links)}
