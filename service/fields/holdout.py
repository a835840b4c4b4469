"""Calibrate the field thresholds of the SER version in service on the holdout split.

Each holdout gold document with field values is read again from its page image by the whole
pipeline (the models in service, as a new document would be), its fields are compared with the gold
values, and the thresholds (:mod:`service.fields.calibration`) are written on the SER version's card.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.config import PaperloopConfig
from service.document import Document
from service.fields.calibration import Outcome, outcomes, straight_through, thresholds
from service.labels import LabelStore
from service.pipeline import DocumentPipeline
from service.registry import ModelRegistry
from service.store import Store


def _page_image(cfg: PaperloopConfig, gold: Document) -> Path | None:
    if len(gold.pages) != 1 or not gold.pages[0].image:
        return None
    image = Path(gold.pages[0].image)
    image = image if image.is_absolute() else cfg.paths.resolve("data") / image
    return image if image.is_file() else None


def holdout_outcomes(cfg: PaperloopConfig, golds: Sequence[Document],
                     pipeline: DocumentPipeline | None = None) -> list[list[Outcome]]:
    """Per single-page holdout document with gold fields: its fields as the pipeline reads them now."""
    pipeline = pipeline or DocumentPipeline(cfg)
    result = []
    for gold in golds:
        image = _page_image(cfg, gold)
        if image is None or not gold.fields:
            continue
        predicted = pipeline.process_file(image, f"calibrate-{gold.id}", gold.sha256, image.name)
        result.append(outcomes(predicted, gold, cfg.fields))
    return result


def field_accuracy(cfg: PaperloopConfig, golds: Sequence[Document], pinned: dict[str, str]) -> float | None:
    """The share of the gold field values of ``golds`` that the whole pipeline reads right from their page
    images, with the KIE versions in ``pinned`` (the rest as in service); ``None`` when none has fields."""
    values = [o for document in holdout_outcomes(cfg, golds, DocumentPipeline(cfg, pinned=pinned)) for o in document]
    return sum(o.correct for o in values) / len(values) if values else None


def calibration_record(cfg: PaperloopConfig, documents: Sequence[Sequence[Outcome]], ser_version: str) -> dict[str, Any]:
    """Thresholds for ``routing.target_accuracy`` and what they let through on these documents."""
    target = cfg.routing.target_accuracy
    cut = thresholds(documents, target)
    required = [f.name for f in cfg.fields.fields if f.required]
    return {"ser_version": ser_version, "documents": len(documents), "target_accuracy": target,
            "thresholds": cut, "straight_through": straight_through(documents, cut, required)}


def calibrate_in_service(cfg: PaperloopConfig) -> dict[str, Any]:
    """Calibrate on the holdout split and record the thresholds on the SER card (``metrics.fields``)."""
    if not cfg.fields.fields:
        raise ValueError("no field schema (`fields`) to calibrate")
    registry = ModelRegistry(cfg.paths.resolve("models"))
    version = registry.current_version("ser")
    if version is None:
        raise ValueError("no SER model in service; `paperloop train ser` first")
    store = Store(cfg.paths.database)
    try:
        golds = LabelStore(store).documents("holdout")
    finally:
        store.close()
    documents = holdout_outcomes(cfg, golds)
    if not documents:
        raise ValueError("no single-page holdout documents with gold field values and page images to calibrate on")
    record = calibration_record(cfg, documents, version)
    card = registry.card("ser", version)
    card.metrics["fields"] = record
    registry.update_card(card)
    return record
