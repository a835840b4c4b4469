"""Detection in the learning loop: gold page boxes in, a fine-tuned PP-OCRv4 det version out.

Training inputs are random crops (``learning.det_crop_size`` square, at the page's own scale,
which is the scale inference sees with the default ``ocr.det`` limits) centred near a gold box;
boxes cut by a crop's edge are masked out of the loss. The candidate starts from the version in
service, is fine-tuned with the DB loss for ``learning.det_steps`` steps (BatchNorm frozen), and
its weights are written into the original ``.pdmodel`` graph as a new registry version.
Holdout metrics: precision, recall and Hmean of detected boxes against gold boxes at IoU 0.5.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from service.config import DetConfig, PaperloopConfig
from service.evaluation import detection_scores, evaluate_page
from service.finetune.det_model import load_detector
from service.finetune.det_train import DetSample, DetTrainConfig, crop_with_polygons, export_det, finetune_det, prepare_sample
from service.ocr.detector import TextDetector
from service.ocr.engine import Predictor
from service.ocr_learning.pages import GoldPage
from service.registry import ModelCard, ModelRegistry


class RandomCrops(Sequence[DetSample]):
    """Item ``i`` is a fresh random crop of page ``i`` around one of its boxes (seeded).

    Crops are made when asked for, so a large gold set never sits in memory as float maps.
    """

    def __init__(self, pages: Sequence[GoldPage], size: int, det_cfg: DetConfig, seed: int = 0) -> None:
        self._pages = [p for p in pages if p.segments]
        self._size = size
        self._det_cfg = det_cfg
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
        return prepare_sample(crop, kept, ignore, self._det_cfg)


def det_metrics(cfg: PaperloopConfig, registry: ModelRegistry, version: str,
                pages: Sequence[GoldPage]) -> dict[str, float]:
    """Hmean first, then precision and recall of the version's boxes against the gold boxes."""
    detector = TextDetector(Predictor(registry.version_dir("det", version), cfg.ocr.threads, cfg.ocr.use_mkldnn),
                            cfg.ocr.det)
    evaluations = []
    for page in pages:
        found = [box.points for box in detector(page.image)]
        gold = [s.bbox for s in page.segments]
        evaluations.append(evaluate_page(found, [""] * len(found), gold, [""] * len(gold)))
    counts = detection_scores(evaluations)
    return {"hmean": counts.hmean, "precision": counts.precision, "recall": counts.recall}


def train_det_candidate(cfg: PaperloopConfig, registry: ModelRegistry, pages: Sequence[GoldPage], version: str,
                        on_step: Callable[[int, dict[str, float]], None] | None = None) -> str:
    """Fine-tune the det version in service on crops of ``pages``; register it as ``version``."""
    learning = cfg.learning
    crops = RandomCrops(pages, learning.det_crop_size, cfg.ocr.det)
    if not len(crops):
        raise ValueError("no gold page with boxes and a readable image to train detection on")
    parent, parent_dir = registry.current_dir("det")
    model = load_detector(parent_dir)
    settings = DetTrainConfig(steps=learning.det_steps, learning_rate=learning.det_learning_rate,
                              threshold_warmup_steps=min(50, learning.det_steps // 4))
    started = time.perf_counter()
    log = finetune_det(model, crops, settings, on_step)
    losses = [step["loss"] for step in log.steps]
    card = ModelCard(task="det", version=version, model_name=registry.card("det", parent).model_name, parent=parent,
                     source="paperloop learning job (DB fine-tuning)",
                     data_counts={"pages": len(crops), "boxes": sum(len(p.segments) for p in pages)},
                     metrics={"train_seconds": round(time.perf_counter() - started, 1), "steps": len(losses),
                              "crop_size": learning.det_crop_size,
                              "mean_loss_first_20": float(np.mean(losses[:20])),
                              "mean_loss_last_20": float(np.mean(losses[-20:]))})
    with tempfile.TemporaryDirectory(prefix="paperloop-det-") as scratch:
        out = export_det(model, parent_dir, Path(scratch) / "out")
        files = {name: out / name for name in ("inference.pdmodel", "inference.pdiparams")}
        registry.add_version(card, files, registry.inference_config("det", parent))
    return version
