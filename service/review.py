"""Human review, the service side: routing, uncertainty, the queue, claims, gold saves, exports.

* :func:`decide` says whether a processed document goes to review and why: a recognition score
  below ``routing.min_rec_score``, a SER label probability below ``review.min_label_score``, an
  RE link probability below ``review.min_link_score``, a labelled field below its own threshold
  (``review.field_thresholds``), no text at all, or a random audit sample of the documents that
  passed (``review.audit_percent``, drawn from the content hash so it is reproducible).
* :class:`ReviewService` keeps the queue (``review_items``), ordered by informativeness for the
  next training run: the mean segment uncertainty (entropy, margin or least confidence of each
  segment's scores, so long documents are not favoured for their length), with audit samples
  mixed in. Reviewers claim a document (``review_claims``) so two never edit it at once.
* Saving writes the gold document to the :class:`LabelStore` and one ``review_audit`` row per
  change (reviewer, time, before, after, the model versions that produced the before) in one
  transaction. A save based on an outdated revision is refused, never merged silently; the
  pipeline never writes gold, and a reviewed document never returns to the queue.
* :func:`export_gold` writes the gold set in PaddleOCR's formats: detection ``Label.txt``,
  recognition ``rec_gt.txt`` + ``crop_img/``, KIE ``Label.txt`` and XFUND JSON.

The Streamlit app in ``review_app/`` is a thin layer over this module.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import math
import os
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from service.config import PaperloopConfig
from service.document import Document, Link, Page, Segment
from service.labels import LabelStore, validate
from service.registry import ModelRegistry, RegistryError
from service.store import NEEDS_REVIEW, Store, utc_now

WAITING, REVIEWED = "waiting", "reviewed"
REVIEW_SOURCE = "review"
UNCERTAINTY_STRATEGIES = ("entropy", "margin", "least_confidence")
QUEUE_ORDERS = ("informative", "oldest", "newest")
PASSWORD_ENV = "PAPERLOOP_REVIEW_PASSWORD"
PASSWORD_HASH_ENV = "PAPERLOOP_REVIEW_PASSWORD_HASH"
BOX_TOLERANCE = 0.5  # pixels: a box moved less than this is unchanged


class ReviewError(RuntimeError):
    """A review action cannot be carried out."""


class ClaimError(ReviewError):
    """The document is claimed by another reviewer."""


class ConflictError(ReviewError):
    """The document was saved by someone else since this reviewer opened it."""


# -- routing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewReason:
    """One reason a document is sent to review."""

    kind: str  # no_text | rec | ser | re | field | audit | pipeline | manual
    detail: str
    count: int = 0
    lowest: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"kind": self.kind, "detail": self.detail, "count": self.count, "lowest": self.lowest}


@dataclass(frozen=True)
class Decision:
    """Where a processed document goes: review or not, why, and how uncertain its results are."""

    needs_review: bool
    reasons: tuple[ReviewReason, ...]
    audit: bool
    uncertainty: float

    @property
    def summary(self) -> str | None:
        """The reasons as one line (stored as the document's ``review_reason``)."""
        return "; ".join(r.detail for r in self.reasons) or None


def is_audit_sample(document: Document, percent: float) -> bool:
    """Whether a document that passed is drawn for audit: ``percent`` of all content, by hash."""
    if percent <= 0:
        return False
    digest = hashlib.sha256(f"paperloop-audit:{document.sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < percent / 100.0


def segment_confidence(segment: Segment) -> float | None:
    """The lower of the recognition score and the label probability (``None`` without either)."""
    scores = [s for s in (segment.rec_score, segment.label_score) if s is not None]
    return min(scores) if scores else None


def _low(values: list[tuple[Any, float | None]], threshold: float) -> tuple[int, float | None]:
    low = [v for _, v in values if v is not None and v < threshold]
    return len(low), (min(low) if low else None)


def decide(document: Document, cfg: PaperloopConfig) -> Decision:
    """Route a processed document: review (with the reasons) or done; see the module docstring."""
    review = cfg.review
    segments = document.segments
    reasons: list[ReviewReason] = []
    if not segments:
        reasons.append(ReviewReason("no_text", "no text was found"))
    threshold = cfg.routing.min_rec_score
    count, lowest = _low([(s, s.rec_score) for s in segments], threshold)
    if count:
        reasons.append(ReviewReason(
            "rec", f"{count} of {len(segments)} segments read with confidence below {threshold:.2f} "
                   f"(lowest {lowest:.2f})", count, lowest))
    threshold = review.min_label_score
    count, lowest = _low([(s, s.label_score) for s in segments], threshold)
    if count:
        reasons.append(ReviewReason(
            "ser", f"{count} segment labels with probability below {threshold:.2f} (lowest {lowest:.2f})",
            count, lowest))
    threshold = review.min_link_score
    count, lowest = _low([(link, link.score) for link in document.links], threshold)
    if count:
        reasons.append(ReviewReason(
            "re", f"{count} of {len(document.links)} links with probability below {threshold:.2f} "
                  f"(lowest {lowest:.2f})", count, lowest))
    for label, threshold in sorted(review.field_thresholds.items()):
        count, lowest = _low([(s, segment_confidence(s)) for s in segments if s.label == label], threshold)
        if count:
            reasons.append(ReviewReason(
                "field", f"field {label!r}: {count} below {threshold:.2f} (lowest {lowest:.2f})", count, lowest))
    audit = not reasons and is_audit_sample(document, review.audit_percent)
    if audit:
        reasons.append(ReviewReason("audit", f"audit sample ({review.audit_percent:g}% of documents that passed)"))
    return Decision(bool(reasons), tuple(reasons), audit, document_uncertainty(document, review.uncertainty))


# -- uncertainty ----------------------------------------------------------------------------------


def score_uncertainty(p: float, strategy: str = "entropy") -> float:
    """Uncertainty in [0, 1] of a prediction whose top probability is ``p``.

    Only the top probability is stored, so the rest of the mass is taken to sit on the runner-up
    (the worst case): entropy is the binary entropy in bits, margin is 1 - (p - (1 - p)), least
    confidence is 1 - p. A recognition score is already a per-character mean, i.e. normalized by
    the length of the text.
    """
    p = min(max(float(p), 0.0), 1.0)
    if strategy == "least_confidence":
        return 1.0 - p
    if strategy == "margin":
        return min(1.0, 2.0 * (1.0 - p))
    if strategy == "entropy":
        if p >= 1.0:
            return 0.0
        if p <= 0.5:  # at or below an even split the top label is as uncertain as it gets
            return 1.0
        q = 1.0 - p
        return -(p * math.log2(p) + q * math.log2(q))
    raise ValueError(f"unknown uncertainty strategy {strategy!r}; expected one of {UNCERTAINTY_STRATEGIES}")


def segment_uncertainty(segment: Segment, strategy: str = "entropy") -> float | None:
    """The larger uncertainty of a segment's recognition and label; ``None`` without scores."""
    values = [score_uncertainty(s, strategy) for s in (segment.rec_score, segment.label_score) if s is not None]
    return max(values) if values else None


def document_uncertainty(document: Document, strategy: str = "entropy") -> float:
    """Mean uncertainty over the scored segments and links (normalized by the document's length).

    A document with no text at all counts as fully uncertain.
    """
    values = [u for s in document.segments if (u := segment_uncertainty(s, strategy)) is not None]
    values += [score_uncertainty(link.score, strategy) for link in document.links if link.score is not None]
    if not values:
        return 1.0 if not document.segments else 0.0
    return round(sum(values) / len(values), 6)


# -- passwords and access -------------------------------------------------------------------------


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A salted scrypt hash: ``scrypt$n$r$p$salt$hash`` (base64 parts)."""
    if not password:
        raise ValueError("the password is empty")
    salt = salt or os.urandom(16)
    n, r, p = 2**14, 8, 1
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"scrypt${n}${r}${p}${b64(salt)}${b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a hash made by :func:`hash_password` (constant-time compare)."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r),
                                p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def is_loopback(address: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AuthPolicy:
    """Who may log in: a shared password hash and/or one hash per reviewer name."""

    shared_hash: str | None = None
    reviewer_hashes: Mapping[str, str] = field(default_factory=dict)

    @property
    def password_required(self) -> bool:
        """Whether any password is configured."""
        return bool(self.shared_hash or self.reviewer_hashes)

    def check(self, name: str, password: str) -> bool:
        """Whether ``name`` may log in with ``password``."""
        name = clean_reviewer_name(name)
        if not name:
            return False
        if name in self.reviewer_hashes:
            return verify_password(password, self.reviewer_hashes[name])
        if self.shared_hash:
            return verify_password(password, self.shared_hash)
        return not self.reviewer_hashes  # no password configured at all: a name is enough


def auth_policy(cfg: PaperloopConfig, environ: Mapping[str, str] | None = None) -> AuthPolicy:
    """The login policy: ``PAPERLOOP_REVIEW_PASSWORD`` (hashed at once), else the hash passed by
    ``paperloop review`` in ``PAPERLOOP_REVIEW_PASSWORD_HASH``, else ``review.password_hash``."""
    environ = os.environ if environ is None else environ
    plain = environ.get(PASSWORD_ENV)
    shared = hash_password(plain) if plain else environ.get(PASSWORD_HASH_ENV) or cfg.review.password_hash
    return AuthPolicy(shared_hash=shared, reviewer_hashes=dict(cfg.review.reviewers))


def clean_reviewer_name(name: str) -> str:
    """A reviewer name as stored: trimmed, at most 64 characters, no control characters."""
    return "".join(ch for ch in (name or "").strip() if ch.isprintable())[:64]


# -- the queue ------------------------------------------------------------------------------------


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
class Change:
    """One reviewed change, as written to the audit log."""

    action: str  # accept | text | label | box | add_segment | delete_segment | add_link | delete_link
    target: str
    before: Any
    after: Any
    model_versions: dict[str, Any]


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
            item = db.execute("SELECT revision, split, reviewed_by, reviewed_at FROM review_items "
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
            validate(gold)
            stratum = None
            if split is None:
                split, stratum = self._assign_split(db, gold)
            self.labels.put(gold, source=REVIEW_SOURCE, split=split)
            save_id, now = uuid.uuid4().hex, utc_now()
            db["review_audit"].insert_all({
                "save_id": save_id, "document_id": document_id, "reviewer": reviewer, "at": now,
                "action": c.action, "target": c.target,
                "before": json.dumps(c.before, ensure_ascii=False) if c.before is not None else None,
                "after": json.dumps(c.after, ensure_ascii=False) if c.after is not None else None,
                "model_versions": json.dumps(c.model_versions),
            } for c in changes)
            update = {"status": REVIEWED, "reviewed_by": reviewer, "reviewed_at": now,
                      "revision": revision + 1, "split": split}
            if stratum is not None:
                update["stratum"] = stratum
            db["review_items"].update(document_id, update)
            if accept:
                self.release(document_id, reviewer)
        return SaveResult(document_id, revision + 1, split, changes)

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


# -- gold documents and diffs ---------------------------------------------------------------------


def to_gold(edited: Document, prediction: Document) -> Document:
    """The gold form of an edited document: text, boxes, labels and links, no scores or versions.

    Links naming missing segments are dropped. The models that read the document are kept in
    ``model_versions``.
    """
    pages = []
    for page in edited.pages:
        segments = [Segment(id=s.id, box=[(round(float(x), 2), round(float(y), 2)) for x, y in s.box],
                            text=s.text.strip(), label=s.label or None, words=list(s.words))
                    for s in page.segments]
        pages.append(Page(number=page.number, width=page.width, height=page.height, image=page.image,
                          segments=segments))
    ids = {s.id for p in pages for s in p.segments}
    seen: set[tuple[str, str]] = set()
    links = []
    for link in edited.links:
        pair = (link.key, link.value)
        if link.key in ids and link.value in ids and link.key != link.value and pair not in seen:
            seen.add(pair)
            links.append(Link(key=link.key, value=link.value))
    return Document(id=edited.id, source_name=edited.source_name or prediction.source_name,
                    sha256=edited.sha256 or prediction.sha256, created_at=prediction.created_at,
                    model_versions=dict(prediction.model_versions), pages=pages, links=links)


def _segment_versions(segment: Segment) -> dict[str, Any]:
    return {k: v for k, v in (("det", segment.det_version), ("rec", segment.rec_version),
                              ("ser", segment.ser_version)) if v}


def _box_changed(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> bool:
    return len(a) != len(b) or any(abs(p[0] - q[0]) > BOX_TOLERANCE or abs(p[1] - q[1]) > BOX_TOLERANCE
                                   for p, q in zip(a, b))


def diff_documents(before: Document, after: Document, from_gold: bool = False, revision: int = 0) -> list[Change]:
    """The changes from ``before`` to ``after``, one per field, segment or link."""
    def versions(segment: Segment | None = None, link: Link | None = None) -> dict[str, Any]:
        if from_gold:
            return {"gold_revision": revision}
        if segment is not None:
            return _segment_versions(segment) or dict(before.model_versions)
        if link is not None and link.re_version:
            return {"re": link.re_version}
        return dict(before.model_versions)

    changes: list[Change] = []
    old = {s.id: s for s in before.segments}
    new = {s.id: s for s in after.segments}
    for sid, segment in new.items():
        if sid not in old:
            changes.append(Change("add_segment", sid, None, _segment_summary(segment), {}))
            continue
        previous = old[sid]
        if previous.text.strip() != segment.text:
            changes.append(Change("text", sid, previous.text, segment.text, versions(previous)))
        if (previous.label or None) != (segment.label or None):
            changes.append(Change("label", sid, {"label": previous.label, "score": previous.label_score},
                                  {"label": segment.label}, versions(previous)))
        if _box_changed(previous.box, segment.box):
            changes.append(Change("box", sid, [list(p) for p in previous.box], [list(p) for p in segment.box],
                                  versions(previous)))
    for sid, segment in old.items():
        if sid not in new:
            changes.append(Change("delete_segment", sid, _segment_summary(segment), None, versions(segment)))
    old_links = {(link.key, link.value): link for link in before.links}
    new_links = {(link.key, link.value) for link in after.links}
    for pair in new_links - set(old_links):
        changes.append(Change("add_link", f"{pair[0]}->{pair[1]}", None, {"key": pair[0], "value": pair[1]}, {}))
    for pair in sorted(set(old_links) - new_links):
        link = old_links[pair]
        changes.append(Change("delete_link", f"{pair[0]}->{pair[1]}", link.to_dict(), None, versions(link=link)))
    return changes


def _segment_summary(segment: Segment) -> dict[str, Any]:
    return {"text": segment.text, "label": segment.label, "box": [list(p) for p in segment.box],
            "rec_score": segment.rec_score, "label_score": segment.label_score}


def new_segment_id(document: Document, page: int) -> str:
    """An unused id for a segment a reviewer adds on ``page`` (``p1-r0000``, ``p1-r0001``...)."""
    used = {s.id for s in document.segments}
    n = 0
    while f"p{page}-r{n:04d}" in used:
        n += 1
    return f"p{page}-r{n:04d}"


# -- exports in PaddleOCR's formats ---------------------------------------------------------------


def resolve_image(page: Page, data_dir: Path) -> Path | None:
    """The page image on disk (relative paths are under the data folder), or ``None``."""
    if not page.image:
        return None
    path = Path(page.image)
    path = path if path.is_absolute() else data_dir / path
    return path if path.is_file() else None


def _image_name(document: Document, page: Page, source: Path) -> str:
    return f"{document.id}-p{page.number:03d}{source.suffix.lower() or '.png'}"


def _ppocr_annotations(page: Page) -> list[dict[str, Any]]:
    return [{"transcription": s.text, "points": [[round(x), round(y)] for x, y in s.box], "difficult": False}
            for s in page.segments]


def export_det(documents: Iterable[Document], out_dir: Path, data_dir: Path) -> dict[str, int]:
    """PaddleOCR detection labels: ``out_dir/Label.txt`` (``images/<name>\\t[{transcription, points,
    difficult}]``) and the page images in ``out_dir/images/``."""
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    lines, skipped = [], 0
    for document in documents:
        for page in document.pages:
            source = resolve_image(page, data_dir)
            if source is None:
                skipped += 1
                continue
            name = _image_name(document, page, source)
            shutil.copy2(source, out_dir / "images" / name)
            lines.append(f"images/{name}\t{json.dumps(_ppocr_annotations(page), ensure_ascii=False)}")
    (out_dir / "Label.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return {"pages": len(lines), "pages_without_image": skipped}


def export_rec(documents: Iterable[Document], out_dir: Path, data_dir: Path) -> dict[str, int]:
    """PaddleOCR recognition labels: ``out_dir/rec_gt.txt`` (``crop_img/<name>\\t<text>``) and the
    cropped lines in ``out_dir/crop_img/``; segments without text are left out."""
    import cv2
    import numpy as np

    from service.ocr.recognizer import crop_quad  # imports Paddle: only when exporting

    (out_dir / "crop_img").mkdir(parents=True, exist_ok=True)
    lines, skipped = [], 0
    for document in documents:
        for page in document.pages:
            source = resolve_image(page, data_dir)
            if source is None:
                skipped += 1
                continue
            image = cv2.imread(str(source), cv2.IMREAD_COLOR)
            if image is None:
                skipped += 1
                continue
            for i, segment in enumerate(page.segments):
                text = segment.text.replace("\t", " ").replace("\n", " ").strip()
                if not text:
                    continue
                name = f"{document.id}-p{page.number:03d}_crop_{i}.jpg"
                cv2.imwrite(str(out_dir / "crop_img" / name), crop_quad(image, np.asarray(segment.box, dtype=np.float32)))
                lines.append(f"crop_img/{name}\t{text}")
    (out_dir / "rec_gt.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return {"crops": len(lines), "pages_without_image": skipped}


def export_kie(documents: list[Document], out_dir: Path, data_dir: Path, split: str,
               lang: str = "en") -> dict[str, int]:
    """KIE labels with ``label`` (not ``key_cls``): PPOCRLabel's ``kie/Label.txt`` (written by
    ``service.formats.write_ppocr_kie``, which links the page images beside it) and XFUND JSON
    ``xfund/<lang>.<split>.json`` with the page images copied to ``xfund/<lang>.<split>/``.

    These formats hold one image per record, so a document with a link between two pages is left
    out (counted in ``skipped_cross_page_links``).
    """
    from service import formats  # imported late so that det/rec exports never depend on it

    kie_docs, xfund_docs, skipped = [], [], 0
    image_dir = out_dir / "xfund" / f"{lang}.{split}"
    for document in documents:
        page_of = {s.id: page.number for page in document.pages for s in page.segments}
        if any(page_of.get(link.key) != page_of.get(link.value) for link in document.links):
            skipped += 1
            continue
        absolute, copied = [], []
        for page in document.pages:
            source = resolve_image(page, data_dir)
            name = None
            if source is not None:
                image_dir.mkdir(parents=True, exist_ok=True)
                name = _image_name(document, page, source)
                shutil.copy2(source, image_dir / name)
            absolute.append(Page(number=page.number, width=page.width, height=page.height,
                                 image=str(source) if source else None, segments=page.segments))
            copied.append(Page(number=page.number, width=page.width, height=page.height, image=name,
                               segments=page.segments))
        for pages, target in ((absolute, kie_docs), (copied, xfund_docs)):
            target.append(Document(id=document.id, source_name=document.source_name, sha256=document.sha256,
                                   created_at=document.created_at, model_versions=document.model_versions,
                                   pages=pages, links=document.links))
    formats.write_ppocr_kie(kie_docs, out_dir / "kie" / "Label.txt")
    xfund = formats.xfund_dict(xfund_docs, lang, split)
    (out_dir / "xfund").mkdir(parents=True, exist_ok=True)
    (out_dir / "xfund" / f"{lang}.{split}.json").write_text(
        json.dumps(xfund, ensure_ascii=False, indent=1), encoding="utf-8")
    return {"documents": len(kie_docs), "skipped_cross_page_links": skipped}


EXPORT_FORMATS = ("det", "rec", "kie")


def export_gold(service: ReviewService, out_dir: Path, splits: Iterable[str] = ("train", "holdout"),
                formats: Iterable[str] = EXPORT_FORMATS, sources: Iterable[str] | None = None,
                lang: str = "en") -> dict[str, Any]:
    """Write the gold set to ``out_dir/<split>/``: ``det/`` (Label.txt + images/), ``rec/``
    (rec_gt.txt + crop_img/), ``kie/`` (Label.txt) and ``xfund/``; returns counts per part."""
    wanted_sources = set(sources) if sources is not None else None
    rows = service.gold_rows()
    summary: dict[str, Any] = {}
    for split in splits:
        documents = [d for d, s, source, _ in rows
                     if s == split and (wanted_sources is None or source in wanted_sources)]
        if not documents:
            continue
        part: dict[str, Any] = {"documents": len(documents)}
        for fmt in formats:
            target = out_dir / split / fmt
            try:
                if fmt == "det":
                    part[fmt] = export_det(documents, target, service.data_dir)
                elif fmt == "rec":
                    part[fmt] = export_rec(documents, target, service.data_dir)
                elif fmt == "kie":
                    part[fmt] = export_kie(documents, out_dir / split, service.data_dir, split, lang)
                else:
                    raise ValueError(f"unknown export format {fmt!r}")
            except ImportError as exc:
                part[fmt] = {"error": f"not available yet: {exc}"}
        summary[split] = part
    return summary


# -- editing a working copy (used by the review app) ---------------------------------------------

LABEL_COLOURS = ("#7e57c2", "#1e88e5", "#43a047", "#8d6e63", "#fb8c00", "#00897b", "#d81b60", "#3949ab",
                 "#c0ca33", "#6d4c41")
UNLABELLED_COLOUR = "#9e9e9e"
KNOWN_COLOURS = {"header": "#7e57c2", "question": "#1e88e5", "answer": "#43a047", "other": "#8d6e63"}


def label_colours(labels: Iterable[str]) -> dict[str, str]:
    """A stable colour per label (FUNSD's four have fixed ones; others take the palette in order)."""
    colours: dict[str, str] = {}
    spare = [c for c in LABEL_COLOURS if c not in KNOWN_COLOURS.values()]
    for label in labels:
        if label in colours:
            continue
        colours[label] = KNOWN_COLOURS.get(label) or (spare.pop(0) if spare else UNLABELLED_COLOUR)
    return colours


def segment_is_low(segment: Segment, cfg: PaperloopConfig) -> bool:
    """Whether a segment's scores are below a review threshold (its own is what sends it to review)."""
    if segment.rec_score is not None and segment.rec_score < cfg.routing.min_rec_score:
        return True
    if segment.label_score is not None and segment.label_score < cfg.review.min_label_score:
        return True
    threshold = cfg.review.field_thresholds.get(segment.label or "")
    confidence = segment_confidence(segment)
    return threshold is not None and confidence is not None and confidence < threshold


def page_of(document: Document, number: int) -> Page:
    """The page with this 1-based number."""
    for page in document.pages:
        if page.number == number:
            return page
    raise KeyError(number)


def update_segment(document: Document, segment_id: str, **fields: Any) -> bool:
    """Set ``text`` / ``label`` / ``box`` of a segment (``box`` as x0, y0, x1, y1); whether it changed.

    A changed text or box drops the segment's words, which no longer match it.
    """
    segment = document.segment(segment_id)
    changed = False
    if "text" in fields and fields["text"] is not None and fields["text"] != segment.text:
        segment.text, changed = str(fields["text"]), True
        segment.words = []
    if "label" in fields and (fields["label"] or None) != segment.label:
        segment.label, changed = fields["label"] or None, True
    if fields.get("box") is not None:
        x0, y0, x1, y1 = (float(v) for v in fields["box"])
        quad = [(min(x0, x1), min(y0, y1)), (max(x0, x1), min(y0, y1)), (max(x0, x1), max(y0, y1)),
                (min(x0, x1), max(y0, y1))]
        if _box_changed(segment.box, quad):
            segment.box, changed = quad, True
            segment.words = []
    return changed


def add_segment(document: Document, page_number: int, box: Iterable[float], text: str = "",
                label: str | None = None) -> str:
    """Add a reviewer's box to a page; returns its new id."""
    page = page_of(document, page_number)
    segment_id = new_segment_id(document, page_number)
    x0, y0, x1, y1 = (float(v) for v in box)
    page.segments.append(Segment(id=segment_id, box=[(x0, y0), (x1, y0), (x1, y1), (x0, y1)], text=text,
                                 label=label or None))
    return segment_id


def delete_segment(document: Document, segment_id: str) -> None:
    """Remove a segment and the links that name it."""
    for page in document.pages:
        page.segments = [s for s in page.segments if s.id != segment_id]
    document.links = [link for link in document.links if segment_id not in (link.key, link.value)]


def add_link(document: Document, key: str, value: str) -> bool:
    """Add a key → value link between two existing segments; whether it was new."""
    document.segment(key), document.segment(value)
    if key == value or any(link.key == key and link.value == value for link in document.links):
        return False
    document.links.append(Link(key=key, value=value))
    return True


def remove_link(document: Document, key: str, value: str) -> bool:
    """Remove a key → value link; whether there was one."""
    before = len(document.links)
    document.links = [link for link in document.links if (link.key, link.value) != (key, value)]
    return len(document.links) != before


def apply_box_event(document: Document, page_number: int, event: Mapping[str, Any]) -> tuple[bool, str | None]:
    """Apply one box-editor event (select / move / resize / add / delete) to a working copy.

    Returns (whether the document changed, the segment now selected).
    """
    action, segment_id, box = event.get("action"), event.get("id"), event.get("box")
    known = {s.id for s in page_of(document, page_number).segments}
    if action == "select":
        return False, segment_id if segment_id in known else None
    if action in ("move", "resize") and segment_id in known and box:
        return update_segment(document, segment_id, box=box), segment_id
    if action == "add" and box:
        return True, add_segment(document, page_number, box)
    if action == "delete" and segment_id in known:
        delete_segment(document, segment_id)
        return True, None
    return False, segment_id if segment_id in known else None


def apply_table_edits(document: Document, ids: list[str], edits: Mapping[str, Any], no_label: str = "(none)") -> bool:
    """Apply the edits of the segments table (Streamlit's ``edited_rows``: row → {column: value}) to a
    working copy; ``ids`` are the segment ids of the rows. Returns whether anything changed."""
    changed = False
    for row, change in edits.get("edited_rows", {}).items():
        segment_id = ids[int(row)]
        if change.get("delete"):
            delete_segment(document, segment_id)
            changed = True
            continue
        fields: dict[str, Any] = {}
        if "text" in change:
            fields["text"] = change["text"] or ""
        if "label" in change:
            fields["label"] = None if change["label"] in (None, no_label) else change["label"]
        changed |= update_segment(document, segment_id, **fields)
    return changed


# -- model versions (Models page) -----------------------------------------------------------------


def model_versions(registry: ModelRegistry) -> list[dict[str, Any]]:
    """Every version of every task, oldest first, with its card and whether it is in service."""
    from service.registry import TASKS

    rows = []
    for task in TASKS:
        try:
            current = registry.current_version(task)
            versions = registry.versions(task)
        except (RegistryError, OSError, ValueError):
            continue
        for version in versions:
            card = registry.card(task, version)
            rows.append({"task": task, "version": version, "created_at": card.created_at, "parent": card.parent,
                         "model_name": card.model_name, "source": card.source, "data_counts": card.data_counts,
                         "metrics": card.metrics, "in_service": version == current})
    return rows


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def hmean_history(registry: ModelRegistry) -> list[dict[str, Any]]:
    """Every evaluation Hmean recorded in a card (any metric whose name ends in ``hmean``, at any
    depth, e.g. ``hmean`` or ``holdout.hmean``), one row per version and metric."""
    rows = []
    for version in model_versions(registry):
        for metric, value in _flatten(version["metrics"]).items():
            if metric.lower().split(".")[-1].endswith("hmean") and isinstance(value, (int, float)):
                rows.append({"task": version["task"], "version": version["version"], "metric": metric,
                             "hmean": float(value), "created_at": version["created_at"],
                             "series": f"{version['task']} · {metric}"})
    return rows
