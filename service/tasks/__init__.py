"""Model tasks: one object per task declares what the rest of Paperloop needs to know about it.

A task (``service/tasks/<name>.py``, exposing ``TASK``) holds its prediction stage (loaded models in,
results out, no I/O: the pipeline owns files and the store), says how it turns gold documents into
training samples, how it trains a candidate from the version in service, its metrics (main one
first) and gate rule, its default hyper-parameters, and how many gold items a document holds for
it. The learning job and its gate, the registry, the CLI (``train``, ``eval``, ``models``) and the
review app's summaries iterate over :func:`all_tasks`.

Adding a task is one new module here and one line in :data:`TASK_NAMES`. Module tops stay light
(no Paddle): the config imports the tasks' defaults.
"""

from __future__ import annotations

import importlib

from service.tasks.base import GateRule, ModelTask, Prediction, TrainOverrides, UnsupportedOverride

# The registered tasks, in the order the pipeline runs them and the learning job trains them
# (grouping reads det/rec output, SER the entities it forms; RE learns from SER's output).
TASK_NAMES: tuple[str, ...] = ("det", "rec", "group", "ser", "re")


def get_task(name: str) -> ModelTask:
    """The task object registered under ``name``."""
    if name not in TASK_NAMES:
        raise KeyError(f"unknown task {name!r}; expected one of {', '.join(TASK_NAMES)}")
    return importlib.import_module(f"service.tasks.{name}").TASK


def all_tasks() -> list[ModelTask]:
    """Every registered task, in pipeline order."""
    return [get_task(name) for name in TASK_NAMES]


__all__ = ["TASK_NAMES", "GateRule", "ModelTask", "Prediction", "TrainOverrides", "UnsupportedOverride", "all_tasks",
           "get_task"]
