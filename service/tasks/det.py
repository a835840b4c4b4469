"""Text detection (PP-OCRv4 DB): boxes of text lines on a page image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from service.tasks.base import ModelTask, Prediction, ServiceModels, TrainOverrides

if TYPE_CHECKING:
    from service.config import PaperloopConfig
    from service.document import Document
    from service.registry import ModelRegistry
    from service.run_log import RunLog


@dataclass(frozen=True)
class DetDefaults:
    """Fine-tuning defaults: small steps, so the shipped detector is adjusted, not relearned.

    Chosen with bench/det_finetune.py on FUNSD training forms that bench/loop.py's det holdout never
    sees (fine-tune on 20, validate on 119): 100 steps at 2e-6 gave validation Hmean 0.796, ahead of
    5e-6 (0.786; gap +0.011, 95 % interval [+0.003, +0.019]) and 1e-5 (0.744); the shipped weights
    0.790 (bench/results/det_finetune.md).
    """

    steps: int = 100
    learning_rate: float = 2e-6
    crop_size: int = 640  # square crops at the page's own scale


DEFAULTS = DetDefaults()


class DetTask(ModelTask):
    """DB fine-tuning on crops of gold pages, then post-processing calibration; Hmean at IoU 0.5."""

    name = "det"
    title = "Detection (boxes)"
    metric_names = ("hmean", "precision", "recall")

    level = "page"

    def predict(self, models: ServiceModels, prediction: Prediction) -> None:
        """Boxes of the text lines of each page, in reading order."""
        for number, image in prediction.images.items():
            prediction.boxes[number] = models.ocr.detect(image)

    def gold_items(self, document: "Document") -> int:
        return len(document.segments)

    def samples(self, cfg: "PaperloopConfig", documents: Sequence["Document"]) -> list[Any]:
        from service.ocr_learning.pages import gold_pages

        return list(gold_pages(documents, cfg.paths.resolve("data")))

    def train_candidate(self, cfg: "PaperloopConfig", registry: "ModelRegistry", documents: Sequence["Document"],
                        run_log: "RunLog", overrides: TrainOverrides = TrainOverrides()) -> str:
        from service.kie.candidates import next_version
        from service.ocr_learning.det import train_det_candidate

        self.check_overrides(overrides)
        on_step, close = run_log.step_reporter(self.name, cfg.learning.det_steps)
        try:
            return train_det_candidate(cfg, registry, self.samples(cfg, documents), next_version(registry, self.name),
                                       on_step)
        finally:
            close()

    def evaluate(self, cfg: "PaperloopConfig", registry: "ModelRegistry", version: str,
                 documents: Sequence["Document"]) -> dict[str, float]:
        from service.ocr_learning.det import det_metrics

        return det_metrics(cfg, registry, version, self.samples(cfg, documents))


TASK = DetTask()
