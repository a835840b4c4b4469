"""``paperloop train ser|re`` and ``paperloop eval ser|re``: the KIE models on the gold labels."""

from __future__ import annotations

import copy
import json
from typing import Any

import click

from service.config import PaperloopConfig
from service.document import Document
from service.kie.evaluation import evaluate_gold
from service.kie.inference import KieModels
from service.kie.trainer import (NoTrainingSignalError, TrainedModel, check_training_signal, register,
                                  settings_from_config, split_validation, train_re, train_ser)
from service.labels import LabelStore
from service.registry import ModelRegistry
from service.store import Store


def _train_and_validation(cfg: PaperloopConfig, labels: LabelStore, task: str) -> tuple[list[Document], list[Document]]:
    """A seeded split of the train split; the holdout split is kept for evaluation and the gate.

    Refuses before any training when the gold labels hold nothing ``task`` could learn.
    """
    train = labels.documents("train")
    if not train:
        raise click.ClickException("no gold documents in the train split; `paperloop import` some first")
    try:
        check_training_signal(task, train, cfg.kie.labels, cfg.kie.other_label)
    except NoTrainingSignalError as exc:
        raise click.ClickException(str(exc)) from exc
    return split_validation(train, cfg.kie.training.validation_fraction, cfg.kie.training.seed)


def _evaluate(cfg: PaperloopConfig, registry: ModelRegistry, task: str, version: str, holdout: list[Document],
              validation: list[Document]) -> dict[str, Any]:
    """Evaluate the stored version on holdout (or, without holdout, on validation) and record it on its card.

    Raises a click error when the evaluation cannot be completed: the version then stays out of service.
    """
    from service.learning import holdout_metrics  # the gate's evaluation; imported here to keep start-up light

    split, documents = ("holdout", holdout) if holdout else ("validation", validation)
    if not documents:
        raise click.ClickException(f"{task} {version} was stored but not put in service: no holdout or validation "
                                   f"documents to evaluate it on")
    try:
        metrics = holdout_metrics(cfg, registry, task, {task: version}, documents)
    except Exception as exc:  # noqa: BLE001 - whatever broke, the version must not enter service
        raise click.ClickException(f"{task} {version} was stored but not put in service: its evaluation on "
                                   f"{split} failed ({type(exc).__name__}: {exc})") from exc
    evaluation = {"split": split, "documents": len(documents), "metrics": metrics}
    card = registry.card(task, version)
    card.metrics["evaluation"] = evaluation
    registry.update_card(card)
    return evaluation


def _put_in_service(registry: ModelRegistry, task: str, version: str, promote: bool,
                    evaluation: dict[str, Any]) -> None:
    """After its evaluation: the version goes in service if asked, or if none is."""
    if not promote and registry.current_version(task) is not None:
        return
    why = "--promote" if promote else "no version in service"
    registry.set_current(task, version, actor=f"paperloop train {task}",
                         reason=f"{why}; evaluated on {evaluation['documents']} {evaluation['split']} documents: "
                                f"Hmean {evaluation['metrics']['hmean']:.4f}")


def _report(trained: TrainedModel, version: str, registry: ModelRegistry, evaluation: dict[str, Any]) -> None:
    in_service = registry.current_version(trained.task) == version
    click.echo(f"{trained.task} {version}: validation Hmean {trained.metrics['hmean']:.4f}, ECE {trained.metrics['ece']}, "
               f"{evaluation['split']} Hmean {evaluation['metrics']['hmean']:.4f} on {evaluation['documents']} documents, "
               f"{trained.metrics['parameters']:,} parameters, {trained.metrics['train_seconds']} s"
               f"{' (in service)' if in_service else ' (not in service: paperloop models promote)'}")


@click.command("train")
@click.argument("task", type=click.Choice(["det", "rec", "ser", "re"]), required=False)
@click.option("--now", is_flag=True, help="Run the scheduled learning job now (train, gate on holdout, promote).")
@click.option("--force", is_flag=True, help="With --now: train even without enough new gold documents.")
@click.option("--epochs", type=int, default=None, help="Override kie.training.epochs.")
@click.option("--seed", type=int, default=None, help="Override kie.training.seed.")
@click.option("--promote", is_flag=True,
              help="Put the new version in service (once evaluated) even if one already is.")
@click.pass_obj
def train(cfg: PaperloopConfig, task: str | None, now: bool, force: bool, epochs: int | None, seed: int | None,
          promote: bool) -> None:
    """Train SER or RE on the gold labels and store the model in the registry.

    The new version is evaluated on the holdout split (on the validation documents when there is
    none) and goes in service only then, when none is or with --promote. A task whose gold labels
    cannot teach it anything (SER: no label but the "other" one; RE: no links) is refused.

    With --now, run the learning job instead: every task in `learning.tasks` (or only TASK, which
    may be det or rec too), gated on holdout.
    """
    if now:
        from service.learning import run_learning_job

        for run in run_learning_job(cfg, force, [task] if task else None):
            click.echo(f"{run.task}: {run.status} — {run.reason}"
                       + (f" (candidate {run.candidate})" if run.candidate else ""))
        return
    if task is None:
        raise click.UsageError("name a TASK (ser or re), or use --now")
    if task in ("det", "rec"):
        raise click.UsageError(f"{task} is fine-tuned by the learning job: paperloop train --now {task}")
    store = Store(cfg.paths.database)
    registry = ModelRegistry(cfg.paths.resolve("models"))
    labels = LabelStore(store)
    train_docs, val_docs = _train_and_validation(cfg, labels, task)
    settings = settings_from_config(cfg.kie, epochs, seed)
    click.echo(f"training {task} on {len(train_docs)} documents, validating on {len(val_docs)}")
    with_lines = cfg.kie.training.line_augmentation
    if task == "ser":
        trained = train_ser(train_docs, val_docs, cfg.kie.labels, settings, with_lines)
    else:
        kie = KieModels(registry)
        source = None
        if kie.refresh().get("ser"):  # validate RE on the labels SER in service gives, as in use
            source = lambda _examples: [kie.label(copy.deepcopy(d)) for d in val_docs]  # noqa: E731
        trained = train_re(train_docs, val_docs, cfg.kie.labels, settings, source, with_lines)
    version = register(trained, registry)
    evaluation = _evaluate(cfg, registry, task, version, labels.documents("holdout"), val_docs)
    _put_in_service(registry, task, version, promote, evaluation)
    _report(trained, version, registry, evaluation)


@click.command("eval")
@click.argument("task", type=click.Choice(["ser", "re"]))
@click.option("--split", type=click.Choice(["test", "holdout", "train"]), default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def evaluate(cfg: PaperloopConfig, task: str, split: str, as_json: bool) -> None:
    """Evaluate the SER / RE versions in service on a gold split (ground-truth segments)."""
    documents = LabelStore(Store(cfg.paths.database)).documents(split)
    if not documents:
        raise click.ClickException(f"no gold documents in the {split} split")
    kie = KieModels(ModelRegistry(cfg.paths.resolve("models")), multiple_values=cfg.kie.multiple_values,
                    link_threshold=cfg.kie.link_threshold)
    versions = kie.refresh()
    if task not in versions or "ser" not in versions:
        raise click.ClickException(f"no {task} model in service; run `paperloop train {task}` first")
    report = evaluate_gold(kie, documents, cfg.kie.labels, cfg.kie.other_label)
    result = report["ser"] if task == "ser" else report["re"]
    if as_json:
        click.echo(json.dumps({"versions": versions, **result}, indent=2))
        return
    click.echo(f"{task} {versions[task]} on {len(documents)} {split} documents (ground-truth segments)")
    for name, scores in result["scores"].items():
        click.echo(f"  {name:<10} P {scores['precision']:.4f}  R {scores['recall']:.4f}  Hmean {scores['hmean']:.4f}")
    click.echo(f"  ECE {result['ece']:.4f}")
