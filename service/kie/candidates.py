"""Train SER / RE candidates on gold documents, calibrate them on held-out ones, and register them."""

from __future__ import annotations

import random
from pathlib import Path
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import paddle

from service.config import KieConfig
from service.document import Document
from service.kie import fit
from service.kie.data import training_documents
from service.kie.inference import export_for_inference, input_specs, kie_inference_yml, softmax, temporary_export_dir
from service.kie.metrics import expected_calibration_error
from service.kie.model import ReModel, SerModel, parameter_count
from service.registry import ModelCard, ModelRegistry

LabelSource = Callable[[Sequence[fit.Example]], list[np.ndarray]]


@dataclass
class TrainedModel:
    """A trained, calibrated model and what is known about it."""

    task: str
    model: paddle.nn.Layer
    labels: list[str]
    temperature: float
    threshold: float | None
    metrics: dict[str, Any]
    data_counts: dict[str, int]
    settings: fit.TrainSettings
    history: fit.History = field(default_factory=fit.History)


def settings_from_config(kie: KieConfig, epochs: int | None = None, seed: int | None = None) -> fit.SerTrainSettings:
    """Training settings from ``kie.training``, optionally overriding epochs and seed."""
    t = kie.training
    return fit.SerTrainSettings(epochs=epochs or t.epochs, batch_size=t.batch_size, learning_rate=t.learning_rate,
                           weight_decay=t.weight_decay, dim=t.dim, layers=t.layers, heads=t.heads,
                           embed_dim=t.embed_dim, dropout=t.dropout, seed=t.seed if seed is None else seed,
                           class_balance=t.class_balance)


def split_validation(documents: Sequence[Document], fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
    """A seeded random split of documents into (train, validation)."""
    order = sorted(documents, key=lambda d: d.id)
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(fraction * len(order)))) if len(order) > 1 else 0
    return order[n_val:], order[:n_val]


def _counts(train: Sequence[Document], val: Sequence[Document]) -> dict[str, int]:
    return {"train_documents": len(train), "train_segments": sum(len(d.segments) for d in train),
            "train_links": sum(len(d.links) for d in train), "validation_documents": len(val)}


def _cost(model: paddle.nn.Layer, history: fit.History) -> dict[str, Any]:
    return {"parameters": parameter_count(model), "train_seconds": round(history.seconds, 1),
            "best_epoch": history.best_epoch}


def ser_label_source(model: SerModel, temperature: float) -> LabelSource:
    """Label probabilities from a trained SER model (RE's input at inference time)."""
    return lambda examples: [softmax(l, temperature) for l in fit.ser_logits(model, examples)]


def train_ser(train_docs: Sequence[Document], val_docs: Sequence[Document], labels: Sequence[str],
              settings: fit.TrainSettings, with_lines: bool = True, progress: bool = True) -> TrainedModel:
    """Train SER, keep the best validation epoch, fit a temperature on validation."""
    fit.set_seed(settings.seed)
    train = [fit.make_example(d, labels) for d in training_documents(list(train_docs), with_lines)]
    val = [fit.make_example(d, labels) for d in val_docs]
    model = SerModel(len(labels), **settings.encoder_args())
    balance = getattr(settings, "class_balance", "none")  # plain TrainSettings: unweighted, as before
    loss = fit.weighted_ser_loss(fit.class_weights(train, len(labels), balance))

    def validate() -> float:  # macro over the fields: a rare field must not vanish for the sake of `other`
        return fit.macro_hmean(fit.ser_evaluate(fit.ser_logits(model, val), val, labels), labels)

    history = fit.fit(model, loss, train, settings, validate, progress)
    logits = fit.ser_logits(model, val)
    temperature = fit.ser_temperature(logits, val)
    scores = fit.ser_evaluate(logits, val, labels)
    metrics = {"validation": {k: v.as_dict() for k, v in scores.items()},
               "hmean": scores["overall"].hmean, "ece_before": _ser_ece(logits, val, 1.0),
               "ece": _ser_ece(logits, val, temperature), **_cost(model, history)}
    return TrainedModel("ser", model, list(labels), temperature, None, metrics,
                        _counts(train_docs, val_docs), settings, history)


def _ser_ece(logits: Sequence[np.ndarray], examples: Sequence[fit.Example], temperature: float) -> float:
    confidences, correct = [], []
    for l, e in zip(logits, examples):
        keep = e.labels != fit.IGNORE
        p = softmax(l[keep], temperature)
        confidences.append(p.max(axis=1))
        correct.append(p.argmax(axis=1) == e.labels[keep])
    return round(expected_calibration_error(np.concatenate(confidences), np.concatenate(correct)), 4)


def train_re(train_docs: Sequence[Document], val_docs: Sequence[Document], labels: Sequence[str],
             settings: fit.TrainSettings, val_label_source: LabelSource | None = None,
             with_lines: bool = True, progress: bool = True) -> TrainedModel:
    """Train RE on gold labels (noised), calibrate and pick the link threshold on validation.

    ``val_label_source`` gives the validation documents' label probabilities as SER will at
    inference; without it the gold labels are used.
    """
    fit.set_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    train = [fit.make_example(d, labels) for d in training_documents(list(train_docs), with_lines)]
    val = [fit.make_example(d, labels) for d in val_docs]
    confusion = None
    if val_label_source is not None:
        predicted = val_label_source(val)
        confusion = fit.label_confusion(val, predicted, len(labels))
        val = fit.with_label_probs(val, predicted)
    model = ReModel(len(labels), **settings.encoder_args())
    history = fit.fit(model, fit.re_loss, fit.noisy_label_probs(train, rng, confusion), settings,
                    lambda: fit.re_evaluate(fit.re_logits(model, val), val, 0.5).hmean, progress)
    logits = fit.re_logits(model, val)
    temperature = fit.re_temperature(logits, val)
    threshold = fit.best_threshold(logits, val, temperature)
    scores = fit.re_evaluate(logits, val, threshold, temperature)
    metrics = {"validation": scores.as_dict(), "hmean": scores.hmean, "link_threshold": threshold,
               "ece": _re_ece(logits, val, temperature), **_cost(model, history)}
    return TrainedModel("re", model, list(labels), temperature, threshold, metrics,
                        _counts(train_docs, val_docs), settings, history)


def _re_ece(logits: Sequence[np.ndarray], examples: Sequence[fit.Example], temperature: float) -> float:
    """Calibration of "the most likely key of each segment (or none) is right"."""
    confidences, correct = [], []
    for l, e in zip(logits, examples):
        p = fit.re_probabilities(l, temperature)
        best = p.argmax(axis=0)
        truth = np.vstack([e.links, (e.links.sum(axis=0) == 0)[None].astype(np.float32)])
        confidences.append(p.max(axis=0))
        correct.append(truth[best, np.arange(p.shape[1])] > 0)
    return round(expected_calibration_error(np.concatenate(confidences), np.concatenate(correct)), 4)


class NoTrainingSignalError(ValueError):
    """The gold labels hold nothing a task could learn from."""


def check_training_signal(task: str, documents: Sequence[Document], labels: Sequence[str], other_label: str) -> None:
    """Refuse (:class:`NoTrainingSignalError`) when the gold documents cannot teach ``task`` anything.

    SER needs at least one segment with a label of the schema other than ``other_label``; RE
    needs at least one gold link.
    """
    if task == "ser":
        wanted = [label for label in labels if label != other_label]
        if not any(s.label in wanted for d in documents for s in d.segments):
            raise NoTrainingSignalError(
                f"no SER training signal: the {len(documents)} training documents have no gold label other than "
                f"{other_label!r} (kie.labels: {', '.join(wanted)}); label some segments first")
    elif task == "re" and not any(d.links for d in documents):
        raise NoTrainingSignalError(
            f"no RE training signal: the {len(documents)} training documents have no gold links (key → value), "
            f"so RE would learn nothing; link keys to their values first")


def next_version(registry: ModelRegistry, task: str) -> str:
    """A new, sortable version name: ``v<n>-<UTC timestamp>``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    return f"v{len(registry.versions(task)) + 1}-{stamp}"


def register(trained: TrainedModel, registry: ModelRegistry) -> str:
    """Export into the registry as a new version, not in service.

    Putting it in service is the caller's decision, once the version has been evaluated.
    """
    if trained.task == "group":  # the grouping model has its own inputs and post-processing
        from service.kie.group_fit import register_group

        return register_group(trained, registry)
    version = next_version(registry, trained.task)
    specs = input_specs(len(trained.labels) if trained.task == "re" else None)
    card = ModelCard(task=trained.task, version=version,
                     model_name="PaperloopGraphSER" if trained.task == "ser" else "PaperloopGraphRE",
                     parent=registry.current_version(trained.task), source="paperloop train",
                     data_counts=trained.data_counts,
                     metrics={**trained.metrics, "temperature": trained.temperature,
                              "settings": fit.settings_dict(trained.settings)})
    with temporary_export_dir() as scratch:
        files = export_for_inference(trained.model, specs, Path(scratch))
        yml = kie_inference_yml(trained.task, trained.labels, trained.temperature, trained.threshold)
        registry.add_version(card, files, yml)
    return version
