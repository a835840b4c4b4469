"""Fine-tuning the recognition model on (line crop, text) pairs, and writing it back as a registry folder.

Training uses CTC loss on the dygraph network of :mod:`service.finetune.rec_model`, fed exactly
what inference feeds the exported program (:func:`service.ocr.recognizer._normalize_batch`: height
48, width by aspect ratio, right padding, BGR scaled to [-1, 1]); every batch element is read over
the whole padded width, as at inference, so padding learns to be blank.

BatchNorm statistics stay frozen: the BN layers are kept in eval mode while the rest trains (with
BN in train mode, statistics from a few small batches of line crops replace those of the original
training set, and full pages degraded to 10 of 40 lines read correctly in the team's measurement).

:func:`export_rec` writes the new values back into the *original* program: the folder gets the
unchanged ``inference.pdmodel`` and ``inference.yml`` and an ``inference.pdiparams`` in the
original combined format and parameter names, so the oneDNN old-IR path of
:class:`service.ocr.engine.Predictor` and PaddleOCR 3.7 load it like the base model.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
import yaml

from service.config import RecConfig
from service.finetune.common import export_inference_folder, pair_by_order, read_inference_params
from service.finetune.rec_model import PPOCRv4RecModel, eval_mode, model_tensors
from service.ocr.recognizer import _normalize_batch, load_charset_from_list
from service.tasks.rec import DEFAULTS as REC_DEFAULTS

BLANK = 0


@dataclass(frozen=True)
class RecSample:
    """One training pair: a line crop (HWC uint8 BGR, as cropped for inference) and its text."""

    image: np.ndarray
    text: str


def load_charset(model_dir: Path) -> list[str]:
    """The CTC alphabet of a registry folder: blank, ``PostProcess.character_dict``, space."""
    config = yaml.safe_load((Path(model_dir) / "inference.yml").read_text(encoding="utf-8"))
    return load_charset_from_list(config["PostProcess"]["character_dict"])


class LabelEncoder:
    """Text → CTC label ids (blank = 0, the dictionary from 1, space last).

    Characters outside the alphabet are dropped, as PaddleOCR's ``CTCLabelEncode`` does.
    """

    def __init__(self, charset: Sequence[str]) -> None:
        self.charset = list(charset)
        self._ids = {ch: i for i, ch in enumerate(self.charset) if i != BLANK}

    def encode(self, text: str) -> list[int]:
        """Label ids of the characters of ``text`` that the alphabet has."""
        return [self._ids[ch] for ch in text if ch in self._ids]

    def unknown(self, text: str) -> set[str]:
        """Characters of ``text`` the alphabet lacks."""
        return {ch for ch in text if ch not in self._ids}

    def decode(self, ids: Sequence[int]) -> str:
        """Inverse of :meth:`encode`."""
        return "".join(self.charset[i] for i in ids)


@dataclass
class Batch:
    """Model input and CTC targets for a list of samples."""

    images: np.ndarray  # N×3×48×W float32
    labels: np.ndarray  # N×L int32, padded with blanks
    label_lengths: np.ndarray  # N int64

    @property
    def time_steps(self) -> int:
        """Output length of the network on this batch (the backbone divides the width by 8)."""
        return self.images.shape[3] // 8


def make_batch(samples: Sequence[RecSample], encoder: LabelEncoder, cfg: RecConfig) -> Batch:
    """Pre-process crops as inference does and encode their texts."""
    images = _normalize_batch([s.image for s in samples], cfg)
    encoded = [encoder.encode(s.text) for s in samples]
    labels = np.zeros((len(samples), max(1, max(len(e) for e in encoded))), dtype=np.int32)
    for i, ids in enumerate(encoded):
        labels[i, :len(ids)] = ids
    return Batch(images=images, labels=labels, label_lengths=np.array([len(e) for e in encoded], dtype=np.int64))


class FrozenBackbone:
    """The model's backbone, frozen, run as a compiled inference program (oneDNN, fused BatchNorm).

    With the backbone frozen (the default: the CTC branch detaches it) its forward pass is all it
    does in training, and in dygraph that forward pass was most of a CPU training step; compiled it
    runs about five times faster and a whole epoch three times faster, with the features inference
    sees (within 1e-3 of dygraph's). Build it after the backbone's weights are final: it holds a
    copy of them.
    """

    def __init__(self, model: PPOCRv4RecModel, threads: int | None = None) -> None:
        from paddle.static import InputSpec

        from service.ocr.engine import Predictor
        from service.paddle_noise import quiet_export

        self._scratch = tempfile.TemporaryDirectory(prefix="paperloop-rec-backbone-")
        with eval_mode(model), quiet_export():
            paddle.jit.save(model.backbone, str(Path(self._scratch.name) / "inference"),
                            input_spec=[InputSpec([None, 3, None, None], "float32", "x")])
        threads = threads or len(os.sched_getaffinity(0))
        self._predictor = Predictor(Path(self._scratch.name), threads, use_mkldnn=True)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Features N×C×1×(W/8) of an N×3×48×W batch."""
        return self._predictor(images)

    def close(self) -> None:
        """Remove the compiled program's files."""
        self._scratch.cleanup()


def ctc_losses(model: PPOCRv4RecModel, batch: Batch, backbone: FrozenBackbone | None = None) -> paddle.Tensor:
    """Per-sample CTC loss (negative log-likelihood of the text) of ``model`` on ``batch``.

    With ``backbone`` (the model's own backbone, frozen and compiled) the visual features come from
    it and only the neck and head run in dygraph.
    """
    if backbone is None:
        logits = model(paddle.to_tensor(batch.images))  # N×T×C
    else:
        logits = model.head(model.neck(paddle.to_tensor(backbone(batch.images))))
    steps = logits.shape[1]
    return F.ctc_loss(
        logits.transpose([1, 0, 2]),  # T×N×C, unnormalized: ctc_loss applies the softmax
        paddle.to_tensor(batch.labels),
        paddle.to_tensor(np.full(len(batch.labels), steps, dtype=np.int64)),
        paddle.to_tensor(batch.label_lengths),
        blank=BLANK,
        reduction="none",
    )


def usable_samples(samples: Sequence[RecSample], encoder: LabelEncoder, cfg: RecConfig) -> list[RecSample]:
    """Samples CTC can learn from: a non-empty label that fits in the crop's own output length.

    CTC needs one time step per character plus one between repeated characters.
    """
    kept = []
    for sample in samples:
        ids = encoder.encode(sample.text)
        h, w = sample.image.shape[:2]
        width = min(cfg.max_width, max(cfg.image_width, math.ceil(cfg.image_height * w / max(h, 1))))
        needed = len(ids) + sum(1 for a, b in zip(ids, ids[1:]) if a == b)
        if ids and needed <= width // 8:
            kept.append(sample)
    return kept


def _batches(samples: Sequence[RecSample], cfg: RecConfig, batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped into batches of similar aspect ratio (little padding), in random order."""
    order = sorted(range(len(samples)), key=lambda i: (samples[i].image.shape[1] / max(samples[i].image.shape[0], 1),
                                                       rng.random()))
    groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(groups)
    return groups


def mean_ctc_loss(model: PPOCRv4RecModel, samples: Sequence[RecSample], encoder: LabelEncoder,
                  cfg: RecConfig | None = None, batch_size: int = 8) -> float:
    """Mean per-sample CTC loss in eval mode (no dropout, no gradients)."""
    cfg = cfg or RecConfig()
    total = 0.0
    with eval_mode(model), paddle.no_grad():
        for group in _batches(samples, cfg, batch_size, random.Random(0)):
            total += float(ctc_losses(model, make_batch([samples[i] for i in group], encoder, cfg)).sum())
    return total / max(1, len(samples))


@dataclass
class FinetuneSettings:
    """How :func:`finetune_rec` trains.

    ``train_backbone``: let the CTC loss reach the backbone too. PP-OCRv4 trained its backbone
    through the NRTR branch only (the CTC neck detaches its input); off by default, so a small
    data set adapts the neck and head and leaves the visual features alone.
    """

    epochs: int = REC_DEFAULTS.epochs  # the rec task's defaults (service/tasks/rec.py)
    batch_size: int = 8
    learning_rate: float = REC_DEFAULTS.learning_rate
    clip_norm: float = 5.0
    train_backbone: bool = False
    seed: int = 0


@dataclass
class FinetuneReport:
    """What a fine-tuning run did."""

    samples: int
    skipped: int
    steps: int
    step_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def finetune_rec(model: PPOCRv4RecModel, samples: Sequence[RecSample], encoder: LabelEncoder,
                 settings: FinetuneSettings | None = None, cfg: RecConfig | None = None,
                 on_step: Callable[[int, float], None] | None = None,
                 on_epoch: Callable[[int], None] | None = None) -> FinetuneReport:
    """Fine-tune ``model`` in place with Adam on CTC loss, BatchNorm statistics frozen.

    Samples with no known character, or a text too long for their crop, are skipped (counted in
    the report). ``on_epoch(n)`` is called after the n-th epoch (the learning rate is constant, so
    the model then is what an ``n``-epoch run would have made). The model is left in eval mode.
    """
    settings = settings or FinetuneSettings()
    cfg = cfg or RecConfig()
    usable = usable_samples(samples, encoder, cfg)
    report = FinetuneReport(samples=len(usable), skipped=len(samples) - len(usable), steps=0)
    if not usable:
        model.eval()
        return report
    paddle.seed(settings.seed)
    rng = random.Random(settings.seed)
    guide = model.neck.guide
    model.neck.guide = not settings.train_backbone
    trainable = [p for name, p in model.named_parameters()
                 if settings.train_backbone or not name.startswith("backbone.")]
    trainable_ids = {id(p) for p in trainable}
    frozen = [p for p in model.parameters() if id(p) not in trainable_ids]
    for p in frozen:
        p.stop_gradient = True
    optimizer = paddle.optimizer.Adam(
        learning_rate=settings.learning_rate, parameters=trainable,
        grad_clip=paddle.nn.ClipGradByGlobalNorm(settings.clip_norm) if settings.clip_norm else None,
    )
    started = time.perf_counter()
    backbone = None if settings.train_backbone else FrozenBackbone(model)
    model.train()
    model.freeze_batchnorm()
    try:
        for epoch in range(1, settings.epochs + 1):
            for group in _batches(usable, cfg, settings.batch_size, rng):
                loss = ctc_losses(model, make_batch([usable[i] for i in group], encoder, cfg), backbone).mean()
                loss.backward()
                optimizer.step()
                optimizer.clear_grad()
                report.steps += 1
                report.step_losses.append(float(loss))
                if on_step is not None:
                    on_step(report.steps, report.step_losses[-1])
            if on_epoch is not None:
                on_epoch(epoch)
    finally:
        if backbone is not None:
            backbone.close()
        for p in frozen:
            p.stop_gradient = False
        model.neck.guide = guide
        model.eval()
        report.seconds = time.perf_counter() - started
    return report


def export_rec(model: PPOCRv4RecModel, base_dir: Path, out_dir: Path) -> Path:
    """Write ``model``'s weights into a copy of the registry folder ``base_dir`` at ``out_dir``.

    ``inference.pdmodel`` and ``inference.yml`` are copied unchanged; ``inference.pdiparams`` keeps
    the original names, order and tensor headers with the new values. The written file is read
    back and compared before it is put in place. ``out_dir`` may exist but must not hold an
    ``inference.pdiparams`` already (see :func:`service.finetune.common.export_inference_folder`).
    """
    program, records = read_inference_params(base_dir)
    pairs = pair_by_order(model_tensors(model), program, records, what="the network's tensors")
    values = {p.program_name: p.tensor.numpy() for p in pairs}
    return export_inference_folder(base_dir, out_dir, values, overwrite=False)
