"""RE: link each key segment to its value segments."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from service.tasks.base import Prediction, ServiceModels
from service.tasks.kie_common import DEFAULTS, KieTask

if TYPE_CHECKING:
    from service.config import PaperloopConfig
    from service.document import Document
    from service.kie.candidates import TrainedModel
    from service.registry import ModelRegistry

__all__ = ["DEFAULTS", "TASK"]


class ReTask(KieTask):
    """Key → value linking from SER's label probabilities; link Hmean, precision, recall."""

    name = "re"
    title = "RE (links)"
    metric_names = ("hmean", "precision", "recall")

    def predict(self, models: ServiceModels, prediction: Prediction) -> None:
        """Key → value links with a calibrated score (when an RE model is in service)."""
        models.kie.link(prediction.document, prediction.label_probabilities, prediction.page_images)

    def gold_items(self, document: "Document") -> int:
        return len(document.links)

    def _train(self, cfg: "PaperloopConfig", registry: "ModelRegistry", fit_docs: list["Document"],
               val_docs: list["Document"], settings: Any, progress: bool) -> "TrainedModel":
        from service.document import Document
        from service.kie.candidates import train_re
        from service.kie.inference import KieModels

        kie = KieModels(registry)
        source = None
        if kie.refresh().get("ser"):  # validate RE on the labels the SER in service gives, as in use
            source = lambda _examples: [kie.label(Document.from_dict(d.to_dict())) for d in val_docs]  # noqa: E731
        return train_re(fit_docs, val_docs, cfg.kie.labels, settings, source, cfg.kie.training.line_augmentation,
                        progress=progress)

    def metric_support(self, cfg: "PaperloopConfig", documents: Sequence["Document"]) -> dict[str, int]:
        """Precision and recall rest on the gold links (the predicted ones are about as many)."""
        links = sum(len(document.links) for document in documents)
        return {"precision": links, "recall": links}

    def metrics_from_report(self, cfg: "PaperloopConfig", report: dict[str, Any]) -> dict[str, float]:
        links = report["re"]["scores"]["links"]
        return {"hmean": report["re"]["hmean"], "precision": links["precision"], "recall": links["recall"]}


TASK = ReTask()
