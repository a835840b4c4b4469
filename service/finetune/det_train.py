"""Fine-tuning the DB text detector on gold text polygons, and exporting it back to the registry.

Targets follow DB (Liao et al., "Real-time Scene Text Detection with Differentiable Binarization"):

* shrink map: each text polygon shrunk inwards by ``D = A (1 - r²) / L`` (area A, perimeter L,
  r = 0.4) is 1, the rest 0; polygons that are ignored or thinner than ``min_text_size`` are cut
  out of the shrink mask instead;
* threshold (border) map: inside the polygon grown outwards by D, ``1 - distance to the polygon's
  edges / D`` (clipped to 0..1), rescaled to ``thresh_min..thresh_max``; the grown region is the
  threshold mask.

The loss is ``alpha · L_shrink + beta · L_threshold + L_binary``: hard-negative-mined
(3 negatives per positive) binary cross-entropy on the probability map, masked L1 on the threshold
map and Dice on the approximate binary map. Images go through the inference pre-processing
(``service.ocr.detector``: sides resized to multiples of 32, BGR/255, ImageNet mean/std).

``export_det`` writes the fine-tuned weights into the ORIGINAL old-IR program: the folder gets the
base ``inference.pdmodel`` and ``inference.yml`` unchanged and a new ``inference.pdiparams`` with
the original parameter names in the original combined format, so the oneDNN old-IR path of
``service.ocr.engine.Predictor`` and PaddleOCR keep loading it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import paddle
import paddle.nn.functional as F
import pyclipper

from service.config import DetConfig
from service.finetune.common import WeightMismatch, export_inference_folder, read_inference_params
from service.finetune.det_model import DBDetector, pair_parameters
from service.ocr.detector import resize_for_detection, to_detector_input
from service.tasks.det import DEFAULTS as DET_DEFAULTS

SHRINK_RATIO = 0.4
MIN_TEXT_SIZE = 8
THRESH_MIN = 0.3
THRESH_MAX = 0.7
ALPHA = 5.0
BETA = 10.0
OHEM_RATIO = 3.0
# With no positive pixel in a sample, still learn "no text here" from this many hardest negatives.
MIN_NEGATIVES = 256


# ---------------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class DetTargets:
    """DB training targets for one H×W input, all float32 H×W."""

    shrink_map: np.ndarray
    shrink_mask: np.ndarray
    threshold_map: np.ndarray
    threshold_mask: np.ndarray


def box_to_polygon(box: Sequence[float]) -> np.ndarray:
    """An axis-aligned ``(x0, y0, x1, y1)`` box as a clockwise 4-point polygon (float32)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)


def _area_perimeter(polygon: np.ndarray) -> tuple[float, float]:
    pts = polygon.astype(np.float32).reshape(-1, 1, 2)
    return abs(float(cv2.contourArea(pts))), float(cv2.arcLength(pts, True))


def db_offset(polygon: np.ndarray, shrink_ratio: float = SHRINK_RATIO) -> float:
    """DB's shrink/grow distance ``A (1 - r²) / L`` of a polygon (0 for a degenerate one)."""
    area, perimeter = _area_perimeter(polygon)
    return area * (1.0 - shrink_ratio**2) / perimeter if perimeter > 0 else 0.0


def _offset_polygon(polygon: np.ndarray, distance: float) -> list[np.ndarray]:
    """The polygon offset by ``distance`` (negative shrinks), rounded corners, with pyclipper."""
    offset = pyclipper.PyclipperOffset()
    offset.AddPath([tuple(map(float, p)) for p in polygon], pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return [np.array(path, dtype=np.float64) for path in offset.Execute(distance)]


def _clip_polygons(polygons: Sequence[np.ndarray], h: int, w: int) -> list[np.ndarray]:
    clipped = []
    for polygon in polygons:
        p = np.asarray(polygon, dtype=np.float32).reshape(-1, 2).copy()
        p[:, 0] = np.clip(p[:, 0], 0, w - 1)
        p[:, 1] = np.clip(p[:, 1], 0, h - 1)
        clipped.append(p)
    return clipped


def make_shrink_map(
    polygons: Sequence[np.ndarray], ignore: Sequence[bool], h: int, w: int,
    shrink_ratio: float = SHRINK_RATIO, min_text_size: int = MIN_TEXT_SIZE,
) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    """(shrink map, shrink mask, ignore flags updated with the polygons that had to be dropped)."""
    gt = np.zeros((h, w), dtype=np.float32)
    mask = np.ones((h, w), dtype=np.float32)
    flags = list(ignore)
    for i, polygon in enumerate(polygons):
        size = polygon.max(axis=0) - polygon.min(axis=0)
        area, _ = _area_perimeter(polygon)
        usable = not flags[i] and min(size) >= min_text_size and area >= 1
        shrunk = _offset_polygon(polygon, -db_offset(polygon, shrink_ratio)) if usable else []
        if not shrunk:
            cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 0.0)
            flags[i] = True
            continue
        cv2.fillPoly(gt, [np.round(p).astype(np.int32) for p in shrunk], 1.0)
    return gt, mask, flags


def _segment_distance(xs: np.ndarray, ys: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance of every (xs, ys) point to the segment a–b."""
    d = b - a
    length2 = float(d @ d)
    if length2 == 0:
        return np.hypot(xs - a[0], ys - a[1])
    t = np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / length2, 0.0, 1.0)
    return np.hypot(xs - (a[0] + t * d[0]), ys - (a[1] + t * d[1]))


def make_border_map(
    polygons: Sequence[np.ndarray], ignore: Sequence[bool], h: int, w: int,
    shrink_ratio: float = SHRINK_RATIO, thresh_min: float = THRESH_MIN, thresh_max: float = THRESH_MAX,
) -> tuple[np.ndarray, np.ndarray]:
    """(threshold map, threshold mask) for the polygons that are not ignored."""
    canvas = np.zeros((h, w), dtype=np.float32)
    mask = np.zeros((h, w), dtype=np.float32)
    for polygon, skip in zip(polygons, ignore):
        if skip:
            continue
        distance = db_offset(polygon, shrink_ratio)
        grown = _offset_polygon(polygon, distance) if distance > 0 else []
        if not grown:
            continue
        padded = grown[0]
        cv2.fillPoly(mask, [np.round(padded).astype(np.int32)], 1.0)
        x0, y0 = np.floor(padded.min(axis=0)).astype(int)
        x1, y1 = np.ceil(padded.max(axis=0)).astype(int)
        ys, xs = np.mgrid[y0 : y1 + 1, x0 : x1 + 1].astype(np.float64)
        poly = polygon.astype(np.float64)
        nearest = np.full(xs.shape, np.inf)
        for j in range(len(poly)):
            nearest = np.minimum(nearest, _segment_distance(xs, ys, poly[j], poly[(j + 1) % len(poly)]))
        closeness = (1.0 - np.clip(nearest / distance, 0.0, 1.0)).astype(np.float32)
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
        if cx0 > cx1 or cy0 > cy1:
            continue
        window = closeness[cy0 - y0 : cy1 - y0 + 1, cx0 - x0 : cx1 - x0 + 1]
        canvas[cy0 : cy1 + 1, cx0 : cx1 + 1] = np.maximum(canvas[cy0 : cy1 + 1, cx0 : cx1 + 1], window)
    return canvas * (thresh_max - thresh_min) + thresh_min, mask


def matched_shrink_ratio(unclip_ratio: float) -> float:
    """The shrink ratio whose kernels the inference unclip grows back to the gold box.

    For a long line of height h, DB's shrink leaves a kernel of height r²·h, and unclipping by
    ``u`` grows a kernel of height k to k·(1 + u): r = 1/√(1 + u) makes the round trip exact
    (0.632 for u = 1.5). DB's own r = 0.4 leaves kernels of 0.16·h that the shipped model never
    drew. On FUNSD validation forms it did no better than the matched ratio at its best rate
    (0.790 vs 0.796 Hmean, bench/results/det_finetune.md).
    """
    return float(1.0 / np.sqrt(1.0 + unclip_ratio))


def make_targets(polygons: Sequence[np.ndarray], h: int, w: int, ignore: Sequence[bool] | None = None,
                 shrink_ratio: float = SHRINK_RATIO) -> DetTargets:
    """DB targets for text polygons (each K×2, in input pixels) on an H×W input."""
    polys = _clip_polygons(polygons, h, w)
    flags = list(ignore) if ignore is not None else [False] * len(polys)
    shrink_map, shrink_mask, flags = make_shrink_map(polys, flags, h, w, shrink_ratio)
    threshold_map, threshold_mask = make_border_map(polys, flags, h, w, shrink_ratio)
    return DetTargets(shrink_map, shrink_mask, threshold_map, threshold_mask)


# ---------------------------------------------------------------------------------------------
# Samples


@dataclass(frozen=True)
class DetSample:
    """One pre-processed training input: a 3×H×W float32 image and its targets."""

    image: np.ndarray
    targets: DetTargets


def prepare_sample(
    image_bgr: np.ndarray, polygons: Sequence[np.ndarray], ignore: Sequence[bool] | None = None,
    cfg: DetConfig | None = None, shrink_ratio: float = SHRINK_RATIO,
) -> DetSample:
    """Pre-process a BGR page (or crop) exactly as inference does and build targets for its text
    polygons (page pixels), scaled with the resize."""
    resized, ry, rx = resize_for_detection(image_bgr, cfg or DetConfig())
    scaled = [np.asarray(p, dtype=np.float32).reshape(-1, 2) * np.array([rx, ry], dtype=np.float32) for p in polygons]
    h, w = resized.shape[:2]
    return DetSample(image=to_detector_input(resized)[0], targets=make_targets(scaled, h, w, ignore, shrink_ratio))


def crop_with_polygons(
    image_bgr: np.ndarray, polygons: Sequence[np.ndarray], x0: int, y0: int, width: int, height: int,
) -> tuple[np.ndarray, list[np.ndarray], list[bool]]:
    """A crop of a page with its polygons moved into it: those wholly inside are text, those cut by
    the crop's edge are kept but ignored (masked out of the loss), those outside dropped."""
    crop = image_bgr[y0 : y0 + height, x0 : x0 + width]
    h, w = crop.shape[:2]
    kept, ignore = [], []
    for polygon in polygons:
        p = np.asarray(polygon, dtype=np.float32).reshape(-1, 2) - np.array([x0, y0], dtype=np.float32)
        lo, hi = p.min(axis=0), p.max(axis=0)
        if hi[0] <= 0 or hi[1] <= 0 or lo[0] >= w or lo[1] >= h:
            continue
        kept.append(p)
        ignore.append(bool(lo[0] < 0 or lo[1] < 0 or hi[0] > w - 1 or hi[1] > h - 1))
    return crop, kept, ignore


# ---------------------------------------------------------------------------------------------
# Loss


def balanced_bce(pred: paddle.Tensor, gt: paddle.Tensor, mask: paddle.Tensor,
                 negative_ratio: float = OHEM_RATIO, eps: float = 1e-6) -> paddle.Tensor:
    """BCE over all positive pixels and the hardest ``negative_ratio``× as many negatives."""
    positive = gt * mask
    negative = (1.0 - gt) * mask
    pos_count = int(positive.sum().item())
    neg_total = int(negative.sum().item())
    neg_count = min(neg_total, max(int(pos_count * negative_ratio), MIN_NEGATIVES))
    loss = F.binary_cross_entropy(paddle.clip(pred, eps, 1.0 - eps), gt, reduction="none")
    total = (loss * positive).sum()
    if neg_count > 0:
        total = total + paddle.topk((loss * negative).flatten(), neg_count)[0].sum()
    return total / (pos_count + neg_count + eps)


def dice_loss(pred: paddle.Tensor, gt: paddle.Tensor, mask: paddle.Tensor, eps: float = 1e-6) -> paddle.Tensor:
    """1 − Dice coefficient of prediction and target inside the mask."""
    inter = (pred * gt * mask).sum()
    union = (pred * mask).sum() + (gt * mask).sum() + eps
    return 1.0 - 2.0 * inter / union


def masked_l1(pred: paddle.Tensor, gt: paddle.Tensor, mask: paddle.Tensor, eps: float = 1e-6) -> paddle.Tensor:
    """Mean absolute error inside the mask."""
    return (paddle.abs(pred - gt) * mask).sum() / (mask.sum() + eps)


def db_loss(prob: paddle.Tensor, thresh: paddle.Tensor, binary: paddle.Tensor,
            targets: dict[str, paddle.Tensor]) -> dict[str, paddle.Tensor]:
    """DB loss terms and their total; maps N×1×H×W (or N×H×W), targets N×H×W tensors."""
    prob, thresh, binary = (t.reshape(targets["shrink_map"].shape) for t in (prob, thresh, binary))
    shrink = balanced_bce(prob, targets["shrink_map"], targets["shrink_mask"])
    threshold = masked_l1(thresh, targets["threshold_map"], targets["threshold_mask"])
    bin_loss = dice_loss(binary, targets["shrink_map"], targets["shrink_mask"])
    total = ALPHA * shrink + BETA * threshold + bin_loss
    return {"loss": total, "shrink": shrink, "threshold": threshold, "binary": bin_loss}


def _to_tensors(samples: Sequence[DetSample]) -> tuple[paddle.Tensor, dict[str, paddle.Tensor]]:
    images = paddle.to_tensor(np.stack([s.image for s in samples]).astype(np.float32))
    targets = {
        key: paddle.to_tensor(np.stack([getattr(s.targets, key) for s in samples]).astype(np.float32))
        for key in ("shrink_map", "shrink_mask", "threshold_map", "threshold_mask")
    }
    return images, targets


def evaluate_loss(model: DBDetector, samples: Sequence[DetSample]) -> dict[str, float]:
    """Mean DB loss terms over samples (one at a time), without training."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    try:
        with paddle.no_grad():
            for sample in samples:
                images, targets = _to_tensors([sample])
                for key, value in db_loss(*model.forward_train(images), targets).items():
                    sums[key] = sums.get(key, 0.0) + float(value.item())
    finally:
        if was_training:
            model.train()
    return {key: value / len(samples) for key, value in sums.items()}


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class DetTrainConfig:
    """Fine-tuning settings: small steps, so the shipped detector is adjusted, not relearned."""

    steps: int = DET_DEFAULTS.steps  # the det task's defaults (service/tasks/det.py)
    learning_rate: float = DET_DEFAULTS.learning_rate
    # The threshold branch starts from scratch: it trains alone for these first steps, so its
    # random output does not push the pretrained probability map around through the binary loss.
    threshold_warmup_steps: int = 50
    threshold_learning_rate: float = 1e-3
    weight_decay: float = 0.0
    grad_clip_norm: float = 5.0
    batch_size: int = 1  # samples of different sizes cannot share a batch
    seed: int = 0


@dataclass
class TrainLog:
    """Per-step loss terms of a fine-tuning run."""

    steps: list[dict[str, float]] = field(default_factory=list)


def finetune_det(
    model: DBDetector, samples: Sequence[DetSample], cfg: DetTrainConfig | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainLog:
    """Fine-tune the detector in place on pre-processed samples (BatchNorm statistics frozen)."""
    cfg = cfg or DetTrainConfig()
    if not samples:
        raise ValueError("no training samples")
    rng = np.random.default_rng(cfg.seed)
    threshold_params = list(model.threshold.parameters())
    threshold_ids = {id(p) for p in threshold_params}
    shipped_params = [p for p in model.parameters() if id(p) not in threshold_ids]
    # Two optimizers, one per learning rate (paddle's per-group rates live on the parameters
    # themselves and would leak from one optimizer into another).
    threshold_opt = paddle.optimizer.Adam(
        cfg.threshold_learning_rate, parameters=threshold_params,
        grad_clip=paddle.nn.ClipGradByGlobalNorm(cfg.grad_clip_norm),
    )
    shipped_opt = paddle.optimizer.AdamW(
        cfg.learning_rate, parameters=shipped_params, weight_decay=cfg.weight_decay,
        grad_clip=paddle.nn.ClipGradByGlobalNorm(cfg.grad_clip_norm),
    )
    model.train()
    model.freeze_batch_norm()
    log = TrainLog()
    try:
        for step in range(cfg.steps):
            warming = step < cfg.threshold_warmup_steps
            for p in shipped_params:
                p.stop_gradient = warming
            picks = rng.choice(len(samples), size=min(cfg.batch_size, len(samples)), replace=False)
            images, targets = _to_tensors([samples[i] for i in picks])
            terms = db_loss(*model.forward_train(images), targets)
            terms["loss"].backward()
            for opt in (threshold_opt,) if warming else (threshold_opt, shipped_opt):
                opt.step()
                opt.clear_grad(set_to_zero=False)
            record = {key: float(value.item()) for key, value in terms.items()}
            log.steps.append(record)
            if on_step is not None:
                on_step(step, record)
    finally:
        for p in shipped_params:
            p.stop_gradient = False
        model.eval()
    return log


# ---------------------------------------------------------------------------------------------
# Export


def export_det(model: DBDetector, base_dir: Path, out_dir: Path) -> Path:
    """Write the fine-tuned weights into the base folder's own old-IR program.

    ``out_dir`` gets the base ``inference.pdmodel`` and ``inference.yml`` byte for byte and a new
    ``inference.pdiparams``: each of the program's parameters takes the value of the network's
    matching tensor (paired by order of use, shapes checked), written in the same combined format
    under its original name, read back and compared before it is put in place (see
    ``service.finetune.common.export_inference_folder``). An existing export in ``out_dir`` is
    replaced; the base folder itself never is. Returns ``out_dir``.
    """
    if Path(out_dir).resolve() == Path(base_dir).resolve():
        raise ValueError("export_det writes a new folder; it never overwrites the base model")
    program, records = read_inference_params(base_dir)
    pairs = pair_parameters(model, program, records)
    values = {p.program_name: p.tensor.numpy().astype(np.float32) for p in pairs}
    for name, value in values.items():
        if not np.all(np.isfinite(value)):
            raise WeightMismatch(f"{name} has non-finite values: not exporting")
    return export_inference_folder(base_dir, out_dir, values, overwrite=True)
