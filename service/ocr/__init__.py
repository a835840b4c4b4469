"""OCR: text detection and recognition with the registry's models in service."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass

import numpy as np

from service.config import OcrConfig
from service.ocr.detector import DetectedBox, TextDetector
from service.ocr.engine import Predictor
from service.ocr.recognizer import TextRecognizer, crop_quad, load_charset_from_list
from service.ocr.words import OcrWord, word_boxes
from service.registry import ModelRegistry


@dataclass(frozen=True)
class OcrLine:
    """One recognized text line on a page, with its words (split at spaces, boxes from CTC positions)."""

    points: np.ndarray
    det_score: float
    text: str
    rec_score: float
    words: tuple[OcrWord, ...] = ()


class OcrEngine:
    """Detector + recognizer built from the ``current`` det and rec versions.

    ``refresh()`` reloads a task whose ``current`` pointer moved, so a promotion takes effect on the
    next document without restarting the daemon.
    """

    def __init__(self, registry: ModelRegistry, cfg: OcrConfig) -> None:
        self._registry = registry
        self._cfg = cfg
        self._lock = threading.Lock()
        self.versions: dict[str, str] = {}
        self._detector: TextDetector | None = None
        self._recognizer: TextRecognizer | None = None
        self.refresh()

    def refresh(self) -> dict[str, str]:
        """Load whatever versions are in service now; returns the versions in use."""
        with self._lock:
            det_version, det_dir = self._registry.current_dir("det")
            if self.versions.get("det") != det_version:
                self._detector = TextDetector(Predictor(det_dir, self._cfg.threads, self._cfg.use_mkldnn), self._cfg.det,
                                              self._registry.inference_config("det", det_version).get("PostProcess"))
                self.versions["det"] = det_version
            rec_version, rec_dir = self._registry.current_dir("rec")
            if self.versions.get("rec") != rec_version:
                characters = self._registry.inference_config("rec", rec_version)["PostProcess"]["character_dict"]
                self._recognizer = TextRecognizer(
                    Predictor(rec_dir, self._cfg.threads, self._cfg.use_mkldnn),
                    load_charset_from_list(characters),
                    self._cfg.rec,
                )
                self.versions["rec"] = rec_version
            return dict(self.versions)

    @property
    def settings_digest(self) -> str:
        """A short digest of the configured settings that change what is read (``ocr.det``, ``ocr.rec``):
        readings cached per det/rec version are kept apart per setting (an unclip ratio set in the config)."""
        settings = {"det": self._cfg.det.model_dump(mode="json"), "rec": self._cfg.rec.model_dump(mode="json")}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]

    def detect(self, image_bgr: np.ndarray) -> list[DetectedBox]:
        """Text regions of a page in reading order."""
        assert self._detector is not None
        return self._detector(image_bgr)

    def recognize(self, image_bgr: np.ndarray, boxes: list[DetectedBox]) -> list[OcrLine]:
        """Read the text of each detected box of a page (HWC uint8 BGR), in the boxes' order."""
        assert self._recognizer is not None
        crops = [crop_quad(image_bgr, box.points) for box in boxes]
        texts = self._recognizer(crops) if crops else []
        return [
            OcrLine(points=box.points, det_score=box.score, text=rec.text, rec_score=rec.score,
                    words=tuple(word_boxes(rec, box.points)))
            for box, rec in zip(boxes, texts)
        ]

    def read_page(self, image_bgr: np.ndarray) -> list[OcrLine]:
        """Detect and recognize every text line of a page (HWC uint8 BGR), in reading order."""
        return self.recognize(image_bgr, self.detect(image_bgr))
