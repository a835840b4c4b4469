"""Recognition in the learning loop: gold line crops in, a fine-tuned PP-OCRv4 rec version out.

Samples are the gold segments' texts and their crops from the page images (as reviewers fixed
them), mixed with synthetic lines rendered with real fonts (``learning.rec_synthetic_ratio`` per
gold line; see :mod:`service.ocr_learning.synthetic`). The candidate starts from the version in
service, is fine-tuned with CTC (BatchNorm frozen), and is exported into the original
``.pdmodel`` graph as a new registry version.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from service.config import PaperloopConfig
from service.document import Document
from service.evaluation import char_accuracy
from service.finetune.rec_model import load_rec_model
from service.finetune.rec_train import FinetuneSettings, LabelEncoder, RecSample, export_rec, finetune_rec, load_charset
from service.ocr.engine import Predictor
from service.ocr.recognizer import TextRecognizer, crop_quad
from service.ocr_learning.pages import GoldPage, gold_pages
from service.ocr_learning.synthetic import synthetic_samples
from service.registry import ModelCard, ModelRegistry


def page_line_samples(page: GoldPage) -> list[RecSample]:
    """(crop, text) for every segment of ``page`` with text, whitespace folded."""
    samples = []
    for segment, polygon in zip(page.segments, page.polygons()):
        text = " ".join(segment.text.split())
        if text:
            samples.append(RecSample(crop_quad(page.image, polygon), text))
    return samples


def line_samples(documents: list[Document], data_dir: Path) -> list[RecSample]:
    """(crop, text) for every gold segment with text whose page image can be read."""
    return [sample for page in gold_pages(documents, data_dir) for sample in page_line_samples(page)]


def read_crops(cfg: PaperloopConfig, model_dir: Path, samples: Sequence[RecSample]) -> list[str]:
    """What the rec model in ``model_dir`` reads on each sample's crop, as the service reads it."""
    if not samples:
        return []
    recognizer = TextRecognizer(Predictor(model_dir, cfg.ocr.threads, cfg.ocr.use_mkldnn), load_charset(model_dir),
                                cfg.ocr.rec)
    return [line.text for line in recognizer([s.image for s in samples])]


def rec_metrics(cfg: PaperloopConfig, registry: ModelRegistry, version: str, samples: list[RecSample]) -> dict[str, float]:
    """Line accuracy (exact, spaces count) first, then mean character accuracy (1 − NED)."""
    texts = read_crops(cfg, registry.version_dir("rec", version), samples)
    n = max(len(samples), 1)
    return {"line_accuracy": sum(t == s.text for t, s in zip(texts, samples)) / n,
            "char_accuracy": sum(char_accuracy(s.text, t) for t, s in zip(texts, samples)) / n}


def training_mix(cfg: PaperloopConfig, gold: list[RecSample], seed: int = 0) -> list[RecSample]:
    """The gold lines plus ``rec_synthetic_ratio`` synthetic lines per gold line."""
    learning = cfg.learning
    count = int(round(len(gold) * learning.rec_synthetic_ratio))
    return gold + synthetic_samples([s.text for s in gold], count, learning.synthetic_font_dirs, seed)


def train_rec_candidate(cfg: PaperloopConfig, registry: ModelRegistry, gold: list[RecSample], version: str,
                        on_step: Callable[[int, float], None] | None = None, epochs: int | None = None,
                        seed: int | None = None) -> str:
    """Fine-tune the rec version in service on ``gold`` (plus synthetic lines); register the
    result as ``version``. ``epochs`` and ``seed`` replace ``learning.rec_epochs`` and 0."""
    parent, parent_dir = registry.current_dir("rec")
    model = load_rec_model(parent_dir)
    seed = 0 if seed is None else seed
    samples = training_mix(cfg, gold, seed)
    settings = FinetuneSettings(epochs=epochs or cfg.learning.rec_epochs, learning_rate=cfg.learning.rec_learning_rate,
                                seed=seed)
    report = finetune_rec(model, samples, LabelEncoder(load_charset(parent_dir)), settings, cfg.ocr.rec, on_step)
    card = ModelCard(task="rec", version=version, model_name=registry.card("rec", parent).model_name, parent=parent,
                     source="paperloop learning job (CTC fine-tuning)",
                     data_counts={"gold_lines": len(gold), "synthetic_lines": len(samples) - len(gold),
                                  "train_lines": report.samples, "skipped_lines": report.skipped},
                     metrics={"train_seconds": round(report.seconds, 1), "steps": report.steps,
                              "last_loss": report.step_losses[-1] if report.step_losses else None,
                              "mean_loss_last_50": float(np.mean(report.step_losses[-50:])) if report.step_losses else None})
    with tempfile.TemporaryDirectory(prefix="paperloop-rec-") as scratch:
        out = export_rec(model, parent_dir, Path(scratch) / "out")
        files = {name: out / name for name in ("inference.pdmodel", "inference.pdiparams")}
        registry.add_version(card, files, registry.inference_config("rec", parent))
    return version
