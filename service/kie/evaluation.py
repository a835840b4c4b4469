"""Evaluating SER / RE: on ground-truth segments, and end to end on our own OCR lines."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.document import Document
from service.evaluation import char_accuracy, greedy_match, iou_matrix
from service.kie.data import split_into_lines
from service.kie.inference import KieModels
from service.kie.metrics import PRF, expected_calibration_error, link_scores, ser_scores


def unlabelled_copy(document: Document) -> Document:
    """A copy of a gold document with its labels and links removed (the model's input)."""
    copied = copy.deepcopy(document)
    copied.links = []
    for segment in copied.segments:
        segment.label, segment.label_score = None, None
    return copied


def evaluate_gold(kie: KieModels, documents: Sequence[Document], labels: Sequence[str],
                  other_label: str) -> dict[str, Any]:
    """Run SER then RE on gold documents' own segments and score against the gold.

    RE sees SER's predicted labels, as in service. Entity-level SER scores leave out
    ``other_label``; a link counts when both ends and the direction are right. ECE of RE is the
    calibration of the kept links' scores (is a link kept at 0.9 right 90% of the time?).
    """
    gold_labels, predicted_labels, confidences = [], [], []
    gold_links: list[tuple[str, str]] = []
    kept: list[tuple[tuple[str, str], float]] = []
    for document in documents:
        predicted = kie.predict(unlabelled_copy(document))
        by_id = {s.id: s for s in predicted.segments}
        for segment in document.segments:
            if segment.label in labels:
                guess = by_id[segment.id]
                gold_labels.append(segment.label)
                predicted_labels.append(guess.label)
                confidences.append(guess.label_score or 0.0)
        gold_links.extend((f"{document.id}/{l.key}", f"{document.id}/{l.value}") for l in document.links)
        kept.extend(((f"{document.id}/{l.key}", f"{document.id}/{l.value}"), l.score or 0.0) for l in predicted.links)
    correct = np.array([g == p for g, p in zip(gold_labels, predicted_labels)])
    ser = ser_scores(gold_labels, predicted_labels, labels, ignored=other_label)
    re = link_scores(gold_links, [pair for pair, _ in kept])
    gold_set = set(gold_links)
    re_ece = expected_calibration_error(np.array([s for _, s in kept]), np.array([p in gold_set for p, _ in kept]))
    return {
        "ser": {"scores": {k: v.as_dict() for k, v in ser.items()}, "hmean": ser["overall"].hmean,
                "ece": expected_calibration_error(np.array(confidences), correct)},
        "re": {"scores": {"links": re.as_dict()}, "hmean": re.hmean, "ece": re_ece},
    }


def _squeeze(text: str) -> str:
    return "".join(text.split())


def evaluate_end_to_end(predicted: Sequence[Document], gold: Sequence[Document], labels: Sequence[str],
                        other_label: str, min_char_accuracy: float = 0.8, iou: float = 0.5) -> dict[str, Any]:
    """SER and RE scores when the segments are our own OCR lines.

    Gold entities are split into their lines. An OCR line matches a gold line by box overlap
    (IoU ≥ ``iou``, one to one) and counts as right when it has the gold label and reads the
    line with character accuracy ≥ ``min_char_accuracy`` (spaces ignored: the base recognizer's
    known weakness, measured by the OCR benchmark). A gold link counts when a predicted link
    joins lines matched to its key and value entities.
    """
    counts = {label: [0, 0, 0] for label in labels}  # tp, predicted, gold
    gold_links: list[tuple[str, str]] = []
    predicted_links: list[tuple[str, str]] = []
    for doc_pred, doc_gold in zip(predicted, gold):
        gold_lines = split_into_lines(doc_gold).segments
        lines = doc_pred.segments
        matched = {}
        if gold_lines and lines:
            ious = iou_matrix([np.array(s.box) for s in lines], [g.bbox for g in gold_lines])
            matched = {lines[m.pred_index].id: gold_lines[m.gt_index] for m in greedy_match(ious, iou)}
        for line in lines:
            if line.label in counts:
                counts[line.label][1] += 1
            truth = matched.get(line.id)
            if truth is not None and truth.label == line.label and line.label in counts and \
                    char_accuracy(_squeeze(truth.text), _squeeze(line.text)) >= min_char_accuracy:
                counts[line.label][0] += 1
        for line in gold_lines:
            if line.label in counts:
                counts[line.label][2] += 1
        entity_of = {pid: g.id.split(".l")[0] for pid, g in matched.items()}
        gold_links += [(f"{doc_gold.id}/{l.key}", f"{doc_gold.id}/{l.value}") for l in doc_gold.links]
        predicted_links += [(f"{doc_gold.id}/{entity_of.get(l.key, '?' + l.key)}",
                             f"{doc_gold.id}/{entity_of.get(l.value, '?' + l.value)}") for l in doc_pred.links]
    scores = {label: PRF(*c) for label, c in counts.items()}
    counted = [label for label in labels if label != other_label]
    scores["overall"] = PRF(*(sum(counts[c][k] for c in counted) for k in range(3)))
    re = link_scores(gold_links, predicted_links)
    return {"ser": {"scores": {k: v.as_dict() for k, v in scores.items()}, "hmean": scores["overall"].hmean},
            "re": {"scores": {"links": re.as_dict()}, "hmean": re.hmean}}
