"""``paperloop train ser|re`` and ``paperloop eval ser|re``: the KIE models on the gold labels."""

from __future__ import annotations

import copy
import json

import click

from service.config import PaperloopConfig
from service.document import Document
from service.kie.evaluation import evaluate_gold
from service.kie.inference import KieModels
from service.kie.trainer import TrainedModel, register, settings_from_config, split_validation, train_re, train_ser
from service.labels import LabelStore
from service.registry import ModelRegistry
from service.store import Store

def _train_and_validation(cfg: PaperloopConfig, labels: LabelStore) -> tuple[list[Document], list[Document]]:
    """A seeded split of the train split; the holdout split is kept for evaluation and the gate."""
    train = labels.documents("train")
    if not train:
        raise click.ClickException("no gold documents in the train split; `paperloop import` some first")
    return split_validation(train, cfg.kie.training.validation_fraction, cfg.kie.training.seed)


def _report(trained: TrainedModel, version: str, registry: ModelRegistry) -> None:
    in_service = registry.current_version(trained.task) == version
    click.echo(f"{trained.task} {version}: validation Hmean {trained.metrics['hmean']:.4f}, ECE {trained.metrics['ece']}, "
               f"{trained.metrics['parameters']:,} parameters, {trained.metrics['train_seconds']} s"
               f"{' (in service)' if in_service else ' (not in service: paperloop models promote)'}")


@click.command("train")
@click.argument("task", type=click.Choice(["det", "rec", "ser", "re"]), required=False)
@click.option("--now", is_flag=True, help="Run the scheduled learning job now (train, gate on holdout, promote).")
@click.option("--force", is_flag=True, help="With --now: train even without enough new gold documents.")
@click.option("--epochs", type=int, default=None, help="Override kie.training.epochs.")
@click.option("--seed", type=int, default=None, help="Override kie.training.seed.")
@click.option("--promote", is_flag=True, help="Put the new version in service even if one already is.")
@click.pass_obj
def train(cfg: PaperloopConfig, task: str | None, now: bool, force: bool, epochs: int | None, seed: int | None,
          promote: bool) -> None:
    """Train SER or RE on the gold labels and store the model in the registry.

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
    train_docs, val_docs = _train_and_validation(cfg, LabelStore(store))
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
    version = register(trained, registry, promote)
    _report(trained, version, registry)


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
