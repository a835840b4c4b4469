"""KIE metrics: entity-level SER precision/recall/Hmean, RE link Hmean, calibration error."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from service.evaluation import DetectionCounts

IGNORED_LABEL = "other"  # FUNSD convention (seqeval over B-/I- tags): "other" is not an entity


# Precision / recall / Hmean from (correct, predicted, gold) counts: the same arithmetic as detection.
PRF = DetectionCounts


def ser_scores(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str],
               ignored: str | None = IGNORED_LABEL) -> dict[str, PRF]:
    """Per-label and overall (micro, without ``ignored``) scores for aligned entity labels."""
    if len(gold) != len(predicted):
        raise ValueError("gold and predicted must be aligned")
    result: dict[str, PRF] = {}
    for label in labels:
        tp = sum(g == p == label for g, p in zip(gold, predicted))
        result[label] = PRF(tp, sum(p == label for p in predicted), sum(g == label for g in gold))
    counted = [label for label in labels if label != ignored]
    result["overall"] = sum((result[c] for c in counted), PRF(0, 0, 0))
    return result


def link_scores(gold: Iterable[tuple[str, str]], predicted: Iterable[tuple[str, str]]) -> PRF:
    """A predicted (key, value) link counts when both ends and the direction are right."""
    gold_set, predicted_set = set(gold), set(predicted)
    return PRF(len(gold_set & predicted_set), len(predicted_set), len(gold_set))


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width confidence bins."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidences.size == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidences, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(confidences[in_bin].mean() - correct[in_bin].mean())
    return float(ece)
