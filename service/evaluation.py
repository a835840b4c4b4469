"""OCR evaluation: box IoU, one-to-one matching, detection P/R/Hmean and recognition accuracy.

Pure functions over plain data, so that benchmarks and the promotion gate score engines the same
way. Predictions are 4-point quads (page pixels); ground truth is axis-aligned ``[x0, y0, x1, y1]``
boxes. A prediction and a ground-truth line match when their polygon IoU is at least 0.5, each one
used at most once, pairs taken highest IoU first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import shapely

Box = tuple[float, float, float, float]
DEFAULT_IOU_THRESHOLD = 0.5


@dataclass(frozen=True)
class Match:
    """A predicted line paired with a ground-truth line."""

    pred_index: int
    gt_index: int
    iou: float


@dataclass(frozen=True)
class DetectionCounts:
    """Matched, predicted and ground-truth line counts, with micro-averaged scores.

    A score whose denominator is zero is 0.0.
    """

    matched: int
    predicted: int
    ground_truth: int

    @property
    def precision(self) -> float:
        """Matched / predicted."""
        return self.matched / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        """Matched / ground truth."""
        return self.matched / self.ground_truth if self.ground_truth else 0.0

    @property
    def hmean(self) -> float:
        """Harmonic mean of precision and recall (F1)."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, float | int]:
        """Counts and ratios, rounded for reports."""
        return {"precision": round(self.precision, 4), "recall": round(self.recall, 4),
                "hmean": round(self.hmean, 4), "tp": self.matched, "predicted": self.predicted,
                "gold": self.ground_truth}

    def __add__(self, other: DetectionCounts) -> DetectionCounts:
        return DetectionCounts(
            self.matched + other.matched,
            self.predicted + other.predicted,
            self.ground_truth + other.ground_truth,
        )


@dataclass(frozen=True)
class RecognitionScores:
    """Text accuracy over matched lines (both 0.0 when there are no lines)."""

    lines: int
    char_accuracy: float
    exact_match: float


@dataclass(frozen=True)
class PageEvaluation:
    """One page: its matches, detection counts and (gt text, predicted text) of matched lines."""

    matches: tuple[Match, ...]
    counts: DetectionCounts
    text_pairs: tuple[tuple[str, str], ...]


def quad_bounding_box(points: np.ndarray | Sequence[Sequence[float]]) -> Box:
    """Axis-aligned bounding box of a polygon given as (N, 2) points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two axis-aligned boxes (0.0 when the union is empty)."""
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _quad_polygons(quads: Sequence[np.ndarray]) -> np.ndarray:
    """Shapely polygons of quads; an invalid (self-crossing) quad becomes its convex hull."""
    polygons = [shapely.Polygon(np.asarray(q, dtype=np.float64).reshape(-1, 2)) for q in quads]
    return np.array([p if p.is_valid else p.convex_hull for p in polygons], dtype=object)


def iou_matrix(pred_quads: Sequence[np.ndarray], gt_boxes: Sequence[Box]) -> np.ndarray:
    """Polygon IoU of every predicted quad (rows) with every ground-truth box (columns)."""
    if not len(pred_quads) or not len(gt_boxes):
        return np.zeros((len(pred_quads), len(gt_boxes)))
    preds = _quad_polygons(pred_quads)[:, np.newaxis]
    gts = shapely.box(*np.asarray(gt_boxes, dtype=np.float64).T)[np.newaxis, :]
    inter = shapely.area(shapely.intersection(preds, gts))
    union = shapely.area(preds) + shapely.area(gts) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def greedy_match(ious: np.ndarray, threshold: float = DEFAULT_IOU_THRESHOLD) -> list[Match]:
    """One-to-one matching on an IoU matrix (pred rows × gt columns), highest IoU first.

    Only pairs with IoU >= ``threshold`` are considered; ties go to the lower indices.
    """
    rows, cols = np.nonzero(ious >= threshold)
    candidates = sorted(zip(rows.tolist(), cols.tolist()), key=lambda rc: (-ious[rc], rc))
    used_pred: set[int] = set()
    used_gt: set[int] = set()
    matches = []
    for pred, gt in candidates:
        if pred in used_pred or gt in used_gt:
            continue
        used_pred.add(pred)
        used_gt.add(gt)
        matches.append(Match(pred_index=pred, gt_index=gt, iou=float(ious[pred, gt])))
    return matches


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions each cost 1) between two strings."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def normalized_edit_distance(gt: str, pred: str) -> float:
    """Levenshtein distance divided by the longer length (0.0 for two empty strings)."""
    longest = max(len(gt), len(pred))
    return levenshtein(gt, pred) / longest if longest else 0.0


def char_accuracy(gt: str, pred: str) -> float:
    """1 − normalized edit distance: 1.0 for identical strings, 0.0 for nothing in common."""
    return 1.0 - normalized_edit_distance(gt, pred)


def recognition_scores(text_pairs: Iterable[tuple[str, str]]) -> RecognitionScores:
    """Mean character accuracy and exact-match rate over (gt text, predicted text) pairs."""
    pairs = list(text_pairs)
    if not pairs:
        return RecognitionScores(lines=0, char_accuracy=0.0, exact_match=0.0)
    accuracy = sum(char_accuracy(gt, pred) for gt, pred in pairs) / len(pairs)
    exact = sum(gt == pred for gt, pred in pairs) / len(pairs)
    return RecognitionScores(lines=len(pairs), char_accuracy=accuracy, exact_match=exact)


def evaluate_page(
    pred_quads: Sequence[np.ndarray],
    pred_texts: Sequence[str],
    gt_boxes: Sequence[Box],
    gt_texts: Sequence[str],
    threshold: float = DEFAULT_IOU_THRESHOLD,
) -> PageEvaluation:
    """Match one page's predictions to its ground truth and collect counts and text pairs."""
    if len(pred_quads) != len(pred_texts) or len(gt_boxes) != len(gt_texts):
        raise ValueError("every box needs exactly one text")
    matches = greedy_match(iou_matrix(pred_quads, gt_boxes), threshold)
    counts = DetectionCounts(matched=len(matches), predicted=len(pred_quads), ground_truth=len(gt_boxes))
    pairs = tuple((gt_texts[m.gt_index], pred_texts[m.pred_index]) for m in matches)
    return PageEvaluation(matches=tuple(matches), counts=counts, text_pairs=pairs)


def detection_scores(pages: Iterable[PageEvaluation]) -> DetectionCounts:
    """Micro-averaged detection counts over pages (sum the counts, then take the ratios)."""
    return sum((page.counts for page in pages), DetectionCounts(0, 0, 0))


def recognition_over_pages(pages: Iterable[PageEvaluation]) -> RecognitionScores:
    """Recognition scores over the matched lines of all pages."""
    return recognition_scores(pair for page in pages for pair in page.text_pairs)
