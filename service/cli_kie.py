"""``paperloop train`` and ``paperloop eval``: the model tasks (service/tasks/) on the gold labels."""

from __future__ import annotations

import json
from typing import Any

import click

from service.config import PaperloopConfig
from service.document import Document
from service.kie.evaluation import evaluate_gold
from service.kie.inference import KieModels
from service.kie.candidates import TrainedModel, register
from service.labels import LabelStore
from service.registry import ModelRegistry
from service.store import Store
from service.tasks import TASK_NAMES, ModelTask, TrainOverrides, UnsupportedOverride, get_task


def _training_documents(cfg: PaperloopConfig, labels: LabelStore, task: ModelTask) -> list[Document]:
    """The train split (the holdout split is kept for evaluation and the gate).

    Refuses before any training when the gold labels hold nothing ``task`` could learn.
    """
    train = labels.documents("train")
    if not train:
        raise click.ClickException("no gold documents in the train split; `paperloop import` some first")
    missing = task.missing_signal(cfg, train)
    if missing is not None:
        raise click.ClickException(missing)
    return train


def _evaluate(cfg: PaperloopConfig, registry: ModelRegistry, task: str, version: str, holdout: list[Document],
              validation: list[Document]) -> dict[str, Any]:
    """Evaluate the stored version on holdout (or, without holdout, on validation) and record it on its card.

    Raises a click error when the evaluation cannot be completed: the version then stays out of service.
    """
    split, documents = ("holdout", holdout) if holdout else ("validation", validation)
    if not documents:
        raise click.ClickException(f"{task} {version} was stored but not put in service: no holdout or validation "
                                   f"documents to evaluate it on")
    try:
        metrics = get_task(task).evaluate(cfg, registry, version, documents)
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
    for line in per_label_lines(trained.metrics, evaluation):
        click.echo(line)


def per_label_lines(metrics: dict[str, Any], evaluation: dict[str, Any]) -> list[str]:
    """SER's validation P / R / Hmean for each label, and its Hmean on the evaluation split: a rare
    field that is never predicted shows as 0 here instead of hiding in the overall figure."""
    validation = metrics.get("validation")
    if not isinstance(validation, dict) or "overall" not in validation:
        return []
    split = evaluation["split"]
    lines = [f"  {'label':<16} {'val P':>7} {'val R':>7} {'val Hmean':>9} {split + ' Hmean':>14}"]
    for label, scores in validation.items():
        if label == "overall":
            continue
        held = evaluation["metrics"].get(f"{label}_hmean")
        lines.append(f"  {label:<16} {scores['precision']:>7.4f} {scores['recall']:>7.4f} {scores['hmean']:>9.4f} "
                     f"{'-' if held is None else f'{held:.4f}':>14}")
    return lines


@click.command("train")
@click.argument("task", type=click.Choice(TASK_NAMES), required=False)
@click.option("--now", is_flag=True, help="Run the scheduled learning job now (train, gate on holdout, promote).")
@click.option("--force", is_flag=True, help="With --now: train even without enough new gold documents.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Override the task's configured epochs (kie.training.epochs, learning.rec_epochs).")
@click.option("--seed", type=int, default=None, help="Override the task's training seed.")
@click.option("--promote", is_flag=True,
              help="Put the new version in service (once evaluated) even if one already is. Not with --now.")
@click.pass_obj
def train(cfg: PaperloopConfig, task: str | None, now: bool, force: bool, epochs: int | None, seed: int | None,
          promote: bool) -> None:
    """Train SER or RE on the gold labels and store the model in the registry.

    The new version is evaluated on the holdout split (on the validation documents when there is
    none) and goes in service only then, when none is or with --promote. A task whose gold labels
    cannot teach it anything (SER: no label but the "other" one; RE: no links) is refused.

    With --now, run the learning job instead: every task in `learning.tasks` (or only TASK, which
    may be det or rec too), gated on holdout. --epochs and --seed apply to every task it runs (a
    task without such a setting is refused); --promote is refused: the job promotes only through
    its gate (`paperloop models promote` overrides it by hand).
    """
    overrides = TrainOverrides(epochs=epochs, seed=seed)
    if now:
        _run_job_now(cfg, task, force, promote, overrides)
        return
    if task is None:
        raise click.UsageError("name a TASK (ser or re), or use --now")
    model_task = get_task(task)
    if not model_task.trained_by_command:
        raise click.UsageError(f"{task} is fine-tuned by the learning job: paperloop train --now {task}")
    store = Store(cfg.paths.database)
    registry = ModelRegistry(cfg.paths.resolve("models"))
    labels = LabelStore(store)
    documents = _training_documents(cfg, labels, model_task)
    try:
        model_task.check_overrides(overrides)
    except UnsupportedOverride as exc:
        raise click.UsageError(str(exc)) from exc
    fit_docs, val_docs = model_task.split(cfg, documents)
    click.echo(f"training {task} on {len(fit_docs)} documents, validating on {len(val_docs)}")
    fitted = model_task.fit(cfg, registry, documents, overrides, progress=True)
    version = register(fitted.trained, registry)
    evaluation = _evaluate(cfg, registry, task, version, labels.documents("holdout"), fitted.validation_documents)
    _put_in_service(registry, task, version, promote, evaluation)
    _report(fitted.trained, version, registry, evaluation)
    if task == "ser" and cfg.fields.fields and registry.current_version("ser") == version:
        _calibrate_fields(cfg)


def _calibrate_fields(cfg: PaperloopConfig) -> None:
    """Straight-through thresholds for the new SER version, from the holdout split (when there is one)."""
    from service.cli_fields import format_calibration
    from service.fields.holdout import calibrate_in_service

    try:
        click.echo(format_calibration(calibrate_in_service(cfg)))
    except ValueError as exc:
        click.echo(f"field thresholds not set ({exc}): every document goes to review until "
                   f"`paperloop fields calibrate` has run")


def _run_job_now(cfg: PaperloopConfig, task: str | None, force: bool, promote: bool,
                 overrides: TrainOverrides) -> None:
    from service.learning import run_learning_job

    if promote:
        raise click.UsageError("--promote does not apply with --now: the learning job promotes only through its "
                               "holdout gate (use `paperloop models promote TASK VERSION` to override it)")
    try:
        runs = run_learning_job(cfg, force, [task] if task else None, overrides)
    except UnsupportedOverride as exc:
        raise click.UsageError(f"{exc}; name a TASK that has it (e.g. paperloop train --now ser --epochs 5)") from exc
    for run in runs:
        click.echo(f"{run.task}: {run.status} — {run.reason}" + (f" (candidate {run.candidate})" if run.candidate else ""))


@click.command("eval")
@click.argument("task", type=click.Choice(TASK_NAMES))
@click.option("--split", type=click.Choice(["test", "holdout", "train"]), default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def evaluate(cfg: PaperloopConfig, task: str, split: str, as_json: bool) -> None:
    """Evaluate the version of TASK in service on a gold split (SER / RE: on ground-truth segments,
    per label; det / rec: the learning gate's metrics)."""
    documents = LabelStore(Store(cfg.paths.database)).documents(split)
    if not documents:
        raise click.ClickException(f"no gold documents in the {split} split")
    registry = ModelRegistry(cfg.paths.resolve("models"))
    if task in ("ser", "re"):
        _evaluate_kie(cfg, registry, task, split, documents, as_json)
        return
    version = registry.current_version(task)
    if version is None:
        raise click.ClickException(f"no {task} model in service; run `paperloop models install-base`")
    metrics = get_task(task).evaluate(cfg, registry, version, documents)
    if as_json:
        click.echo(json.dumps({"versions": {task: version}, "metrics": metrics}, indent=2))
        return
    click.echo(f"{task} {version} on {len(documents)} {split} documents")
    for name, value in metrics.items():
        click.echo(f"  {name:<16} {value:.4f}")


def _evaluate_kie(cfg: PaperloopConfig, registry: ModelRegistry, task: str, split: str, documents: list[Document],
                  as_json: bool) -> None:
    kie = KieModels(registry, multiple_values=cfg.kie.multiple_values, link_threshold=cfg.kie.link_threshold)
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
