"""Grouping: form entities from the words of OCR lines (multi-line values joined, key/value lines split)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Sequence

from service.tasks.base import ModelTask, Prediction, ServiceModels, TrainOverrides

if TYPE_CHECKING:
    from service.config import PaperloopConfig
    from service.document import Document
    from service.kie.grouping import WordPage
    from service.registry import ModelRegistry
    from service.run_log import RunLog
    from service.tasks.kie_common import FittedKie

__all__ = ["TASK"]


def _gold_word_pages(documents: Sequence["Document"]) -> list["WordPage"]:
    """Every page of gold documents whose segments carry word boxes, as simulated OCR lines."""
    from service.kie.grouping import gold_word_page

    return [gold_word_page(page) for d in documents for page in d.pages
            if any(len(s.words) > 0 for s in page.segments)]


class GroupTask(ModelTask):
    """Entity grouping over words; entity Hmean (exact word sets), precision, recall."""

    name = "group"
    title = "Grouping (entities)"
    metric_names = ("hmean", "precision", "recall")
    trained_by_command = True
    overrides = frozenset({"epochs", "seed"})

    def predict(self, models: ServiceModels, prediction: Prediction) -> None:
        """Each page's OCR lines become the entities the grouping model in service forms (when one is)."""
        models.kie.form_entities(prediction.document)

    def gold_items(self, document: "Document") -> int:
        return sum(1 for s in document.segments if s.words)

    def missing_signal(self, cfg: "PaperloopConfig", documents: Sequence["Document"]) -> str | None:
        if not any(s.words for d in documents for s in d.segments):
            return (f"no grouping training signal: none of the {len(documents)} training documents has word boxes "
                    "(import data with words, e.g. FUNSD, or review processed documents)")
        return None

    def samples(self, cfg: "PaperloopConfig", documents: Sequence["Document"]) -> list[Any]:
        return _gold_word_pages(documents)

    def split(self, cfg: "PaperloopConfig", documents: Sequence["Document"]) -> tuple[list["Document"], list["Document"]]:
        """The seeded (fit, validation) split, SER and RE's (`kie.training.validation_fraction`)."""
        from service.kie.candidates import split_validation

        return split_validation(documents, cfg.kie.training.validation_fraction, cfg.kie.training.seed)

    def fit(self, cfg: "PaperloopConfig", registry: "ModelRegistry", documents: Sequence["Document"],
            overrides: TrainOverrides = TrainOverrides(), progress: bool | None = None) -> "FittedKie":
        """Train on a seeded split of ``documents``: their gold words and, with ``kie.training.service_view``,
        the same pages read by the OCR in service; the rest validates and calibrates."""
        from service.kie.candidates import settings_from_config
        from service.kie.group_fit import train_group
        from service.kie.service_view import service_view_for
        from service.tasks.kie_common import FittedKie

        self.check_overrides(overrides)
        settings = settings_from_config(cfg.kie, overrides.epochs or cfg.kie.training.group_epochs, overrides.seed)
        fit_docs, val_docs = self.split(cfg, documents)
        train_pages = _gold_word_pages(fit_docs) + service_view_for(cfg, registry, fit_docs).word_pages
        progress = sys.stderr.isatty() if progress is None else progress
        trained = train_group(train_pages, _gold_word_pages(val_docs), cfg.kie.labels, settings, progress)
        return FittedKie(trained, fit_docs, val_docs)

    def train_candidate(self, cfg: "PaperloopConfig", registry: "ModelRegistry", documents: Sequence["Document"],
                        run_log: "RunLog", overrides: TrainOverrides = TrainOverrides()) -> str:
        from service.kie.group_fit import register_group

        return register_group(self.fit(cfg, registry, documents, overrides).trained, registry)

    def evaluate(self, cfg: "PaperloopConfig", registry: "ModelRegistry", version: str,
                 documents: Sequence["Document"]) -> dict[str, float]:
        """Entity grouping scores of ``version`` on the gold documents' words (simulated OCR lines); a
        document labelled on another rec's reading is read again by the OCR in service and scored on its
        words (:func:`service.kie.service_view.as_read_in_service`)."""
        from service.kie.grouping import gold_groups, grouping_scores
        from service.kie.group_fit import usable
        from service.kie.inference import KieModels
        from service.kie.service_view import as_read_in_service

        kept, view = as_read_in_service(cfg, registry, documents)
        kie = KieModels(registry, pinned={"group": version})
        kie.refresh()
        pages = usable(_gold_word_pages(kept) + view.word_pages)
        predicted = [[frozenset(g.units) for g in kie.groups_of(page)] for page in pages]
        return grouping_scores(predicted, [gold_groups(page) for page in pages])


TASK = GroupTask()
