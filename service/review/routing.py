"""Routing a processed document to review, and how uncertain its results are.

* :func:`decide` says whether a processed document goes to review and why: a recognition score
  below ``routing.min_rec_score``, a SER label probability below ``review.min_label_score``, an
  RE link probability below ``review.min_link_score``, a labelled field below its own threshold
  (``review.field_thresholds``), no text at all, or a random audit sample of the documents that
  passed (``review.audit_percent``, drawn from the content hash so it is reproducible).
  :func:`segment_is_low` applies the same thresholds to one segment (for the review app).
* :func:`document_uncertainty` is the mean segment uncertainty (entropy, margin or least
  confidence of each segment's scores, so long documents are not favoured for their length); the
  review queue is ordered by it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from service.config import PaperloopConfig
from service.document import Document, Segment

UNCERTAINTY_STRATEGIES = ("entropy", "margin", "least_confidence")


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


def segment_is_low(segment: Segment, cfg: PaperloopConfig) -> bool:
    """Whether a segment's scores are below a review threshold (its own is what sends it to review)."""
    if segment.rec_score is not None and segment.rec_score < cfg.routing.min_rec_score:
        return True
    if segment.label_score is not None and segment.label_score < cfg.review.min_label_score:
        return True
    threshold = cfg.review.field_thresholds.get(segment.label or "")
    confidence = segment_confidence(segment)
    return threshold is not None and confidence is not None and confidence < threshold


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
