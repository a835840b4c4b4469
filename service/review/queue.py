"""The review queue: :class:`ReviewService` keeps the queue, reviewers' claims and gold saves.

* The queue (``review_items``) is ordered by informativeness for the next training run (the
  document's uncertainty, see :mod:`service.review.routing`), with audit samples mixed in.
  Reviewers claim a document (``review_claims``) so two never edit it at once.
* Saving writes the gold document to the :class:`LabelStore` and one ``review_audit`` row per
  change (reviewer, time, before, after, the model versions that produced the before) in one
  transaction. A save based on an outdated revision is refused, never merged silently; the
  pipeline never writes gold, and a reviewed document never returns to the queue. Accepting saved
  gold without a change only logs who looked (revision, reviewer and gold stay as they were).
* A save makes the reviewed document the document's result (:mod:`service.review.publish`): the
  output JSON is rewritten from the gold and the document's state becomes ``reviewed``.
* New gold documents are split into ``train`` and ``holdout``, stratified by their rarest label.
* A document enters the queue with the routing record stored with its result (reasons, audit flag,
  uncertainty at processing time); it is not decided again under today's configuration.

This module holds the review logic only: every read and write of the database goes through
:class:`service.review_store.ReviewStore`.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from service.config import PaperloopConfig
from service.document import Document
from service.labels import LabelStore, validate
from service.registry import ModelRegistry
from service.review.auth import clean_reviewer_name
from service.review.gold import Change, diff_documents, to_gold
from service.review.publish import publish_review
from service.review.routing import Decision, ReviewReason, decide, review_uncertainty
from service.review_store import ReviewStore, RoutedDocument
from service.store import Store, utc_now
from service.tasks import TASK_NAMES, all_tasks

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
        self.records = ReviewStore(store)
        self.labels = LabelStore(store)
        self.data_dir = cfg.paths.resolve("data")

    # queue ---------------------------------------------------------------------------------

    def sync(self) -> int:
        """Bring documents routed to review into the queue (or refresh them after a re-run).

        A reviewed document stays reviewed whatever the pipeline does later. Returns how many
        items were added or refreshed.
        """
        changed = 0
        for routed in self.records.routed_documents(WAITING):
            decision = self._decision(routed)
            reasons = [r.to_dict() for r in decision.reasons]
            reason = routed.review_reason or "; ".join(r["detail"] for r in reasons)
            with self.records.transaction():
                if self.records.item_status(routed.document_id) not in (None, WAITING):
                    continue
                self.records.put_item(routed.document_id, routed.created_at, reason, reasons, decision.audit,
                                      decision.uncertainty, WAITING, routed.created_at or utc_now(), replace=True)
            changed += 1
        return changed

    def _decision(self, routed: RoutedDocument) -> Decision:
        """The routing decision stored with the result (see :mod:`service.review.routing`)."""
        if routed.routing is None:
            return self._legacy_decision(routed)
        decision = Decision.from_dict(routed.routing)
        if decision.reasons:
            return decision
        detail = routed.review_reason or "sent to review by the pipeline"
        return Decision(True, (ReviewReason("pipeline", detail),), decision.audit, decision.uncertainty)

    def _legacy_decision(self, routed: RoutedDocument) -> Decision:
        """A result stored before routing records were kept (migration 0006) is decided again; when the
        configuration changed since and nothing is found, the reason given at processing time is kept
        (its text is the only record of an audit sample)."""
        decision = decide(self.store.document(routed.document_id), self.cfg)
        if decision.reasons:
            return decision
        audit = (routed.review_reason or "").startswith("audit sample")
        detail = routed.review_reason or "sent to review by the pipeline"
        return Decision(True, (ReviewReason("audit" if audit else "pipeline", detail),), audit, decision.uncertainty)

    def ensure_item(self, document_id: str, reason: str = "opened by a reviewer") -> None:
        """Put a document that the pipeline passed into the queue (e.g. to correct it anyway)."""
        with self.records.transaction():
            if self.records.item_status(document_id) is not None:
                return
            created_at = self.records.document_created_at(document_id)
            document = self.store.document(document_id)
            self.records.put_item(document_id, created_at, reason, [ReviewReason("manual", reason).to_dict()],
                                  False, review_uncertainty(document, self.cfg.review), WAITING,
                                  utc_now())

    def items(self, status: str | None = WAITING) -> list[QueueItem]:
        """Queue items (with their live claims), unordered; all statuses with ``status=None``."""
        return [QueueItem(
            document_id=r["document_id"], source_name=r["source_name"] or r["document_id"],
            page_count=r["page_count"] or 0, reason=r["reason"] or "", reasons=r["reasons"], audit=bool(r["audit"]),
            uncertainty=float(r["uncertainty"] or 0.0), status=r["status"], queued_at=r["queued_at"],
            revision=int(r["revision"] or 0), reviewed_by=r["reviewed_by"], reviewed_at=r["reviewed_at"],
            split=r["split"], claimed_by=r["claimed_by"], claim_expires_at=r["claim_expires_at"],
        ) for r in self.records.items(status, utc_now())]

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
        with self.records.transaction():
            held = self.records.claim(document_id)
            live = held is not None and held.expires_at > now
            if live and held.reviewer != reviewer:
                raise ClaimError(f"{document_id} is being reviewed by {held.reviewer} "
                                 f"(claimed {held.claimed_at[:16]} UTC)")
            expires = _iso_in(self.cfg.review.claim_minutes)
            claimed_at = held.claimed_at if live else now
            self.records.put_claim(document_id, reviewer, claimed_at, expires)
        return expires

    def release(self, document_id: str, reviewer: str) -> None:
        """Give up one's claim on a document (someone else's claim is left alone)."""
        self.records.delete_claim(document_id, clean_reviewer_name(reviewer))

    def claimed_by(self, document_id: str) -> str | None:
        """Who holds a live claim on the document."""
        return self.records.live_claimant(document_id, utc_now())

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
        state = self.records.item_state(document_id)
        revision = state["revision"] if state is not None else 0
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
        with self.records.transaction():
            self.claim(document_id, reviewer)
            item = self.records.item_state(document_id)
            revision, split = item["revision"], item["split"]
            if revision != base_revision:
                raise ConflictError(f"{document_id} was saved by {item['reviewed_by']} at "
                                    f"{(item['reviewed_at'] or '')[:19]} since you opened it "
                                    f"(revision {revision}, yours {base_revision}); reload to see it")
            from_gold = self.labels.exists(document_id)
            before = self.labels.get(document_id) if from_gold else prediction
            gold = to_gold(edited, prediction)
            changes = diff_documents(before, gold, from_gold=from_gold, revision=revision)
            if not changes:
                changes = [Change("accept", document_id, None, None,
                                  {"gold_revision": revision} if from_gold else dict(prediction.model_versions))]
                if from_gold and item["status"] == REVIEWED:  # reviewed gold confirmed: only who looked is logged
                    self._audit(document_id, reviewer, changes)
                    if accept:
                        self.release(document_id, reviewer)
                    return SaveResult(document_id, revision, split, changes)
            validate(gold)
            stratum = None
            if split is None and from_gold:  # gold imported before review keeps its split (holdout is frozen)
                split = self.records.gold_split(document_id)
            if split is None:
                split, stratum = self._assign_split(gold)
            self.labels.put(gold, source=REVIEW_SOURCE, split=split)
            now = self._audit(document_id, reviewer, changes)
            update = {"status": REVIEWED, "reviewed_by": reviewer, "reviewed_at": now,
                      "revision": revision + 1, "split": split}
            if stratum is not None:
                update["stratum"] = stratum
            self.records.update_item(document_id, update)
            publish_review(self.cfg, self.records, gold, reviewer, now, revision + 1)
            if accept:
                self.release(document_id, reviewer)
        return SaveResult(document_id, revision + 1, split, changes)

    def _audit(self, document_id: str, reviewer: str, changes: list[Change]) -> str:
        """One ``review_audit`` row per change, all with one save id; returns their time."""
        save_id, now = uuid.uuid4().hex, utc_now()
        self.records.add_audit_rows({
            "save_id": save_id, "document_id": document_id, "reviewer": reviewer, "at": now,
            "action": c.action, "target": c.target, "before": c.before, "after": c.after,
            "model_versions": c.model_versions,
        } for c in changes)
        return now

    def _assign_split(self, gold: Document) -> tuple[str, str]:
        """``train`` or ``holdout`` for a new gold document, stratified by its rarest label.

        Within a stratum, a document goes to holdout while the holdout share (rounded) is below
        ``review.holdout_fraction``; once assigned, a document's split never changes.
        """
        fraction = self.cfg.review.holdout_fraction
        labels = {s.label for s in gold.segments if s.label}
        stratum = "(unlabelled)"
        if labels:
            counts = self.records.gold_label_counts(REVIEW_SOURCE)
            stratum = min(sorted(labels), key=lambda label: counts.get(label, 0))
        n, holdout = self.records.stratum_splits(stratum)
        split = "holdout" if fraction > 0 and math.floor(fraction * (n + 1) + 0.5) > holdout else "train"
        return split, stratum

    def audit_log(self, document_id: str | None = None) -> list[dict[str, Any]]:
        """Audit rows, newest first (before/after/model_versions decoded)."""
        return self.records.audit_rows(document_id)

    # gold set ------------------------------------------------------------------------------

    def gold_rows(self) -> list[tuple[Document, str, str, str]]:
        """(document, split, source, updated_at) of every gold document."""
        return self.records.gold_rows()

    def gold_summary(self) -> dict[str, Any]:
        """Gold label counts per task, per split and per label, and what is new since each task's
        last training (:func:`service.learning.last_training`, the learning job's own measure):
        the task's gold items in train-split documents changed since then."""
        from service.learning import last_training

        registry = ModelRegistry(self.cfg.paths.resolve("models"))
        since = {task: last_training(self.store, registry, task) for task in TASK_NAMES}
        per_split: dict[str, Counter] = {}
        per_label: dict[str, Counter] = {}
        new = Counter()
        for document, split, _source, updated_at in self.gold_rows():
            counts = task_counts(document)
            per_split.setdefault(split, Counter()).update(counts)
            for segment in document.segments:
                per_label.setdefault(segment.label or "(none)", Counter())[split] += 1
            for task in TASK_NAMES:
                _version, trained_at = since[task]
                if split == "train" and (trained_at is None or _after(updated_at, trained_at)):
                    new[task] += counts[task]
        return {
            "per_split": {s: dict(c) for s, c in sorted(per_split.items())},
            "per_label": {label: dict(c) for label, c in sorted(per_label.items())},
            "new_since_training": {t: {"count": new.get(t, 0), "since_version": since[t][0], "since": since[t][1]}
                                   for t in TASK_NAMES},
        }


def _after(a: str, b: str) -> bool:
    try:
        return datetime.fromisoformat(a) > datetime.fromisoformat(b)
    except ValueError:
        return a > b


def task_counts(document: Document) -> dict[str, int]:
    """Gold items per registered task (det boxes, rec texts, ser labels, re links), and ``documents``: 1."""
    return {"documents": 1, **{task.name: task.gold_items(document) for task in all_tasks()}}
