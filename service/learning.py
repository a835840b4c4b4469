"""The learning loop: retrain det, rec, SER and RE on new gold labels, gate on the holdout set, promote.

A run (scheduled inside ``paperloop serve`` by APScheduler, or ``paperloop train --now``) does, per
task (``learning.tasks``, in the order det, rec, SER, RE): skip when fewer than
``learning.min_new_documents`` gold documents arrived since the task's last run; train a candidate with the same code as ``paperloop train``; evaluate candidate and the
version in service on the frozen ``holdout`` split (never trained on, never used for model
selection); promote only when the Hmean improves by ``margin`` and no other metric of the task
falls by more than ``tolerance``. Promotion is the atomic switch of ``current``; a failed or killed
run leaves the versions in service untouched. Every run is recorded in ``learning_runs`` and
writes a structured log (JSON lines: start, training progress, both evaluations, the decision)
to ``<data>/learning-logs/``; training shows progress bars when stderr is a terminal.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from service.config import PaperloopConfig, dump_config
from service.document import Document
from service.kie.evaluation import evaluate_gold
from service.kie.inference import KieModels
from service.kie.trainer import (NoTrainingSignalError, check_training_signal, next_version, register,
                                  settings_from_config, split_validation, train_re, train_ser)
from service.labels import LabelStore
from service.ocr_learning.det import det_metrics, train_det_candidate
from service.ocr_learning.pages import gold_pages
from service.ocr_learning.rec import line_samples, rec_metrics, train_rec_candidate
from service.registry import ModelRegistry
from service.run_log import RunLog
from service.store import Store, utc_now

log = logging.getLogger(__name__)
JOB_ID = "paperloop-learning"


@dataclass
class TaskRun:
    """What one run did for one task."""

    task: str
    status: str  # "promoted" | "rejected" | "skipped" | "failed"
    reason: str
    candidate: str | None = None
    current: str | None = None
    new_documents: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


def holdout_metrics(cfg: PaperloopConfig, registry: ModelRegistry, task: str, pinned: dict[str, str],
                    documents: list[Document]) -> dict[str, float]:
    """The task's metrics on gold documents with the given versions, the main one first.

    det, SER, RE: Hmean first. rec: line accuracy (exact, spaces count), then character accuracy.
    """
    data_dir = cfg.paths.resolve("data")
    if task == "det":
        return det_metrics(cfg, registry, pinned["det"], list(gold_pages(documents, data_dir)))
    if task == "rec":
        return rec_metrics(cfg, registry, pinned["rec"], line_samples(documents, data_dir))
    kie = KieModels(registry, multiple_values=cfg.kie.multiple_values, link_threshold=cfg.kie.link_threshold,
                    pinned=pinned)
    report = evaluate_gold(kie, documents, cfg.kie.labels, cfg.kie.other_label)
    if task == "ser":
        per_label = {f"{label}_hmean": report["ser"]["scores"][label]["hmean"]
                     for label in cfg.kie.labels if label != cfg.kie.other_label}
        return {"hmean": report["ser"]["hmean"], **per_label}
    links = report["re"]["scores"]["links"]
    return {"hmean": report["re"]["hmean"], "precision": links["precision"], "recall": links["recall"]}


def gate(candidate: dict[str, float], current: dict[str, float] | None, margin: float,
         tolerance: float) -> tuple[bool, str]:
    """Whether a candidate may replace the version in service, and why.

    The first metric is the task's main one: it must improve by ``margin``; no other may fall by
    more than ``tolerance``.
    """
    if current is None:
        return True, "no version in service"
    main = next(iter(candidate))
    gain = candidate[main] - current[main]
    if gain < margin:
        return False, f"{main} {candidate[main]:.4f} vs {current[main]:.4f} ({gain:+.4f} < margin {margin})"
    drops = [f"{k} {current[k]:.4f} → {candidate.get(k, 0.0):.4f}" for k in current
             if k != main and candidate.get(k, 0.0) < current[k] - tolerance]
    if drops:
        return False, f"{main} +{gain:.4f} but beyond tolerance {tolerance}: {', '.join(drops)}"
    return True, f"{main} {current[main]:.4f} → {candidate[main]:.4f}"


def new_documents_since(store: Store, since: str | None) -> int:
    """Gold documents of the train split added or changed after ``since`` (all when ``None``)."""
    with store.transaction() as db:
        if since is None:
            return db.execute("SELECT COUNT(*) FROM gold_documents WHERE split = 'train'").fetchone()[0]
        return db.execute("SELECT COUNT(*) FROM gold_documents WHERE split = 'train' AND updated_at > ?",
                          [since]).fetchone()[0]


def last_trained_at(store: Store, task: str) -> str | None:
    """Start time of the task's last run that trained a candidate."""
    with store.transaction() as db:
        row = db.execute("SELECT MAX(started_at) FROM learning_runs WHERE task = ? AND status IN ('promoted', 'rejected')",
                         [task]).fetchone()
    return row[0] if row else None


def _record(store: Store, run: TaskRun, started_at: str) -> None:
    with store.transaction() as db:
        db["learning_runs"].insert({
            "task": run.task, "started_at": started_at, "finished_at": utc_now(), "status": run.status,
            "reason": run.reason, "candidate": run.candidate, "current": run.current,
            "new_documents": run.new_documents, "metrics": json.dumps(run.metrics),
        })


def _train_candidate(cfg: PaperloopConfig, registry: ModelRegistry, task: str, train: list[Document],
                     run_log: RunLog) -> str:
    if task in ("det", "rec"):
        return _train_ocr_candidate(cfg, registry, task, train, run_log)
    return _train_kie_candidate(cfg, registry, task, train)


def _train_ocr_candidate(cfg: PaperloopConfig, registry: ModelRegistry, task: str, train: list[Document],
                         run_log: RunLog) -> str:
    data_dir = cfg.paths.resolve("data")
    on_step, close = run_log.step_reporter(task, cfg.learning.det_steps if task == "det" else None)
    try:
        if task == "det":
            return train_det_candidate(cfg, registry, list(gold_pages(train, data_dir)), next_version(registry, "det"),
                                       on_step)
        return train_rec_candidate(cfg, registry, line_samples(train, data_dir), next_version(registry, "rec"), on_step)
    finally:
        close()


def _train_kie_candidate(cfg: PaperloopConfig, registry: ModelRegistry, task: str, train: list[Document]) -> str:
    settings = settings_from_config(cfg.kie)
    fit, val = split_validation(train, cfg.kie.training.validation_fraction, settings.seed)
    with_lines, progress = cfg.kie.training.line_augmentation, sys.stderr.isatty()
    if task == "ser":
        trained = train_ser(fit, val, cfg.kie.labels, settings, with_lines, progress=progress)
    else:
        kie = KieModels(registry)
        source = (lambda _examples: [kie.label(_copy(d)) for d in val]) if kie.refresh().get("ser") else None
        trained = train_re(fit, val, cfg.kie.labels, settings, source, with_lines, progress=progress)
    return register(trained, registry)


def _copy(document: Document) -> Document:
    return Document.from_dict(document.to_dict())


def run_task(cfg: PaperloopConfig, store: Store, registry: ModelRegistry, task: str, force: bool = False,
             run_log: RunLog | None = None) -> TaskRun:
    """One task of a learning run (see the module docstring); never raises for a training failure."""
    started_at = utc_now()
    run_log = run_log or RunLog(cfg.paths.resolve("data") / "learning-logs", started_at)
    labels = LabelStore(store)
    new = new_documents_since(store, last_trained_at(store, task))
    current = registry.current_version(task)
    holdout = labels.documents("holdout")
    run_log.event(task, "start", in_service=current, new_documents=new, holdout_documents=len(holdout))
    train = labels.documents("train")
    if not force and new < cfg.learning.min_new_documents:
        run = TaskRun(task, "skipped", f"{new} new gold documents < {cfg.learning.min_new_documents}", None, current, new)
    elif not holdout:
        run = TaskRun(task, "skipped", "no holdout documents to evaluate on", None, current, new)
    elif (no_signal := _missing_signal(cfg, task, train)) is not None:
        run = TaskRun(task, "skipped", no_signal, None, current, new)
    else:
        actor = f"learning run {started_at}"
        run = _train_and_gate(cfg, registry, task, train, holdout, current, new, run_log, actor)
    _record(store, run, started_at)
    run_log.event(task, run.status, reason=run.reason, candidate=run.candidate, metrics=run.metrics)
    return run


def _missing_signal(cfg: PaperloopConfig, task: str, train: list[Document]) -> str | None:
    """Why SER / RE would learn nothing from the train split, or ``None`` when they can."""
    if task not in ("ser", "re"):
        return None
    try:
        check_training_signal(task, train, cfg.kie.labels, cfg.kie.other_label)
    except NoTrainingSignalError as exc:
        return str(exc)
    return None


def _train_and_gate(cfg: PaperloopConfig, registry: ModelRegistry, task: str, train: list[Document],
                    holdout: list[Document], current: str | None, new: int, run_log: RunLog, actor: str) -> TaskRun:
    """Train a candidate (stored, not in service), evaluate it, and promote it only if the gate accepts.

    A first version needs no comparison, but it needs a completed evaluation like any other.
    """
    candidate = None
    try:
        candidate = _train_candidate(cfg, registry, task, train, run_log)
        run_log.event(task, "trained", candidate=candidate, card=registry.card(task, candidate).metrics)
        ours = holdout_metrics(cfg, registry, task, {task: candidate}, holdout)
        theirs = holdout_metrics(cfg, registry, task, {task: current}, holdout) if current else None
        run_log.event(task, "evaluated", candidate=ours, in_service=theirs)
    except Exception as exc:  # noqa: BLE001 - a failed run must leave the service untouched
        log.exception("learning %s failed", task)
        return TaskRun(task, "failed", f"{type(exc).__name__}: {exc}", candidate, current, new)
    accepted, reason = gate(ours, theirs, cfg.learning.margin, cfg.learning.tolerance)
    card = registry.card(task, candidate)
    card.metrics["holdout"] = {"candidate": ours, "in_service": theirs, "in_service_version": current,
                               "promoted": accepted, "reason": reason, "documents": len(holdout)}
    registry.update_card(card)
    if accepted:
        registry.set_current(task, candidate, reason=f"holdout gate: {reason}", actor=actor)
    return TaskRun(task, "promoted" if accepted else "rejected", reason, candidate, current, new,
                   {"candidate": ours, "in_service": theirs})


def run_learning_job(cfg: PaperloopConfig, force: bool = False, tasks: list[str] | None = None) -> list[TaskRun]:
    """A whole learning run over ``tasks`` (default: ``learning.tasks``), with one structured log."""
    store = Store(cfg.paths.database)
    registry = ModelRegistry(cfg.paths.resolve("models"))
    run_log = RunLog(cfg.paths.resolve("data") / "learning-logs", utc_now())
    # det and rec first (SER reads their output at inference), SER before RE (RE learns from SER's output)
    return [run_task(cfg, store, registry, task, force, run_log)
            for task in ("det", "rec", "ser", "re") if task in (tasks or cfg.learning.tasks)]


def scheduled_learning_job(config_yaml: str) -> int:
    """The scheduler's job: run ``paperloop train --now`` in a child process at low CPU priority.

    A child process keeps the daemon serving while training, and a crash or kill of the training
    cannot take the daemon down or leave a half-switched model.
    """
    nice = PaperloopConfig.model_validate(yaml.safe_load(config_yaml)).learning.nice
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(config_yaml)
    try:
        result = subprocess.run([sys.executable, "-m", "service", "--config", handle.name, "train", "--now"],
                                preexec_fn=lambda: os.nice(nice), check=False)
    finally:
        Path(handle.name).unlink(missing_ok=True)
    log.info("learning job finished with exit code %s", result.returncode)
    return result.returncode


def start_scheduler(cfg: PaperloopConfig) -> Any:
    """Schedule the learning job in a background APScheduler with its job store in paperloop.db."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    learning = cfg.learning
    trigger = (CronTrigger.from_crontab(learning.cron) if learning.trigger == "cron"
               else IntervalTrigger(hours=learning.interval_hours))
    cfg.paths.database.parent.mkdir(parents=True, exist_ok=True)
    scheduler = BackgroundScheduler(jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{cfg.paths.database}")})
    scheduler.add_job("service.learning:scheduled_learning_job", trigger, args=[dump_config(cfg)], id=JOB_ID,
                      replace_existing=True, max_instances=1, coalesce=True,
                      misfire_grace_time=learning.misfire_grace_seconds)
    scheduler.start()
    return scheduler
