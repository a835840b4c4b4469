"""From a file to a :class:`Document`: rasterize, detect, recognize, decide on review."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from service.config import PaperloopConfig
from service.document import Document, Page, Segment
from service.ocr import OcrEngine, OcrLine
from service.rasterize import iter_pages, probe
from service.registry import ModelRegistry
from service.store import DONE, NEEDS_REVIEW, utc_now


@dataclass(frozen=True)
class Routing:
    """Where a processed document goes next, and why."""

    state: str  # DONE or NEEDS_REVIEW
    reason: str | None


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
        self.ocr = ocr or OcrEngine(ModelRegistry(cfg.paths.resolve("models")), cfg.ocr)
        self.pages_dir = cfg.paths.resolve("data") / "pages"

    def process_file(self, path: Path, document_id: str, sha256: str, source_name: str) -> Document:
        """Read every page of ``path``; raises :class:`IngestError` for bad input."""
        info = probe(path, self.cfg.ingest)
        versions = self.ocr.refresh()
        document = Document(id=document_id, source_name=source_name, sha256=sha256,
                            created_at=utc_now(), model_versions=dict(versions))
        for number, image in enumerate(iter_pages(path, info, self.cfg.ingest), start=1):
            document.pages.append(self._read_page(document_id, number, image, versions))
        return document

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
        """Send a document to review when any recognition is below the configured confidence."""
        segments = document.segments
        if not segments:
            return Routing(NEEDS_REVIEW, "no text was found")
        threshold = self.cfg.routing.min_rec_score
        low = [s for s in segments if s.rec_score < threshold]
        if low:
            lowest = min(s.rec_score for s in low)
            return Routing(NEEDS_REVIEW, f"{len(low)} of {len(segments)} segments read with confidence "
                                         f"below {threshold:.2f} (lowest {lowest:.2f})")
        return Routing(DONE, None)
