"""The model registry: ``models/<task>/<version>/`` folders and a ``current`` pointer per task.

Each version folder is a PaddleOCR inference model (``inference.pdmodel``, ``inference.pdiparams``,
``inference.yml``) plus ``card.json`` (parent version, creation time, data counts, metrics).
``models/<task>/current`` is a one-line text file naming the version in service; it is replaced
atomically, so a reader sees either the old or the new version, never a half-written one.
``models/<task>/history.jsonl`` records every change of ``current`` (append-only JSON lines: task,
from, to, action, reason, actor, time); a rollback walks back along it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from service.tasks import TASK_NAMES

log = logging.getLogger(__name__)
# The model tasks (service/tasks/), plus "cls", the text-line orientation classifier shipped with the
# base models for PaddleOCR pipelines that want it: stored, never run by Paperloop, never trained.
TASKS = TASK_NAMES
AUXILIARY_MODELS = ("cls",)
BASE_VERSION = "base"


HISTORY_FILE = "history.jsonl"


class RegistryError(RuntimeError):
    """The registry is missing a task, a version or a file."""


@dataclass
class ModelCard:
    """What is known about one model version."""

    task: str
    version: str
    model_name: str
    parent: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    source: str = ""
    data_counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelCard":
        """Build a card from its JSON form."""
        return cls(**data)


def _atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _replaced_versions(history: list[dict[str, Any]]) -> list[str]:
    """The versions a rollback would walk back through, most recent last.

    Each promotion pushes the version it replaced; each rollback pops the one it put back.
    """
    stack: list[str] = []
    for record in history:
        if record.get("action") == "rollback":
            if stack and stack[-1] == record["to"]:
                stack.pop()
        elif record.get("from"):
            stack.append(record["from"])
    return stack


class ModelRegistry:
    """Versioned model folders under one root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def task_dir(self, task: str) -> Path:
        """Folder holding every version of a task."""
        if task not in TASKS + AUXILIARY_MODELS:
            raise RegistryError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        return self.root / task

    def versions(self, task: str) -> list[str]:
        """Versions of a task, oldest first (by card creation time)."""
        task_dir = self.task_dir(task)
        if not task_dir.is_dir():
            return []
        found = [p.name for p in task_dir.iterdir() if p.is_dir() and (p / "card.json").is_file()]
        return sorted(found, key=lambda v: self.card(task, v).created_at)

    def current_version(self, task: str) -> str | None:
        """The version in service, or ``None`` when the task has none."""
        pointer = self.task_dir(task) / "current"
        if not pointer.is_file():
            return None
        return pointer.read_text(encoding="utf-8").strip() or None

    def version_dir(self, task: str, version: str) -> Path:
        """Folder of one version; raises when it does not exist."""
        path = self.task_dir(task) / version
        if not (path / "card.json").is_file():
            raise RegistryError(f"{task} has no version {version!r} in {self.root}")
        return path

    def current_dir(self, task: str) -> tuple[str, Path]:
        """(version, folder) of the version in service; raises when there is none."""
        version = self.current_version(task)
        if version is None:
            raise RegistryError(
                f"no {task} model in service under {self.root}; run `paperloop models install-base`"
            )
        return version, self.version_dir(task, version)

    def card(self, task: str, version: str) -> ModelCard:
        """The model card of one version."""
        path = self.task_dir(task) / version / "card.json"
        return ModelCard.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def update_card(self, card: ModelCard) -> None:
        """Rewrite an existing version's card (e.g. to record the evaluation that gated it)."""
        self.version_dir(card.task, card.version)
        _atomic_write_text(self.task_dir(card.task) / card.version / "card.json", json.dumps(asdict(card), indent=2))

    def inference_config(self, task: str, version: str) -> dict[str, Any]:
        """The version's ``inference.yml`` as a dict."""
        path = self.version_dir(task, version) / "inference.yml"
        return yaml.safe_load(path.read_text(encoding="utf-8"))

    def set_current(self, task: str, version: str, *, reason: str, actor: str) -> None:
        """Put a version in service (atomic switch of the pointer) and record why and by whom.

        ``actor`` names who or what made the change (a user, a learning run, a command);
        putting the version already in service changes nothing and records nothing.
        """
        with self._locked(task):
            self._switch(task, version, "promote", reason, actor)

    def history(self, task: str) -> list[dict[str, Any]]:
        """Every recorded change of the task's ``current``, oldest first."""
        path = self.task_dir(task) / HISTORY_FILE
        if not path.is_file():
            return []
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # e.g. a line torn by a crash mid-write: skipped, not fatal
                if line.strip():
                    log.warning("%s line %d is not JSON; skipped", path, number)
        return records

    def rollback(self, task: str, *, actor: str, reason: str = "rollback") -> tuple[str, str]:
        """Put back the version that was in service before the current one took over.

        Rolling back again walks further back along the history; the rollback is recorded too.
        Returns (version taken out, version put back).
        """
        with self._locked(task):
            current = self.current_version(task)
            previous = _replaced_versions(self.history(task))
            if current is None or not previous:
                raise RegistryError(f"{task}: nothing to roll back to; no earlier version in service is recorded "
                                    f"in {self.task_dir(task) / HISTORY_FILE}")
            self._switch(task, previous[-1], "rollback", reason, actor)
            return current, previous[-1]

    @contextmanager
    def _locked(self, task: str) -> Iterator[None]:
        """One change of ``current`` at a time per task, across processes."""
        task_dir = self.task_dir(task)
        task_dir.mkdir(parents=True, exist_ok=True)
        with open(task_dir / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _switch(self, task: str, version: str, action: str, reason: str, actor: str) -> None:
        """Switch the pointer and append the change to the history (the caller holds the lock)."""
        self.version_dir(task, version)
        previous = self.current_version(task)
        _atomic_write_text(self.task_dir(task) / "current", version + "\n")
        if previous == version:
            return
        record = {"task": task, "from": previous, "to": version, "action": action, "reason": reason,
                  "actor": actor, "at": datetime.now(timezone.utc).isoformat()}
        with open(self.task_dir(task) / HISTORY_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def add_version(self, card: ModelCard, files: dict[str, Path], inference_yml: dict[str, Any]) -> Path:
        """Store a new version from model files (name in the folder → source path).

        The folder is assembled under a temporary name and renamed into place, so a version
        either exists completely or not at all.
        """
        task_dir = self.task_dir(card.task)
        task_dir.mkdir(parents=True, exist_ok=True)
        final = task_dir / card.version
        if final.exists():
            raise RegistryError(f"{card.task} version {card.version!r} already exists")
        staging = Path(tempfile.mkdtemp(dir=task_dir, prefix=f".{card.version}."))
        staging.chmod(0o755)
        try:
            for name, source in files.items():
                shutil.copy2(source, staging / name)
            (staging / "inference.yml").write_text(
                yaml.safe_dump(inference_yml, sort_keys=False, allow_unicode=True), encoding="utf-8"
            )
            (staging / "card.json").write_text(json.dumps(asdict(card), indent=2), encoding="utf-8")
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return final

    def in_service(self) -> dict[str, str | None]:
        """Version in service for every task."""
        return {task: self.current_version(task) for task in TASKS}
