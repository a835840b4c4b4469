"""The fields stage of the pipeline: fill ``Document.fields`` after the model tasks, with the
thresholds that hold for the SER version in service (its card), or those the config fixes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.config import PaperloopConfig
from service.document import Document
from service.fields.calibration import card_thresholds
from service.fields.extract import fill_fields
from service.registry import ModelRegistry


class FieldReader:
    """Reads the schema's fields out of a labelled document (nothing when the schema has no field)."""

    def __init__(self, cfg: PaperloopConfig, registry: ModelRegistry) -> None:
        self.cfg = cfg
        self.registry = registry
        self._cache: dict[str, dict[str, float]] = {}

    def thresholds(self, ser_version: str | None) -> dict[str, float]:
        """Field → threshold: the SER card's calibrated ones, overridden by ``routing.field_thresholds``."""
        calibrated: dict[str, float] = {}
        if ser_version is not None:
            if ser_version not in self._cache:
                try:
                    self._cache[ser_version] = card_thresholds(self.registry.card("ser", ser_version).metrics)
                except Exception:  # noqa: BLE001 - a version without a card (LayoutXLM) has no thresholds
                    self._cache[ser_version] = {}
            calibrated = self._cache[ser_version]
        return {**calibrated, **self.cfg.routing.field_thresholds}

    def read(self, document: Document, probabilities: np.ndarray | None, labels: Sequence[str]) -> None:
        """Fill ``document.fields`` (see :func:`service.fields.extract.fill_fields`)."""
        if not self.cfg.fields.fields:
            return
        thresholds = self.thresholds(document.model_versions.get("ser"))
        fill_fields(document, self.cfg.fields, probabilities, labels, thresholds)
