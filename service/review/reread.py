"""Re-reading a box with the recognition model in service: a reviewer drew or moved it.

:func:`reread_box` crops the box's quad from the page image and runs the recognizer of the
:class:`~service.ocr.OcrEngine` (the registry's ``current`` rec version), as the pipeline does for a
detected line, words placed by their CTC positions included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from service.ocr import OcrEngine
from service.ocr.detector import DetectedBox


@dataclass(frozen=True)
class Reread:
    """What the recognizer read in a box: text, confidence, words (page boxes) and the rec version."""

    text: str
    score: float
    words: list[dict[str, Any]]
    rec_version: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what the editor is sent)."""
        return {"text": self.text, "score": self.score, "words": self.words, "rec_version": self.rec_version}


def box_quad(box: Sequence[float], width: int, height: int) -> np.ndarray:
    """An axis-aligned box (x0, y0, x1, y1) as a quad clockwise from the top left, clipped to the page."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = sorted((min(max(x0, 0.0), width - 1.0), min(max(x1, 0.0), width - 1.0)))
    y0, y1 = sorted((min(max(y0, 0.0), height - 1.0), min(max(y1, 0.0), height - 1.0)))
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)


def read_page_image(path: Path) -> np.ndarray:
    """A page image as HWC uint8 BGR, as the pipeline reads it."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read the page image {path}")
    return image


def reread_box(engine: OcrEngine, image_bgr: np.ndarray, box: Sequence[float]) -> Reread:
    """Read the text inside ``box`` (page pixels, x0, y0, x1, y1) with the rec model in service."""
    quad = box_quad(box, image_bgr.shape[1], image_bgr.shape[0])
    if quad[1][0] - quad[0][0] < 2 or quad[3][1] - quad[0][1] < 2:
        return Reread("", 0.0, [], engine.versions.get("rec", ""))
    line = engine.recognize(image_bgr, [DetectedBox(points=quad, score=1.0)])[0]
    words = [{"text": w.text, "box": list(w.box)} for w in line.words]
    return Reread(line.text, float(line.rec_score), words, engine.versions.get("rec", ""))
