"""Training, evaluating and registering the entity-grouping model (see :mod:`service.kie.grouping`).

The fit loop, batching and temperature search are SER / RE's (:mod:`service.kie.fit`): a word page
becomes an :class:`~service.kie.fit.Example` whose ``links`` are the predecessor matrix and whose
``labels`` are the words' entity labels, so the loss is RE's "which one is my predecessor (or
none)" plus SER's label cross-entropy on the words.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import paddle
from paddle.nn import functional as F
from paddle.static import InputSpec

from service.kie import fit
from service.kie.candidates import TrainedModel
from service.kie.features import MAX_TOKENS, N_BOX, N_TEXT_CUES
from service.kie.grouping import (CANDIDATE_INDEX, MAX_WORDS, N_GROUP_PAIR, WordPage, decode_groups, gold_groups,
                                  grouping_scores, predecessor_matrix, word_features)
from service.kie.inference import export_for_inference, temporary_export_dir
from service.kie.metrics import expected_calibration_error
from service.kie.model import GroupModel, parameter_count
from service.registry import ModelCard, ModelRegistry

GROUP_MODEL_NAME = "PaperloopGraphGroup"


def make_group_example(page: WordPage, labels: Sequence[str]) -> fit.Example:
    """Features and targets of a word page with gold entities."""
    index = {label: i for i, label in enumerate(labels)}
    targets = np.array([index.get((label or "").lower(), fit.IGNORE) for label in (page.labels or [])],
                       dtype=np.int64)
    return fit.Example(word_features(page), targets, predecessor_matrix(page), np.zeros((len(targets), 1), np.float32))


def group_loss(model: GroupModel, batch: dict[str, paddle.Tensor]) -> paddle.Tensor:
    """Predecessor cross-entropy (RE's form) plus the words' label cross-entropy."""
    label_logits, logits = model(*[batch[k] for k in fit.MODEL_INPUTS])
    linking = fit.choice_loss(logits, batch["links"], batch["mask"])
    labelling = F.cross_entropy(label_logits.reshape([-1, label_logits.shape[-1]]), batch["labels"].reshape([-1]),
                                ignore_index=fit.IGNORE)
    return linking + 0.5 * labelling


@paddle.no_grad()
def group_logits(model: GroupModel, examples: Sequence[fit.Example]) -> list[np.ndarray]:
    """Per page (N + 1, N) predecessor logits."""
    return [model(*[fit.collate([e])[k] for k in fit.MODEL_INPUTS])[1][0].numpy() for e in examples]


def evaluate_groups(logits: Sequence[np.ndarray], pages: Sequence[WordPage], temperature: float = 1.0,
                    threshold: float = 0.5) -> dict[str, float]:
    """Entity grouping precision / recall / Hmean of decoded logits against the pages' gold entities."""
    predicted = [[frozenset(g.units) for g in decode_groups(fit.re_probabilities(l, temperature), p.units, threshold)]
                 for l, p in zip(logits, pages)]
    return grouping_scores(predicted, [gold_groups(p) for p in pages])


def group_threshold(logits: Sequence[np.ndarray], pages: Sequence[WordPage], temperature: float) -> float:
    """The link probability threshold with the best held-out grouping Hmean."""
    candidates = np.linspace(0.2, 0.7, 11)
    return float(max(candidates, key=lambda t: evaluate_groups(logits, pages, temperature, float(t))["hmean"]))


def group_ece(logits: Sequence[np.ndarray], pages: Sequence[WordPage], temperature: float,
              threshold: float = 0.5) -> float:
    """Calibration of the entities' scores: is an entity formed with score 0.9 exact 90 % of the time?"""
    scores, exact = [], []
    for doc_logits, page in zip(logits, pages):
        gold = set(gold_groups(page))
        for group in decode_groups(fit.re_probabilities(doc_logits, temperature), page.units, threshold):
            scores.append(group.score)
            exact.append(frozenset(group.units) in gold)
    return round(expected_calibration_error(np.array(scores), np.array(exact)), 4)


def usable(pages: Sequence[WordPage]) -> list[WordPage]:
    """Pages the model can take: with words, and not more than :data:`MAX_WORDS` of them."""
    return [p for p in pages if 0 < len(p.units) <= MAX_WORDS]


def train_group(train_pages: Sequence[WordPage], val_pages: Sequence[WordPage], labels: Sequence[str],
                settings: fit.TrainSettings, progress: bool = True) -> TrainedModel:
    """Train the grouping model, keep the best validation epoch, fit a temperature on validation."""
    fit.set_seed(settings.seed)
    train_pages, val_pages = usable(train_pages), usable(val_pages)
    train = [make_group_example(p, labels) for p in train_pages]
    val = [make_group_example(p, labels) for p in val_pages]
    model = GroupModel(len(labels), CANDIDATE_INDEX, pair_features=N_GROUP_PAIR, **settings.encoder_args())

    def validate() -> float:
        return evaluate_groups(group_logits(model, val), val_pages)["hmean"]

    history = fit.fit(model, group_loss, train, settings, validate, progress)
    logits = group_logits(model, val)
    temperature = fit.re_temperature(logits, val)  # the same "which one (or none)" softmax as RE
    threshold = group_threshold(logits, val_pages, temperature)
    scores = evaluate_groups(logits, val_pages, temperature, threshold)
    metrics = {"validation": scores, "hmean": scores["hmean"], "ece": group_ece(logits, val_pages, temperature, threshold),
               "parameters": parameter_count(model),
               "train_seconds": round(history.seconds, 1), "best_epoch": history.best_epoch}
    counts = {"train_pages": len(train_pages), "train_words": sum(len(p.units) for p in train_pages),
              "validation_pages": len(val_pages)}
    return TrainedModel("group", model, list(labels), temperature, threshold, metrics, counts, settings, history)


def group_input_specs() -> list[InputSpec]:
    """Dynamic-shape inputs of the exported grouping model."""
    return [InputSpec([None, None, MAX_TOKENS], "int64", "tokens"),
            InputSpec([None, None, N_TEXT_CUES], "float32", "cues"),
            InputSpec([None, None, N_BOX], "float32", "boxes"),
            InputSpec([None, None, None, N_GROUP_PAIR], "float32", "pairs"),
            InputSpec([None, None], "float32", "mask")]


def group_inference_yml(trained: TrainedModel) -> dict[str, Any]:
    """``inference.yml`` of a grouping model: its labels, temperature and link threshold."""
    return {"Global": {"model_name": GROUP_MODEL_NAME},
            "PreProcess": {"features": "paperloop.kie.grouping/v1"},
            "PostProcess": {"name": "PredecessorSoftmax", "label_list": list(trained.labels),
                            "temperature": round(float(trained.temperature), 5),
                            "link_threshold": round(float(trained.threshold or 0.5), 4)}}


def register_group(trained: TrainedModel, registry: ModelRegistry) -> str:
    """Export into the registry as a new version, not in service."""
    from service.kie.candidates import next_version

    version = next_version(registry, "group")
    card = ModelCard(task="group", version=version, model_name=GROUP_MODEL_NAME,
                     parent=registry.current_version("group"), source="paperloop train",
                     data_counts=trained.data_counts,
                     metrics={**trained.metrics, "temperature": trained.temperature,
                              "settings": fit.settings_dict(trained.settings)})
    with temporary_export_dir() as scratch:
        files = export_for_inference(trained.model, group_input_specs(), Path(scratch))
        registry.add_version(card, files, group_inference_yml(trained))
    return version
