"""Straight-through thresholds: field confidences cut where accepted documents meet the target accuracy.

On held-out documents, each field's values are ranked by confidence; the field's threshold is the
lowest confidence at which the values at or above it are still right at least
``routing.target_accuracy`` of the time (selective prediction on the holdout). A document goes
straight through when every required field has a value at or above its threshold. The thresholds
are kept on the SER version's card (``metrics.fields``), since they hold for that version only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.document import Document, FieldValue
from service.fields.schema import FieldsConfig
from service.fields.values import fold, normalize

UNREACHABLE = 1.0  # the threshold of a field whose values never reach the target accuracy


@dataclass(frozen=True)
class Outcome:
    """One document's value of one field: its confidence (``None``: not found) and whether it is right."""

    name: str
    confidence: float | None
    correct: bool


def is_correct(predicted: FieldValue | None, gold: FieldValue | None, cfg: FieldsConfig) -> bool:
    """Whether a predicted value equals the gold one (normalized values, text folded)."""
    if predicted is None or gold is None or predicted.value is None:
        return False
    spec = cfg.get(gold.name)
    if spec is None or spec.type == "text" or gold.value is None:
        return fold(predicted.value) == fold(gold.value or gold.raw)
    return predicted.value == (gold.value or normalize(spec, gold.raw, cfg))


def outcomes(predicted: Document, gold: Document, cfg: FieldsConfig) -> list[Outcome]:
    """Per field of the schema with a gold value: the predicted value's confidence and correctness."""
    result = []
    for name in cfg.names:
        truth = next((f for f in gold.fields if f.name == name), None)
        if truth is None:
            continue
        guess = next((f for f in predicted.fields if f.name == name), None)
        result.append(Outcome(name, guess.confidence if guess else None, is_correct(guess, truth, cfg)))
    return result


def field_threshold(values: Sequence[Outcome], target: float) -> float:
    """The lowest confidence at which the values at or above it are right at least ``target`` of the time."""
    ranked = sorted((o for o in values if o.confidence is not None), key=lambda o: -o.confidence)
    best, right = UNREACHABLE, 0
    for k, outcome in enumerate(ranked, start=1):
        right += outcome.correct
        tied_below = k < len(ranked) and ranked[k].confidence == outcome.confidence
        if not tied_below and right / k >= target:
            best = outcome.confidence
    return best


def thresholds(documents: Sequence[Sequence[Outcome]], target: float) -> dict[str, float]:
    """Each field's threshold from the holdout documents' outcomes."""
    names = sorted({o.name for doc in documents for o in doc})
    return {name: field_threshold([o for doc in documents for o in doc if o.name == name], target) for name in names}


def passes(outcome: Outcome, threshold: float | None) -> bool:
    """Whether a field's value goes through without review."""
    return (threshold is not None and outcome.confidence is not None and threshold < UNREACHABLE
            and outcome.confidence >= threshold)


def straight_through(documents: Sequence[Sequence[Outcome]], cut: dict[str, float],
                     required: Sequence[str]) -> dict[str, Any]:
    """Share of documents whose required fields all pass, and the field accuracy of those documents."""
    accepted = [doc for doc in documents if all(passes(o, cut.get(o.name)) for o in doc if o.name in required)]
    values = [o for doc in accepted for o in doc]
    return {"documents": len(documents), "accepted": len(accepted),
            "share": len(accepted) / len(documents) if documents else 0.0,
            "field_accuracy": sum(o.correct for o in values) / len(values) if values else None,
            "document_accuracy": (sum(all(o.correct for o in doc) for doc in accepted) / len(accepted)
                                  if accepted else None)}


def card_thresholds(card_metrics: dict[str, Any]) -> dict[str, float]:
    """The field thresholds recorded on a SER card (empty when never calibrated)."""
    return dict((card_metrics.get("fields") or {}).get("thresholds") or {})
