"""What every model task declares: samples, training, metrics, gate rule, defaults."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping, Protocol, Sequence

if TYPE_CHECKING:
    from service.config import PaperloopConfig
    from service.document import Document
    from service.registry import ModelRegistry
    from service.run_log import RunLog


@dataclass
class Prediction:
    """One document on its way through the prediction stages: inputs in, results out, no files.

    The pipeline owns files and the store: it rasterizes each page into ``images`` (page number →
    H×W×3 BGR; only the page being read, to bound memory), runs the page-level stages, then the
    document-level ones, and stores ``document``.
    """

    document: "Document"
    versions: dict[str, str]  # the model versions in use, recorded on every result
    images: dict[int, Any] = field(default_factory=dict)
    page_images: dict[int, Any] = field(default_factory=dict)  # RGB pages kept for models that see images
    boxes: dict[int, list[Any]] = field(default_factory=dict)  # det's boxes per page, for rec
    label_probabilities: Any = None  # SER's (segments × labels) probabilities, for RE


class ServiceModels(Protocol):
    """The loaded models the stages run (see :class:`service.pipeline.ServiceModels`)."""

    ocr: Any
    kie: Any


class UnsupportedOverride(ValueError):
    """A training option was given to a task that has no such setting."""


@dataclass(frozen=True)
class TrainOverrides:
    """Options of ``paperloop train`` that replace configured settings for one run."""

    epochs: int | None = None
    seed: int | None = None

    def given(self) -> set[str]:
        """Names of the options that were set."""
        return {name for name in ("epochs", "seed") if getattr(self, name) is not None}


@dataclass(frozen=True)
class GateRule:
    """When a candidate may replace the version in service: the main metric (the first) must improve
    by ``margin``; no other metric may fall by more than ``tolerance``, except the main metric's own
    components (precision, recall of an Hmean), which may fall by ``tolerance`` plus the main gain.

    Precision and recall trade against each other inside the Hmean: an RE model going from 1 link
    found in 130 at precision 0.67 to 40 at 0.54 is a better model. A label's own Hmean is held to
    ``tolerance``: a field must not vanish for the sake of the overall figure.

    On a small holdout a side metric moves by chance: with 15 receipts one total more or less read
    moves ``total_hmean`` by about 0.07. ``support`` gives, per side metric, how many gold items it
    is computed from; such a metric may also fall by ``noise_z`` standard errors of a proportion
    measured on that many items (:func:`sampling_error`), so only a fall beyond the holdout's noise
    refuses a candidate that improved the main metric. Metrics without a support keep the plain rule.
    """

    margin: float
    tolerance: float
    components: frozenset[str] = frozenset({"precision", "recall"})
    support: Mapping[str, int] = field(default_factory=dict)
    noise_z: float = 0.0

    def decide(self, candidate: dict[str, float], current: dict[str, float] | None) -> tuple[bool, str]:
        """Whether the candidate passes, and why."""
        if current is None:
            return True, "no version in service"
        main = next(iter(candidate))
        gain = candidate[main] - current[main]
        if gain < self.margin:
            return False, f"{main} {candidate[main]:.4f} vs {current[main]:.4f} ({gain:+.4f} < margin {self.margin})"
        drops = [f"{k} {current[k]:.4f} → {candidate.get(k, 0.0):.4f}{self._noise_note(k, current[k])}"
                 for k in current
                 if k != main and candidate.get(k, 0.0) < current[k] - self.allowed_drop(k, current[k], gain)]
        if drops:
            return False, f"{main} +{gain:.4f} but beyond tolerance {self.tolerance}: {', '.join(drops)}"
        return True, f"{main} {current[main]:.4f} → {candidate[main]:.4f}"

    def allowed_drop(self, metric: str, value: float, gain: float) -> float:
        """How far ``metric``, now at ``value``, may fall when the main metric gained ``gain``."""
        allowed = self.tolerance + gain if metric in self.components else self.tolerance
        return allowed + self._noise(metric, value)

    def _noise(self, metric: str, value: float) -> float:
        items = self.support.get(metric, 0)
        return self.noise_z * sampling_error(value, items) if items and self.noise_z else 0.0

    def _noise_note(self, metric: str, value: float) -> str:
        noise = self._noise(metric, value)
        return f" (noise allowance {noise:.3f} on {self.support[metric]} items)" if noise else ""


def sampling_error(value: float, items: int) -> float:
    """Standard error of a proportion ``value`` measured on ``items`` gold items.

    Laplace-smoothed (``(value·n + 1) / (n + 2)``), so a perfect score on a handful of items still
    admits that the next handful may not be perfect. Two models compared on the same holdout make
    correlated errors, but a retrained model disagrees with its predecessor on many items, and the
    noise of their difference is then close to this one-sample error.
    """
    smoothed = (value * items + 1.0) / (items + 2.0)
    return math.sqrt(smoothed * (1.0 - smoothed) / items)


class ModelTask(ABC):
    """One model task. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]
    title: ClassVar[str]  # how people call it, e.g. "Detection (boxes)"
    metric_names: ClassVar[tuple[str, ...]]  # what evaluate() returns, the main one first
    # `paperloop train TASK` trains it directly; otherwise only the learning job does (`train --now TASK`).
    trained_by_command: ClassVar[bool] = False
    overrides: ClassVar[frozenset[str]] = frozenset()  # TrainOverrides fields this task honours

    # "page": run on each page as it is read (det, rec); "document": on the whole document (SER, RE).
    level: ClassVar[Literal["page", "document"]] = "document"

    @abstractmethod
    def predict(self, models: ServiceModels, prediction: Prediction) -> None:
        """This task's prediction stage: read and fill ``prediction`` with the loaded models (no I/O)."""

    def gate_rule(self, cfg: "PaperloopConfig", holdout: Sequence["Document"] = ()) -> GateRule:
        """The learning job's gate for this task, aware of the sampling noise of ``holdout``."""
        return GateRule(cfg.learning.margin, cfg.learning.tolerance,
                        support=self.metric_support(cfg, holdout), noise_z=cfg.learning.gate_noise_z)

    def metric_support(self, cfg: "PaperloopConfig", documents: Sequence["Document"]) -> dict[str, int]:
        """How many gold items of ``documents`` each side metric is computed from (none known: ``{}``)."""
        return {}

    def check_overrides(self, overrides: TrainOverrides) -> None:
        """Refuse options this task has no setting for (:class:`UnsupportedOverride`)."""
        unsupported = sorted(overrides.given() - self.overrides)
        if unsupported:
            options = ", ".join(f"--{name}" for name in unsupported)
            raise UnsupportedOverride(f"{self.name} has no setting for {options}")

    def missing_signal(self, cfg: "PaperloopConfig", documents: Sequence["Document"]) -> str | None:
        """Why the gold documents cannot teach this task anything, or ``None`` when they can."""
        return None

    @abstractmethod
    def gold_items(self, document: "Document") -> int:
        """How many gold items of this task a document holds (boxes, texts, labels, links)."""

    @abstractmethod
    def samples(self, cfg: "PaperloopConfig", documents: Sequence["Document"]) -> list[Any]:
        """Training or evaluation samples made from gold documents."""

    @abstractmethod
    def train_candidate(self, cfg: "PaperloopConfig", registry: "ModelRegistry", documents: Sequence["Document"],
                        run_log: "RunLog", overrides: TrainOverrides = TrainOverrides()) -> str:
        """Train a candidate from the version in service on ``documents``; register it (not in
        service) and return its version."""

    @abstractmethod
    def evaluate(self, cfg: "PaperloopConfig", registry: "ModelRegistry", version: str,
                 documents: Sequence["Document"]) -> dict[str, float]:
        """The task's metrics of ``version`` on gold documents, the main one first."""
