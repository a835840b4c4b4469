"""Text detection: DB (differentiable binarization) pre-process, model and post-process."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pyclipper

from service.config import DetConfig
from service.ocr.engine import Predictor

# ImageNet statistics the PP-OCR detectors were trained with (images in BGR order, scaled to 0..1).
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class DetectedBox:
    """A text region as four (x, y) points clockwise from top-left, with its mean probability."""

    points: np.ndarray  # shape (4, 2), float32, in page pixels
    score: float


def resize_for_detection(image: np.ndarray, cfg: DetConfig) -> tuple[np.ndarray, float, float]:
    """Resize so both sides are multiples of 32 within the configured limits.

    Returns the resized image and the (height, width) ratios new/old.
    """
    h, w = image.shape[:2]
    if cfg.limit_type == "max":
        ratio = min(1.0, cfg.limit_side_len / max(h, w))
    else:
        ratio = max(1.0, cfg.limit_side_len / min(h, w))
    if max(h, w) * ratio > cfg.max_side_limit:
        ratio = cfg.max_side_limit / max(h, w)
    new_h = max(32, int(round(h * ratio / 32)) * 32)
    new_w = max(32, int(round(w * ratio / 32)) * 32)
    resized = cv2.resize(image, (new_w, new_h)) if (new_h, new_w) != (h, w) else image
    return resized, new_h / h, new_w / w


def to_detector_input(image_bgr: np.ndarray) -> np.ndarray:
    """Normalize an HWC uint8 BGR image into a 1×3×H×W float32 batch."""
    x = image_bgr.astype(np.float32) * (1.0 / 255.0)
    x -= _MEAN
    x /= _STD
    return x.transpose(2, 0, 1)[np.newaxis]


def _ordered_min_box(contour: np.ndarray) -> tuple[np.ndarray, float]:
    """Minimum-area rectangle of a contour, points ordered TL, TR, BR, BL, and its short side."""
    rect = cv2.minAreaRect(contour)
    points = sorted(cv2.boxPoints(rect).tolist(), key=lambda p: p[0])
    left = sorted(points[:2], key=lambda p: p[1])
    right = sorted(points[2:], key=lambda p: p[1])
    ordered = np.array([left[0], right[0], right[1], left[1]], dtype=np.float32)
    return ordered, min(rect[1])


def _mean_probability(prob: np.ndarray, box: np.ndarray) -> float:
    """Mean of the probability map inside a box, computed on the box's bounding window."""
    h, w = prob.shape
    xmin = int(np.clip(np.floor(box[:, 0].min()), 0, w - 1))
    xmax = int(np.clip(np.ceil(box[:, 0].max()), 0, w - 1))
    ymin = int(np.clip(np.floor(box[:, 1].min()), 0, h - 1))
    ymax = int(np.clip(np.ceil(box[:, 1].max()), 0, h - 1))
    mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), dtype=np.uint8)
    shifted = (box - [xmin, ymin]).astype(np.int32)
    cv2.fillPoly(mask, [shifted], 1)
    return float(cv2.mean(prob[ymin : ymax + 1, xmin : xmax + 1], mask)[0])


def _unclip(box: np.ndarray, ratio: float) -> np.ndarray | None:
    """Grow a shrunk text kernel back to the full text region (the inverse of DB's shrink)."""
    polygon = box.astype(np.float64)
    area = abs(cv2.contourArea(polygon.astype(np.float32)))
    perimeter = cv2.arcLength(polygon.astype(np.float32), True)
    if perimeter == 0:
        return None
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(polygon.tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    expanded = offset.Execute(area * ratio / perimeter)
    if len(expanded) != 1:
        return None
    return np.array(expanded[0], dtype=np.float32)


def boxes_from_probability_map(
    prob: np.ndarray, page_h: int, page_w: int, cfg: DetConfig
) -> list[DetectedBox]:
    """DB post-process: threshold, find contours, score, unclip and scale back to the page."""
    map_h, map_w = prob.shape
    bitmap = (prob > cfg.thresh).astype(np.uint8)
    contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    boxes: list[DetectedBox] = []
    for contour in contours[: cfg.max_candidates]:
        kernel, short_side = _ordered_min_box(contour)
        if short_side < 3:
            continue
        score = _mean_probability(prob, kernel)
        if score < cfg.box_thresh:
            continue
        grown = _unclip(kernel, cfg.unclip_ratio)
        if grown is None:
            continue
        box, short_side = _ordered_min_box(grown.reshape(-1, 1, 2))
        if short_side < 5:
            continue
        box[:, 0] = np.clip(np.round(box[:, 0] * page_w / map_w), 0, page_w)
        box[:, 1] = np.clip(np.round(box[:, 1] * page_h / map_h), 0, page_h)
        boxes.append(DetectedBox(points=box, score=score))
    return boxes


def sort_reading_order(boxes: list[DetectedBox], line_tolerance: float = 10.0) -> list[DetectedBox]:
    """Order boxes top to bottom, and left to right within a line."""
    by_top = sorted(boxes, key=lambda b: (b.points[0, 1], b.points[0, 0]))
    ordered: list[DetectedBox] = []
    line: list[DetectedBox] = []
    for box in by_top:
        if line and abs(box.points[0, 1] - line[0].points[0, 1]) > line_tolerance:
            ordered.extend(sorted(line, key=lambda b: b.points[0, 0]))
            line = []
        line.append(box)
    ordered.extend(sorted(line, key=lambda b: b.points[0, 0]))
    return ordered


class TextDetector:
    """Finds text lines on a page image with a DB model from the registry."""

    def __init__(self, predictor: Predictor, cfg: DetConfig, postprocess: Mapping[str, Any] | None = None) -> None:
        """``postprocess``: the model's own ``PostProcess`` values, used where ``cfg`` leaves them unset."""
        self._predictor = predictor
        self._cfg = cfg.resolved(postprocess or {})

    @property
    def config(self) -> DetConfig:
        """The configuration in use, post-processing values resolved."""
        return self._cfg

    def probability_map(self, image_bgr: np.ndarray) -> np.ndarray:
        """The model's text probability map of a page (at the detector's input size)."""
        resized, _, _ = resize_for_detection(image_bgr, self._cfg)
        return self._predictor(to_detector_input(resized))[0, 0]

    def __call__(self, image_bgr: np.ndarray) -> list[DetectedBox]:
        """Detect text regions on an HWC uint8 BGR page, in reading order."""
        h, w = image_bgr.shape[:2]
        return sort_reading_order(boxes_from_probability_map(self.probability_map(image_bgr), h, w, self._cfg))
