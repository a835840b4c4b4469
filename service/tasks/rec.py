"""Text recognition (PP-OCRv4 SVTR + CTC): the text of each detected line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from service.tasks.base import ModelTask, Prediction, ServiceModels, TrainOverrides

if TYPE_CHECKING:
    from service.config import PaperloopConfig
    from service.document import Document, Segment, Word
    from service.registry import ModelRegistry
    from service.run_log import RunLog


@dataclass(frozen=True)
class RecDefaults:
    """CTC fine-tuning defaults, chosen with bench/rec_finetune.py on FUNSD training forms (validation
    line accuracy after 1 / 2 / 3 epochs at 1e-4: 0.684 / 0.706 / 0.699 trained on 40 forms, 0.692 /
    0.703 / 0.697 on 100; 3e-4 was worse at every epoch)."""

    epochs: int = 2
    learning_rate: float = 1e-4
    synthetic_ratio: float = 0.25  # forgetting guard: synthetic lines per gold line


DEFAULTS = RecDefaults()


def _words(line: Any) -> list["Word"]:
    """A recognized line's words (:class:`service.ocr.words.OcrWord`) as segment words, boxes rounded."""
    from service.document import Word

    return [Word(text=w.text, box=tuple(round(float(v), 2) for v in w.box))  # type: ignore[arg-type]
            for w in getattr(line, "words", ())]


def lines_to_segments(lines: Sequence[Any], page: int, versions: dict[str, str]) -> list["Segment"]:
    """Recognized lines (:class:`service.ocr.OcrLine`) as a page's segments, ids ``p<page>-s<nnnn>``,
    with their words."""
    from service.document import Segment

    return [
        Segment(
            id=f"p{page}-s{i:04d}",
            box=[(float(x), float(y)) for x, y in line.points],
            text=line.text,
            words=_words(line),
            det_score=round(float(line.det_score), 5),
            rec_score=round(float(line.rec_score), 5),
            det_version=versions["det"],
            rec_version=versions["rec"],
        )
        for i, line in enumerate(lines)
    ]


class RecTask(ModelTask):
    """CTC fine-tuning on crops of gold lines plus synthetic lines; line accuracy, then character accuracy."""

    name = "rec"
    title = "Recognition (texts)"
    metric_names = ("line_accuracy", "char_accuracy")
    overrides = frozenset({"epochs", "seed"})

    level = "page"

    def predict(self, models: ServiceModels, prediction: Prediction) -> None:
        """The text of each box det found; the page's segments, with scores and model versions."""
        for number, image in prediction.images.items():
            lines = models.ocr.recognize(image, prediction.boxes.get(number, []))
            page = next(p for p in prediction.document.pages if p.number == number)
            page.segments = lines_to_segments(lines, number, prediction.versions)

    def gold_items(self, document: "Document") -> int:
        return sum(1 for s in document.segments if s.text.strip())

    def samples(self, cfg: "PaperloopConfig", documents: Sequence["Document"]) -> list[Any]:
        from service.ocr_learning.rec import line_samples

        return line_samples(list(documents), cfg.paths.resolve("data"))

    def train_candidate(self, cfg: "PaperloopConfig", registry: "ModelRegistry", documents: Sequence["Document"],
                        run_log: "RunLog", overrides: TrainOverrides = TrainOverrides()) -> str:
        from service.kie.candidates import next_version
        from service.ocr_learning.rec import train_rec_candidate

        self.check_overrides(overrides)
        on_step, close = run_log.step_reporter(self.name, None)
        try:
            return train_rec_candidate(cfg, registry, self.samples(cfg, documents), next_version(registry, self.name),
                                       on_step, epochs=overrides.epochs, seed=overrides.seed)
        finally:
            close()

    def evaluate(self, cfg: "PaperloopConfig", registry: "ModelRegistry", version: str,
                 documents: Sequence["Document"]) -> dict[str, float]:
        from service.ocr_learning.rec import rec_metrics

        return rec_metrics(cfg, registry, version, self.samples(cfg, documents))


TASK = RecTask()
