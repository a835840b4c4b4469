"""SER: label each segment with a field of the schema (`kie.labels`), or `other`."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Sequence

from service.tasks.base import Prediction, ServiceModels
from service.tasks.kie_common import DEFAULTS, KieTask

if TYPE_CHECKING:
    from service.config import PaperloopConfig
    from service.document import Document
    from service.kie.candidates import TrainedModel
    from service.registry import ModelRegistry

__all__ = ["DEFAULTS", "TASK"]


class SerTask(KieTask):
    """Segment labelling; entity-level Hmean over the schema's labels, then each label's Hmean."""

    name = "ser"
    title = "SER (labels)"
    # then <label>_hmean for every label of the schema but `other`; with a field schema `fields_exact` comes first
    metric_names = ("hmean",)

    def predict(self, models: ServiceModels, prediction: Prediction) -> None:
        """A label and its calibrated probability for every segment (when a SER model is in service)."""
        prediction.label_probabilities = models.kie.label(prediction.document, prediction.page_images)

    def gold_items(self, document: "Document") -> int:
        return sum(1 for s in document.segments if s.label)

    def _train(self, cfg: "PaperloopConfig", registry: "ModelRegistry", fit_docs: list["Document"],
               val_docs: list["Document"], settings: Any, progress: bool) -> "TrainedModel":
        from service.kie.candidates import train_ser

        return train_ser(fit_docs, val_docs, cfg.kie.labels, settings, cfg.kie.training.line_augmentation,
                         progress=progress)

    def evaluate(self, cfg: "PaperloopConfig", registry: "ModelRegistry", version: str,
                 documents: Sequence["Document"]) -> dict[str, float]:
        """With a field schema, the main metric is what users read: the share of the gold field values
        that the whole pipeline, with ``version`` as SER, reads right from the documents' page images
        (``fields_exact``); the entity Hmeans follow as side metrics. Without one, the Hmeans alone."""
        metrics = super().evaluate(cfg, registry, version, documents)
        if not cfg.fields.fields:
            return metrics
        from service.fields.holdout import field_accuracy

        accuracy = field_accuracy(cfg, documents, {self.name: version})
        return metrics if accuracy is None else {"fields_exact": accuracy, **metrics}

    def metric_support(self, cfg: "PaperloopConfig", documents: Sequence["Document"]) -> dict[str, int]:
        """Each field's Hmean rests on that field's gold segments."""
        counts = Counter(s.label for document in documents for s in document.segments)
        return {f"{label}_hmean": counts[label] for label in cfg.kie.labels if label != cfg.kie.other_label}

    def metrics_from_report(self, cfg: "PaperloopConfig", report: dict[str, Any]) -> dict[str, float]:
        per_label = {f"{label}_hmean": report["ser"]["scores"][label]["hmean"]
                     for label in cfg.kie.labels if label != cfg.kie.other_label}
        return {"hmean": report["ser"]["hmean"], **per_label}


TASK = SerTask()
