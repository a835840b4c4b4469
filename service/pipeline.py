"""From a file to a :class:`Document`: rasterize, detect, recognize, decide on review."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from service.config import PaperloopConfig
from service.document import Document, Page, Segment
from service.kie.inference import KieModels, LayoutXLMModels
from service.ocr import OcrEngine, OcrLine
from service.rasterize import iter_pages, probe
from service.registry import ModelRegistry
from service.store import DONE, NEEDS_REVIEW, JobState, utc_now

if TYPE_CHECKING:
    from service.review.routing import Decision


@dataclass(frozen=True)
class Routing:
    """Where a processed document goes next, and why (``decision`` is the structured record)."""

    state: JobState  # DONE or NEEDS_REVIEW
    reason: str | None
    decision: "Decision | None" = None

    @property
    def record(self) -> dict[str, Any] | None:
        """The routing record stored with the result (``routing`` in the JSON and the database)."""
        return self.decision.to_dict() if self.decision is not None else None


def _segments(lines: list[OcrLine], page: int, versions: dict[str, str]) -> list[Segment]:
    return [
        Segment(
            id=f"p{page}-s{i:04d}",
            box=[(float(x), float(y)) for x, y in line.points],
            text=line.text,
            det_score=round(float(line.det_score), 5),
            rec_score=round(float(line.rec_score), 5),
            det_version=versions["det"],
            rec_version=versions["rec"],
        )
        for i, line in enumerate(lines)
    ]


class DocumentPipeline:
    """Runs the models in service over every page of a file."""

    def __init__(self, cfg: PaperloopConfig, ocr: OcrEngine | None = None) -> None:
        self.cfg = cfg
        registry = ModelRegistry(cfg.paths.resolve("models"))
        self.ocr = ocr or OcrEngine(registry, cfg.ocr)
        self.kie: KieModels | LayoutXLMModels = KieModels(
            registry, threads=cfg.ocr.threads, multiple_values=cfg.kie.multiple_values,
            link_threshold=cfg.kie.link_threshold)
        pretrained = cfg.kie.layoutxlm
        if pretrained.ser_dir or pretrained.re_dir:
            self.kie = LayoutXLMModels(self.kie, cfg.kie.labels, pretrained.ser_dir, pretrained.re_dir)
        self.pages_dir = cfg.paths.resolve("data") / "pages"

    def process_file(self, path: Path, document_id: str, sha256: str, source_name: str) -> Document:
        """Read every page of ``path``; raises :class:`IngestError` for bad input."""
        info = probe(path, self.cfg.ingest)
        versions = self.ocr.refresh()
        document = Document(id=document_id, source_name=source_name, sha256=sha256,
                            created_at=utc_now(), model_versions=dict(versions))
        for number, image in enumerate(iter_pages(path, info, self.cfg.ingest), start=1):
            document.pages.append(self._read_page(document_id, number, image, versions))
        # SER labels the lines and RE links keys to values, when such models are in service.
        return self.kie.predict(document)

    def _read_page(self, document_id: str, number: int, image: Image.Image, versions: dict[str, str]) -> Page:
        relative = Path(document_id) / f"page-{number:03d}.png"
        target = self.pages_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, compress_level=1)
        bgr = np.asarray(image)[:, :, ::-1]
        lines = self.ocr.read_page(np.ascontiguousarray(bgr))
        return Page(number=number, width=image.width, height=image.height,
                    image=str(Path("pages") / relative), segments=_segments(lines, number, versions))

    def route(self, document: Document) -> Routing:
        """Send a document to review when any result is below its threshold, or as an audit sample
        (see :func:`service.review.decide`)."""
        from service.review import decide

        decision = decide(document, self.cfg)
        return Routing(NEEDS_REVIEW if decision.needs_review else DONE, decision.summary, decision)
