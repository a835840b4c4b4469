"""What SER and RE share: the graph-model training defaults and the candidate training code."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from service.tasks.base import ModelTask, TrainOverrides

if TYPE_CHECKING:
    from service.config import PaperloopConfig
    from service.document import Document
    from service.kie.candidates import TrainedModel
    from service.registry import ModelRegistry
    from service.run_log import RunLog


@dataclass(frozen=True)
class KieTrainingDefaults:
    """Graph-model hyper-parameters (`kie.training`), chosen on a validation split of FUNSD's training forms."""

    epochs: int = 15
    batch_size: int = 4
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    dim: int = 128
    layers: int = 3
    heads: int = 4
    embed_dim: int = 64
    dropout: float = 0.1
    seed: int = 0
    validation_fraction: float = 0.15


DEFAULTS = KieTrainingDefaults()


@dataclass
class FittedKie:
    """A trained SER / RE model and the validation documents it was calibrated on."""

    trained: "TrainedModel"
    fit_documents: list["Document"]
    validation_documents: list["Document"]


class KieTask(ModelTask):
    """SER or RE: graph models trained from scratch on gold documents (`paperloop train ser|re`)."""

    trained_by_command = True
    overrides = frozenset({"epochs", "seed"})

    def missing_signal(self, cfg: "PaperloopConfig", documents: Sequence["Document"]) -> str | None:
        from service.kie.candidates import NoTrainingSignalError, check_training_signal

        try:
            check_training_signal(self.name, documents, cfg.kie.labels, cfg.kie.other_label)
        except NoTrainingSignalError as exc:
            return str(exc)
        return None

    def samples(self, cfg: "PaperloopConfig", documents: Sequence["Document"]) -> list[Any]:
        return list(documents)

    def split(self, cfg: "PaperloopConfig", documents: Sequence["Document"]) -> tuple[list["Document"], list["Document"]]:
        """The seeded (fit, validation) split of the training documents (`kie.training.validation_fraction`)."""
        from service.kie.candidates import split_validation

        return split_validation(documents, cfg.kie.training.validation_fraction, cfg.kie.training.seed)

    def fit(self, cfg: "PaperloopConfig", registry: "ModelRegistry", documents: Sequence["Document"],
            overrides: TrainOverrides = TrainOverrides(), progress: bool | None = None) -> FittedKie:
        """Train on a seeded split of ``documents`` (the rest validates and calibrates); with
        ``kie.training.service_view``, also on the same pages as the OCR in service reads them."""
        from service.kie.candidates import settings_from_config
        from service.kie.service_view import service_view_for

        self.check_overrides(overrides)
        settings = settings_from_config(cfg.kie, overrides.epochs, overrides.seed)
        fit_docs, val_docs = self.split(cfg, documents)
        progress = sys.stderr.isatty() if progress is None else progress
        seen_by_service = service_view_for(cfg, registry, fit_docs).documents
        trained = self._train(cfg, registry, fit_docs + seen_by_service, val_docs, settings, progress)
        return FittedKie(trained, fit_docs, val_docs)

    def _train(self, cfg: "PaperloopConfig", registry: "ModelRegistry", fit_docs: list["Document"],
               val_docs: list["Document"], settings: Any, progress: bool) -> "TrainedModel":
        raise NotImplementedError

    def train_candidate(self, cfg: "PaperloopConfig", registry: "ModelRegistry", documents: Sequence["Document"],
                        run_log: "RunLog", overrides: TrainOverrides = TrainOverrides()) -> str:
        from service.kie.candidates import register

        return register(self.fit(cfg, registry, documents, overrides).trained, registry)

    def evaluate(self, cfg: "PaperloopConfig", registry: "ModelRegistry", version: str,
                 documents: Sequence["Document"]) -> dict[str, float]:
        """Scores of ``version`` on gold documents as the service meets them: a document labelled on another
        rec's reading is read again by the OCR in service (:func:`service.kie.service_view.as_read_in_service`)."""
        from service.kie import evaluation, inference
        from service.kie.service_view import as_read_in_service

        kept, view = as_read_in_service(cfg, registry, documents)
        kie = inference.KieModels(registry, multiple_values=cfg.kie.multiple_values,
                                  link_threshold=cfg.kie.link_threshold, pinned={self.name: version})
        report = evaluation.evaluate_gold(kie, kept + view.documents, cfg.kie.labels, cfg.kie.other_label)
        return self.metrics_from_report(cfg, report)

    def metrics_from_report(self, cfg: "PaperloopConfig", report: dict[str, Any]) -> dict[str, float]:
        """The task's metrics from an :func:`evaluate_gold` report, the main one first."""
        raise NotImplementedError
