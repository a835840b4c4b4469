"""A learning run's structured log and progress bars.

Each run writes one JSON object per line to ``<data>/learning-logs/<start time>.jsonl`` (``time``,
``task``, ``event`` and the event's fields) and mirrors every event to :mod:`logging`. Training
steps are logged every ``every`` steps and shown as a tqdm bar when stderr is a terminal.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from service.store import utc_now

log = logging.getLogger("service.learning")


class RunLog:
    """Append-only JSON-lines log of one learning run."""

    def __init__(self, folder: Path, started_at: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{started_at.replace(':', '-')}.jsonl"

    def event(self, task: str, event: str, **fields: Any) -> None:
        """Append one event (fields must be JSON-serializable) and log it."""
        record = {"time": utc_now(), "task": task, "event": event, **fields}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        log.info("learning %s %s %s", task, event, json.dumps(fields))

    def step_reporter(self, task: str, total: int | None, every: int = 25) -> tuple[Callable[..., None], Callable[[], None]]:
        """An ``on_step(step, loss)`` callback for a trainer and a ``close()`` for its bar.

        ``loss`` may be a float or a dict of loss terms (``loss`` is the total).
        """
        bar = tqdm(total=total, desc=f"learning {task}", disable=not sys.stderr.isatty(), leave=False)
        calls = 0

        def on_step(step: int, loss: float | dict[str, float]) -> None:
            nonlocal calls
            calls += 1
            total_loss = loss["loss"] if isinstance(loss, dict) else loss
            bar.update(1)
            bar.set_postfix(loss=f"{total_loss:.4f}")
            if calls % every == 0:
                self.event(task, "step", step=calls, loss=round(float(total_loss), 5))

        return on_step, bar.close
