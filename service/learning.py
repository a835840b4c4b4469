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
from service.labels import LabelStore
from service.registry import ModelRegistry
from service.run_log import RunLog
from service.store import Store, utc_now
from service.tasks import GateRule, TrainOverrides, all_tasks, get_task

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


def gate(candidate: dict[str, float], current: dict[str, float] | None, margin: float,
         tolerance: float) -> tuple[bool, str]:
    """Whether a candidate may replace the version in service, and why (:class:`GateRule`)."""
    return GateRule(margin, tolerance).decide(candidate, current)


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


def last_training(store: Store, registry: ModelRegistry, task: str) -> tuple[str | None, str | None]:
    """(version, time) of the task's last training by the learning job.

    Gold documents of the train split changed after that time are the task's *new* documents, for
    the job's ``min_new_documents`` and for the review app's summary alike; with no run yet, every
    train document is new (time ``None``). The version is that run's candidate, or, before any run,
    the newest version in the registry (the base models, or one `paperloop train` made).
    """
    run_at = last_trained_at(store, task)
    if run_at is not None:
        with store.transaction() as db:
            row = db.execute("SELECT candidate FROM learning_runs WHERE task = ? AND started_at = ?",
                             [task, run_at]).fetchone()
        return (row[0] if row else None), run_at
    versions = registry.versions(task)
    return (versions[-1] if versions else None), None


def _record(store: Store, run: TaskRun, started_at: str) -> None:
    with store.transaction() as db:
        db["learning_runs"].insert({
            "task": run.task, "started_at": started_at, "finished_at": utc_now(), "status": run.status,
            "reason": run.reason, "candidate": run.candidate, "current": run.current,
            "new_documents": run.new_documents, "metrics": json.dumps(run.metrics),
        })


def run_task(cfg: PaperloopConfig, store: Store, registry: ModelRegistry, task: str, force: bool = False,
             run_log: RunLog | None = None, overrides: TrainOverrides = TrainOverrides()) -> TaskRun:
    """One task of a learning run (see the module docstring); never raises for a training failure."""
    started_at = utc_now()
    run_log = run_log or RunLog(cfg.paths.resolve("data") / "learning-logs", started_at)
    labels = LabelStore(store)
    new = new_documents_since(store, last_training(store, registry, task)[1])
    current = registry.current_version(task)
    holdout = labels.documents("holdout")
    run_log.event(task, "start", in_service=current, new_documents=new, holdout_documents=len(holdout))
    train = labels.documents("train")
    if not force and new < cfg.learning.min_new_documents:
        run = TaskRun(task, "skipped", f"{new} new gold documents < {cfg.learning.min_new_documents}", None, current, new)
    elif not holdout:
        run = TaskRun(task, "skipped", "no holdout documents to evaluate on", None, current, new)
    elif (no_signal := get_task(task).missing_signal(cfg, train)) is not None:
        run = TaskRun(task, "skipped", no_signal, None, current, new)
    else:
        actor = f"learning run {started_at}"
        run = _train_and_gate(cfg, registry, task, train, holdout, current, new, run_log, actor, overrides)
    _record(store, run, started_at)
    run_log.event(task, run.status, reason=run.reason, candidate=run.candidate, metrics=run.metrics)
    return run


def _train_and_gate(cfg: PaperloopConfig, registry: ModelRegistry, task: str, train: list[Document],
                    holdout: list[Document], current: str | None, new: int, run_log: RunLog, actor: str,
                    overrides: TrainOverrides) -> TaskRun:
    """Train a candidate (stored, not in service), evaluate it, and promote it only if the gate accepts.

    A first version needs no comparison, but it needs a completed evaluation like any other.
    """
    model_task, candidate = get_task(task), None
    try:
        candidate = model_task.train_candidate(cfg, registry, train, run_log, overrides)
        run_log.event(task, "trained", candidate=candidate, card=registry.card(task, candidate).metrics)
        ours = model_task.evaluate(cfg, registry, candidate, holdout)
        theirs = model_task.evaluate(cfg, registry, current, holdout) if current else None
        run_log.event(task, "evaluated", candidate=ours, in_service=theirs)
    except Exception as exc:  # noqa: BLE001 - a failed run must leave the service untouched
        log.exception("learning %s failed", task)
        return TaskRun(task, "failed", f"{type(exc).__name__}: {exc}", candidate, current, new)
    accepted, reason = model_task.gate_rule(cfg, holdout).decide(ours, theirs)
    card = registry.card(task, candidate)
    card.metrics["holdout"] = {"candidate": ours, "in_service": theirs, "in_service_version": current,
                               "promoted": accepted, "reason": reason, "documents": len(holdout)}
    registry.update_card(card)
    if accepted:
        registry.set_current(task, candidate, reason=f"holdout gate: {reason}", actor=actor)
    return TaskRun(task, "promoted" if accepted else "rejected", reason, candidate, current, new,
                   {"candidate": ours, "in_service": theirs})


def run_learning_job(cfg: PaperloopConfig, force: bool = False, tasks: list[str] | None = None,
                     overrides: TrainOverrides = TrainOverrides()) -> list[TaskRun]:
    """A whole learning run over ``tasks`` (default: ``learning.tasks``), with one structured log.

    Tasks run in the registered order (det and rec before SER, which reads their output; SER
    before RE, which learns from SER's). ``overrides`` must suit every selected task
    (:class:`UnsupportedOverride` otherwise, before anything is trained).
    """
    selected = [task for task in all_tasks() if task.name in (tasks or cfg.learning.tasks)]
    for task in selected:
        task.check_overrides(overrides)
    store = Store(cfg.paths.database)
    registry = ModelRegistry(cfg.paths.resolve("models"))
    run_log = RunLog(cfg.paths.resolve("data") / "learning-logs", utc_now())
    runs = [run_task(cfg, store, registry, task.name, force, run_log, overrides) for task in selected]
    if cfg.fields.fields and any(run.status == "promoted" for run in runs):
        recalibrate_fields(cfg, run_log)
    return runs


def recalibrate_fields(cfg: PaperloopConfig, run_log: RunLog) -> None:
    """Set the fields' routing thresholds again on the holdout, now that a model in the pipeline changed
    (``routing.target_accuracy``); a failure is logged and leaves the previous thresholds."""
    from service.fields.holdout import calibrate_in_service

    try:
        record = calibrate_in_service(cfg)
    except Exception as exc:  # noqa: BLE001 - the promoted models stay; only the thresholds are old
        log.warning("field thresholds not recalibrated: %s", exc)
        run_log.event("fields", "calibration_failed", reason=f"{type(exc).__name__}: {exc}")
        return
    run_log.event("fields", "calibrated", thresholds=record.get("thresholds"))


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
