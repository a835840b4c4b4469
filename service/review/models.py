"""Model versions and their evaluation history, as the review app's Models page shows them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from service.registry import ModelRegistry, RegistryError
from service.store import Store


def model_versions(registry: ModelRegistry) -> list[dict[str, Any]]:
    """Every version of every task, oldest first, with its card and whether it is in service."""
    from service.registry import TASKS

    rows = []
    for task in TASKS:
        try:
            current = registry.current_version(task)
            versions = registry.versions(task)
        except (RegistryError, OSError, ValueError):
            continue
        for version in versions:
            card = registry.card(task, version)
            rows.append({"task": task, "version": version, "created_at": card.created_at, "parent": card.parent,
                         "model_name": card.model_name, "source": card.source, "data_counts": card.data_counts,
                         "metrics": card.metrics, "in_service": version == current})
    return rows


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def hmean_history(registry: ModelRegistry) -> list[dict[str, Any]]:
    """Every evaluation Hmean recorded in a card (any metric whose name ends in ``hmean``, at any
    depth, e.g. ``hmean`` or ``holdout.hmean``), one row per version and metric."""
    rows = []
    for version in model_versions(registry):
        for metric, value in _flatten(version["metrics"]).items():
            if metric.lower().split(".")[-1].endswith("hmean") and isinstance(value, (int, float)):
                rows.append({"task": version["task"], "version": version["version"], "metric": metric,
                             "hmean": float(value), "created_at": version["created_at"],
                             "series": f"{version['task']} · {metric}"})
    return rows


def learning_history(store: Store, limit: int = 200) -> list[dict[str, Any]]:
    """The learning job's runs, newest first: task, decision and why, versions and data counts."""
    with store.transaction() as db:
        rows = db.execute("SELECT started_at, finished_at, task, status, reason, candidate, current, new_documents "
                          "FROM learning_runs ORDER BY id DESC LIMIT ?", [limit]).fetchall()
    keys = ("started_at", "finished_at", "task", "status", "reason", "candidate", "in_service", "new_documents")
    return [dict(zip(keys, row)) for row in rows]


@dataclass(frozen=True)
class ActiveLearningResult:
    """The latest ``bench/active.py`` result: its summary line, date, and learning-curve image (if any)."""

    line: str
    date: str
    curve: Path | None


def active_learning_result(results_dir: Path) -> ActiveLearningResult | None:
    """Read ``active.json`` (and ``active.png``) from ``results_dir``; ``None`` when there is no readable result."""
    try:
        report = json.loads((results_dir / "active.json").read_text(encoding="utf-8"))
        line, date = str(report["line"]), str(report["date"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    curve = results_dir / "active.png"
    return ActiveLearningResult(line, date, curve if curve.is_file() else None)
