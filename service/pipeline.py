"""From a file to a :class:`Document`: rasterize, run each task's prediction stage, decide on review."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from service.config import PaperloopConfig
from service.document import Document, Page
from service.fields.reader import FieldReader
from service.kie.inference import KieModels, LayoutXLMModels
from service.ocr import OcrEngine
from service.rasterize import iter_pages, probe
from service.registry import ModelRegistry
from service.store import DONE, NEEDS_REVIEW, JobState, utc_now
from service.tasks import Prediction, all_tasks

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


class ServiceModels:
    """The models in service, loaded from the registry: OCR (det, rec) and KIE (SER, RE).

    :meth:`refresh` follows the ``current`` pointers, so a promoted version is used from the next
    document on. The tasks' prediction stages (``service/tasks/``) run these loaded models.
    """

    def __init__(self, ocr: OcrEngine, kie: KieModels | LayoutXLMModels) -> None:
        self.ocr = ocr
        self.kie = kie

    def refresh(self) -> dict[str, str]:
        """Reload whatever moved; returns the versions in use, per task."""
        return {**self.ocr.refresh(), **self.kie.refresh()}

    @property
    def wants_page_images(self) -> bool:
        """Whether a model in service sees the page image itself (LayoutXLM's visual backbone)."""
        return isinstance(self.kie, LayoutXLMModels) and self.kie.uses_page_images


class DocumentPipeline:
    """Runs the models in service over every page of a file."""

    def __init__(self, cfg: PaperloopConfig, ocr: OcrEngine | None = None,
                 pinned: dict[str, str] | None = None) -> None:
        """``pinned`` fixes KIE tasks' versions (a candidate under evaluation) instead of ``current``."""
        self.cfg = cfg
        registry = ModelRegistry(cfg.paths.resolve("models"))
        self.ocr = ocr or OcrEngine(registry, cfg.ocr)
        self.kie: KieModels | LayoutXLMModels = KieModels(
            registry, threads=cfg.ocr.threads, multiple_values=cfg.kie.multiple_values,
            link_threshold=cfg.kie.link_threshold, pinned=pinned, label_check=cfg.kie.group_label_check)
        pretrained = cfg.kie.layoutxlm
        if pretrained.ser_dir or pretrained.re_dir:
            self.kie = LayoutXLMModels(self.kie, cfg.kie.labels, pretrained.ser_dir, pretrained.re_dir)
        self.models = ServiceModels(self.ocr, self.kie)
        self.fields = FieldReader(cfg, registry)
        self.pages_dir = cfg.paths.resolve("data") / "pages"

    def process_file(self, path: Path, document_id: str, sha256: str, source_name: str,
                     skip: Collection[str] = ()) -> Document:
        """Read every page of ``path`` through the registered tasks' prediction stages: the page-level
        ones (det, rec) as each page is rasterized, then the document-level ones (group, SER, RE).
        A document-level task named in ``skip`` is left out (benchmarks measure what a stage adds).

        Raises :class:`IngestError` for bad input.
        """
        info = probe(path, self.cfg.ingest)
        versions = {task: version for task, version in self.models.refresh().items() if task not in skip}
        document = Document(id=document_id, source_name=source_name, sha256=sha256,
                            created_at=utc_now(), model_versions=dict(versions))
        prediction = Prediction(document, versions)
        page_stages = [task for task in all_tasks() if task.level == "page"]
        for number, image in enumerate(iter_pages(path, info, self.cfg.ingest), start=1):
            document.pages.append(self._store_page(document_id, number, image))
            prediction.images = {number: np.ascontiguousarray(np.asarray(image)[:, :, ::-1])}  # BGR
            if self.models.wants_page_images:
                prediction.page_images[number] = np.asarray(image)
            for task in page_stages:
                task.predict(self.models, prediction)
        prediction.images = {}
        for task in all_tasks():
            if task.level == "document" and task.name not in skip:
                task.predict(self.models, prediction)
        self.fields.read(document, prediction.label_probabilities, getattr(getattr(self.kie, "ser", None), "labels", ()))
        return document

    def _store_page(self, document_id: str, number: int, image: Image.Image) -> Page:
        """The page image under ``data/pages/`` (the review app shows it), as a page without segments yet."""
        relative = Path(document_id) / f"page-{number:03d}.png"
        target = self.pages_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, compress_level=1)
        return Page(number=number, width=image.width, height=image.height, image=str(Path("pages") / relative))

    def route(self, document: Document) -> Routing:
        """Send a document to review when any result is below its threshold, or as an audit sample
        (see :func:`service.review.decide`)."""
        from service.review import decide

        decision = decide(document, self.cfg)
        return Routing(NEEDS_REVIEW if decision.needs_review else DONE, decision.summary, decision)
