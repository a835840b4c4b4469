"""Detection in the learning loop: gold page boxes in, an adapted PP-OCRv4 det version out.

A candidate starts from the version in service and gets two things:

* (when ``learning.det_steps`` > 0) its weights fine-tuned with the DB loss (BatchNorm frozen) on
  random crops (``learning.det_crop_size`` square, at the page's own scale, which is the scale
  inference sees with the default ``ocr.det`` limits) centred near a gold box, boxes cut by a
  crop's edge masked out of the loss, targets shrunk so that the unclip of inference grows the
  kernels back to the gold box (:func:`~service.finetune.det_train.matched_shrink_ratio`), and
  written into the original ``.pdmodel`` graph. Small steps only: on FUNSD, DB's own shrink ratio,
  larger learning rates or more steps made the probability maps thin and striped and the Hmean
  lower (``bench/results/det_finetune.md``);
* its DB post-processing (``thresh``, ``box_thresh``, ``unclip_ratio``) calibrated on the gold
  pages, written into the version's ``inference.yml`` ``PostProcess``, which the OCR engine uses
  where ``ocr.det`` leaves those values unset (the default).

Holdout metrics: precision, recall and Hmean of detected boxes against gold boxes at IoU 0.5.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from service.config import DetConfig, PaperloopConfig
from service.evaluation import DetectionCounts, detection_scores, evaluate_page
from service.finetune.det_model import load_detector
from service.finetune.det_train import (
    SHRINK_RATIO, DetSample, DetTrainConfig, crop_with_polygons, export_det, finetune_det, matched_shrink_ratio,
    prepare_sample)
from service.ocr.detector import TextDetector, boxes_from_probability_map
from service.ocr.engine import Predictor
from service.ocr_learning.pages import GoldPage
from service.registry import ModelCard, ModelRegistry


# Searched on the reviewers' pages: how far to grow kernels and which boxes to keep depends on how the
# reviewers draw boxes. On FUNSD the shipped values stay (0.3 / 0.6 / 1.5); looser boxes get a larger unclip.
POSTPROCESS_GRID = {"thresh": (0.3,), "box_thresh": (0.5, 0.6, 0.7), "unclip_ratio": (1.5, 1.75, 2.0, 2.25, 2.5)}
CALIBRATION_PAGES = 100


class RandomCrops(Sequence[DetSample]):
    """Item ``i`` is a fresh random crop of page ``i`` around one of its boxes (seeded).

    Crops are made when asked for, so a large gold set never sits in memory as float maps.
    """

    def __init__(self, pages: Sequence[GoldPage], size: int, det_cfg: DetConfig, seed: int = 0,
                 shrink_ratio: float = SHRINK_RATIO) -> None:
        self._pages = [p for p in pages if p.segments]
        self._size = size
        self._det_cfg = det_cfg
        self._shrink_ratio = shrink_ratio
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self._pages)

    def __getitem__(self, index: int) -> DetSample:  # type: ignore[override]
        page = self._pages[index]
        h, w = page.image.shape[:2]
        width, height = min(self._size, w), min(self._size, h)
        polygons = page.polygons()
        cx, cy = polygons[self._rng.randrange(len(polygons))].mean(axis=0)
        x0 = int(np.clip(cx - width / 2 + self._rng.uniform(-0.25, 0.25) * width, 0, w - width))
        y0 = int(np.clip(cy - height / 2 + self._rng.uniform(-0.25, 0.25) * height, 0, h - height))
        crop, kept, ignore = crop_with_polygons(page.image, polygons, x0, y0, width, height)
        return prepare_sample(crop, kept, ignore, self._det_cfg, self._shrink_ratio)


def page_detector(cfg: PaperloopConfig, model_dir: Path, postprocess: Mapping[str, Any]) -> TextDetector:
    """A detector on a model folder, with ``postprocess`` where ``ocr.det`` leaves values unset."""
    return TextDetector(Predictor(model_dir, cfg.ocr.threads, cfg.ocr.use_mkldnn), cfg.ocr.det, postprocess)


def detection_counts(prob_maps: Sequence[np.ndarray], pages: Sequence[GoldPage], det_cfg: DetConfig) -> DetectionCounts:
    """Boxes post-processed from each page's probability map, matched to its gold boxes (IoU 0.5)."""
    evaluations = []
    for prob, page in zip(prob_maps, pages):
        h, w = page.image.shape[:2]
        found = [box.points for box in boxes_from_probability_map(prob, h, w, det_cfg)]
        gold = [s.bbox for s in page.segments]
        evaluations.append(evaluate_page(found, [""] * len(found), gold, [""] * len(gold)))
    return detection_scores(evaluations)


def folder_metrics(cfg: PaperloopConfig, model_dir: Path, postprocess: Mapping[str, Any],
                   pages: Sequence[GoldPage]) -> dict[str, float]:
    """Hmean first, then precision and recall of a det folder's boxes against the gold boxes."""
    detector = page_detector(cfg, model_dir, postprocess)
    counts = detection_counts([detector.probability_map(p.image) for p in pages], pages, detector.config)
    return {"hmean": counts.hmean, "precision": counts.precision, "recall": counts.recall}


def det_metrics(cfg: PaperloopConfig, registry: ModelRegistry, version: str,
                pages: Sequence[GoldPage]) -> dict[str, float]:
    """:func:`folder_metrics` of a registry version, with its own post-processing."""
    return folder_metrics(cfg, registry.version_dir("det", version),
                          registry.inference_config("det", version).get("PostProcess", {}), pages)


def calibrate_postprocess(detector: TextDetector, pages: Sequence[GoldPage],
                          tolerance: float) -> tuple[dict[str, float], float]:
    """The DB post-processing values of :data:`POSTPROCESS_GRID` with the best Hmean on ``pages``
    (the model runs once per page), and that Hmean.

    Like the gate, it never trades one metric for another: values whose precision or recall falls
    more than ``tolerance`` below the detector's own values are not considered.
    """
    prob_maps = [detector.probability_map(p.image) for p in pages]
    own = detection_counts(prob_maps, pages, detector.config)
    names = ("thresh", "box_thresh", "unclip_ratio")
    best = (own.hmean, {name: getattr(detector.config, name) for name in names})
    for values in product(*POSTPROCESS_GRID.values()):
        candidate = dict(zip(POSTPROCESS_GRID, values))
        counts = detection_counts(prob_maps, pages, detector.config.model_copy(update=candidate))
        if counts.precision < own.precision - tolerance or counts.recall < own.recall - tolerance:
            continue
        if counts.hmean > best[0]:
            best = (counts.hmean, candidate)
    return best[1], best[0]


def _finetune_weights(cfg: PaperloopConfig, parent_dir: Path, unclip_ratio: float, pages: Sequence[GoldPage],
                      out_dir: Path, on_step: Callable[[int, dict[str, float]], None] | None) -> dict[str, Any]:
    learning = cfg.learning
    crops = RandomCrops(pages, learning.det_crop_size, cfg.ocr.det, shrink_ratio=matched_shrink_ratio(unclip_ratio))
    model = load_detector(parent_dir)
    settings = DetTrainConfig(steps=learning.det_steps, learning_rate=learning.det_learning_rate,
                              threshold_warmup_steps=min(50, learning.det_steps // 4))
    started = time.perf_counter()
    losses = [step["loss"] for step in finetune_det(model, crops, settings, on_step).steps]
    export_det(model, parent_dir, out_dir)
    return {"train_seconds": round(time.perf_counter() - started, 1), "steps": len(losses),
            "crop_size": learning.det_crop_size, "mean_loss_first_20": float(np.mean(losses[:20])),
            "mean_loss_last_20": float(np.mean(losses[-20:]))}


def train_det_candidate(cfg: PaperloopConfig, registry: ModelRegistry, pages: Sequence[GoldPage], version: str,
                        on_step: Callable[[int, dict[str, float]], None] | None = None) -> str:
    """A det candidate from the version in service: its weights fine-tuned on crops of ``pages``
    (when ``learning.det_steps`` > 0), then its post-processing calibrated on up to
    :data:`CALIBRATION_PAGES` of them; registered as ``version``."""
    pages = [p for p in pages if p.segments]
    if not pages:
        raise ValueError("no gold page with boxes and a readable image to train detection on")
    parent, parent_dir = registry.current_dir("det")
    inference = registry.inference_config("det", parent)
    metrics: dict[str, Any] = {"steps": 0}
    with tempfile.TemporaryDirectory(prefix="paperloop-det-") as scratch:
        weights_dir = parent_dir
        if cfg.learning.det_steps > 0:
            weights_dir = Path(scratch) / "out"
            unclip = cfg.ocr.det.resolved(inference.get("PostProcess", {})).unclip_ratio
            metrics = _finetune_weights(cfg, parent_dir, unclip, pages, weights_dir, on_step)
        sample = random.Random(0).sample(pages, min(CALIBRATION_PAGES, len(pages)))
        started = time.perf_counter()
        detector = page_detector(cfg, weights_dir, inference.get("PostProcess", {}))
        values, hmean = calibrate_postprocess(detector, sample, cfg.learning.tolerance)
        inference["PostProcess"] = {**inference.get("PostProcess", {}), **values}
        metrics.update(calibration={"pages": len(sample), "hmean": hmean, **values,
                                    "seconds": round(time.perf_counter() - started, 1)})
        card = ModelCard(task="det", version=version, model_name=registry.card("det", parent).model_name,
                         parent=parent, source="paperloop learning job (DB fine-tuning, post-processing calibration)",
                         data_counts={"pages": len(pages), "boxes": sum(len(p.segments) for p in pages)},
                         metrics=metrics)
        files = {name: weights_dir / name for name in ("inference.pdmodel", "inference.pdiparams")}
        registry.add_version(card, files, inference)
    return version
