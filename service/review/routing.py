"""Routing a processed document to review, and how uncertain its results are.

* :func:`decide` says whether a processed document goes to review and why: a recognition score
  below ``routing.min_rec_score``, a SER label probability below ``review.min_label_score``, an
  RE link probability below ``review.min_link_score``, a labelled field below its own threshold
  (``review.field_thresholds``), no text at all, or a random audit sample of the documents that
  passed (``review.audit_percent``, drawn from the content hash so it is reproducible). With a
  field schema (``fields``), the document's field values decide instead (a required field missing
  or below its threshold; thresholds from :mod:`service.fields.calibration`).
  :func:`segment_is_low` applies the same thresholds to one segment (for the review app).
* :func:`document_uncertainty` is the mean segment uncertainty (entropy, margin or least
  confidence of each segment's scores, so long documents are not favoured for their length); the
  review queue is ordered by it.

A :class:`Decision` is the routing record: it is stored with the result (``documents.routing`` and
the output JSON's ``routing`` key, see :meth:`Decision.to_dict`), and the review queue reads it back
(:meth:`Decision.from_dict`) instead of deciding again under a configuration that may have changed.
Each :class:`ReviewReason` names what it is about: the segments, the links (key, value) or the field
below which threshold.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Collection

from service.config import PaperloopConfig, ReviewConfig
from service.document import Document, Segment

UNCERTAINTY_STRATEGIES = ("entropy", "margin", "least_confidence")
# The scores a document's uncertainty reads unless told otherwise (review.uncertainty_from lists the
# others: "group", and "link_choice", RE's decision for every segment, which sees missed links).
DEFAULT_UNCERTAINTY_SOURCES = ("rec", "label", "link")


# -- routing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewReason:
    """One reason a document is sent to review, and what it is about."""

    kind: str  # no_text | rec | group | ser | re | field | audit | pipeline | manual
    detail: str
    count: int = 0
    lowest: float | None = None
    threshold: float | None = None
    field: str | None = None  # the label of a ``field`` reason
    segments: tuple[str, ...] = ()  # ids of the segments below the threshold
    links: tuple[tuple[str, str], ...] = ()  # (key, value) of the links below the threshold

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"kind": self.kind, "detail": self.detail, "count": self.count, "lowest": self.lowest,
                "threshold": self.threshold, "field": self.field, "segments": list(self.segments),
                "links": [list(link) for link in self.links]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReviewReason":
        """Inverse of :meth:`to_dict` (keys missing from older records take their defaults)."""
        return cls(kind=str(data["kind"]), detail=str(data.get("detail") or ""), count=int(data.get("count") or 0),
                   lowest=_optional_float(data.get("lowest")), threshold=_optional_float(data.get("threshold")),
                   field=data.get("field"), segments=tuple(str(s) for s in data.get("segments") or ()),
                   links=tuple((str(k), str(v)) for k, v in data.get("links") or ()))


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

    def to_dict(self) -> dict[str, Any]:
        """The routing record, JSON-ready: ``needs_review``, ``audit``, ``uncertainty``, ``reasons``."""
        return {"needs_review": self.needs_review, "audit": self.audit, "uncertainty": self.uncertainty,
                "reasons": [r.to_dict() for r in self.reasons]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Decision":
        """Inverse of :meth:`to_dict`."""
        return cls(needs_review=bool(data["needs_review"]),
                   reasons=tuple(ReviewReason.from_dict(r) for r in data.get("reasons") or ()),
                   audit=bool(data.get("audit")), uncertainty=float(data.get("uncertainty") or 0.0))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


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


def _low(values: list[tuple[Any, float | None]], threshold: float) -> tuple[list[Any], float | None]:
    """The items whose value is below ``threshold``, and the lowest such value."""
    low = [(item, v) for item, v in values if v is not None and v < threshold]
    return [item for item, _ in low], (min(v for _, v in low) if low else None)


def _segment_reason(kind: str, low: list[Segment], lowest: float | None, threshold: float, detail: str,
                    field: str | None = None) -> ReviewReason:
    return ReviewReason(kind, detail, len(low), lowest, threshold, field, tuple(s.id for s in low))


def _score_reasons(document: Document, cfg: PaperloopConfig) -> list[ReviewReason]:
    """Reasons from the recognition, grouping, label and link scores (rec, group, ser, re)."""
    segments, reasons = document.segments, []
    threshold = cfg.routing.min_rec_score
    low, lowest = _low([(s, s.rec_score) for s in segments], threshold)
    if low:
        reasons.append(_segment_reason(
            "rec", low, lowest, threshold, f"{len(low)} of {len(segments)} segments read with confidence below "
                                           f"{threshold:.2f} (lowest {lowest:.2f})"))
    threshold = cfg.review.min_label_score
    low, lowest = _low([(s, s.label_score) for s in segments], threshold)
    if low:
        reasons.append(_segment_reason(
            "ser", low, lowest, threshold,
            f"{len(low)} segment labels with probability below {threshold:.2f} (lowest {lowest:.2f})"))
    threshold = cfg.review.min_group_score
    low, lowest = _low([(s, s.group_score) for s in segments], threshold)
    if low:
        reasons.append(_segment_reason(
            "group", low, lowest, threshold,
            f"{len(low)} entities grouped with probability below {threshold:.2f} (lowest {lowest:.2f})"))
    threshold = cfg.review.min_link_score
    links, lowest = _low([(link, link.score) for link in document.links], threshold)
    if links:
        reasons.append(ReviewReason(
            "re", f"{len(links)} of {len(document.links)} links with probability below {threshold:.2f} "
                  f"(lowest {lowest:.2f})", len(links), lowest, threshold,
            links=tuple((link.key, link.value) for link in links)))
    return reasons


def _field_reasons(document: Document, cfg: PaperloopConfig) -> list[ReviewReason]:
    """Reasons from the per-field thresholds (``review.field_thresholds``)."""
    reasons = []
    for label, threshold in sorted(cfg.review.field_thresholds.items()):
        low, lowest = _low([(s, segment_confidence(s)) for s in document.segments if s.label == label], threshold)
        if low:
            reasons.append(_segment_reason(
                "field", low, lowest, threshold,
                f"field {label!r}: {len(low)} below {threshold:.2f} (lowest {lowest:.2f})", field=label))
    return reasons


def _schema_field_reasons(document: Document, cfg: PaperloopConfig) -> list[ReviewReason]:
    """Reasons from the field schema (``fields``): a required field not found, or found with a
    confidence below its threshold (calibrated on the holdout for ``routing.target_accuracy``)."""
    reasons = []
    for spec in (f for f in cfg.fields.fields if f.required):
        values = [v for v in document.fields if v.name == spec.name]
        if not values:
            reasons.append(ReviewReason("field", f"field {spec.name!r}: not found", field=spec.name))
            continue
        low = [v for v in values if v.threshold is None or v.confidence is None or v.threshold >= 1.0
               or v.confidence < v.threshold]
        if low:
            lowest = min((v.confidence for v in low if v.confidence is not None), default=None)
            threshold = low[0].threshold
            why = ("no calibrated threshold" if threshold is None
                   else f"confidence {lowest if lowest is not None else 0:.2f} below {threshold:.2f}")
            reasons.append(ReviewReason("field", f"field {spec.name!r}: {why}", len(low), lowest, threshold,
                                        spec.name, tuple(s for v in low for s in v.segments)))
    return reasons


def decide(document: Document, cfg: PaperloopConfig) -> Decision:
    """Route a processed document: review (with the reasons) or done; see the module docstring.

    With a field schema (``fields``), the fields decide instead of every segment's scores: a
    document whose required fields are all at or above their thresholds goes straight through.
    """
    review = cfg.review
    reasons: list[ReviewReason] = []
    if not document.segments:
        reasons.append(ReviewReason("no_text", "no text was found"))
    if cfg.fields.fields:
        reasons += _schema_field_reasons(document, cfg)
    else:
        reasons += _score_reasons(document, cfg) + _field_reasons(document, cfg)
    audit = not reasons and is_audit_sample(document, review.audit_percent)
    if audit:
        reasons.append(ReviewReason("audit", f"audit sample ({review.audit_percent:g}% of documents that passed)"))
    return Decision(bool(reasons), tuple(reasons), audit, review_uncertainty(document, review))


def segment_is_low(segment: Segment, cfg: PaperloopConfig) -> bool:
    """Whether a segment's scores are below a review threshold (its own is what sends it to review)."""
    if segment.rec_score is not None and segment.rec_score < cfg.routing.min_rec_score:
        return True
    if segment.label_score is not None and segment.label_score < cfg.review.min_label_score:
        return True
    if segment.group_score is not None and segment.group_score < cfg.review.min_group_score:
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


def segment_uncertainty(segment: Segment, strategy: str = "entropy",
                        sources: Collection[str] = DEFAULT_UNCERTAINTY_SOURCES) -> float | None:
    """The largest uncertainty of a segment's scores named in ``sources`` (recognition, label,
    grouping, RE's decision about it); ``None`` without such scores."""
    scores = {"rec": segment.rec_score, "label": segment.label_score, "group": segment.group_score,
              "link_choice": segment.link_score}
    values = [score_uncertainty(p, strategy) for name, p in scores.items() if name in sources and p is not None]
    return max(values) if values else None


def document_uncertainty(document: Document, strategy: str = "entropy",
                         sources: Collection[str] = DEFAULT_UNCERTAINTY_SOURCES, aggregate: str = "mean") -> float:
    """Uncertainty over the scored segments and (with ``link`` in ``sources``) links: their mean
    (a long document is not favoured for its length) or, with ``aggregate="sum"``, their sum (the
    expected number of corrections, which grows with the document).

    A document with no text at all counts as fully uncertain.
    """
    values = [u for s in document.segments if (u := segment_uncertainty(s, strategy, sources)) is not None]
    if "link" in sources:
        values += [score_uncertainty(link.score, strategy) for link in document.links if link.score is not None]
    if not values:
        return 1.0 if not document.segments else 0.0
    return round(sum(values) / (1 if aggregate == "sum" else len(values)), 6)


def review_uncertainty(document: Document, review: ReviewConfig) -> float:
    """A document's uncertainty as the review queue orders by it (``review.uncertainty``,
    ``review.uncertainty_from``, ``review.uncertainty_aggregate``)."""
    return document_uncertainty(document, review.uncertainty, review.uncertainty_from, review.uncertainty_aggregate)
