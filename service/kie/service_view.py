"""Gold pages as the service sees them: read by the OCR in service, aligned to the gold entities.

SER, RE and grouping learn from gold entities with clean text; in service they meet OCR lines
with the recognizer's mistakes and missing spaces. So each gold page image is read once per
det/rec version by the OCR in service (cached under ``<data>/ocr-cache/<det>__<rec>__<settings digest>/``), and every
OCR word is given the gold entity whose words it covers most. That yields, per page,

- a :class:`~service.kie.grouping.WordPage` (OCR words, OCR lines, gold entities as targets) for
  the grouping model, and
- a document whose segments are the gold entities made of their OCR words and OCR text, with the
  gold labels and links, for SER and RE. OCR words of no entity stay as unlabelled segments.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service.document import Document, Link, Page, Segment, Word, bbox_to_quad
from service.kie.grouping import WordPage, WordUnit, reading_order, units_of_lines

if TYPE_CHECKING:
    from service.config import PaperloopConfig
    from service.ocr import OcrEngine
    from service.registry import ModelRegistry

log = logging.getLogger(__name__)
MIN_COVER = 0.5  # an OCR word belongs to a gold word when their overlap covers this much of the smaller


@dataclass
class ServiceView:
    """The gold documents as the OCR in service reads them."""

    word_pages: list[WordPage] = field(default_factory=list)
    documents: list[Document] = field(default_factory=list)


def _safe(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9._-]{1,80}", name) else hashlib.sha256(name.encode()).hexdigest()[:16]


def read_page_lines(engine: "OcrEngine", image_path: Path, page_number: int, cache_root: Path) -> list[Segment] | None:
    """The OCR in service's lines (with words) of one page image, cached per det/rec version and OCR settings.

    ``None`` when the image cannot be read.
    """
    import cv2

    from service.tasks.rec import lines_to_segments

    try:
        content = image_path.read_bytes()
    except OSError:
        return None
    versions = engine.refresh()
    reader = f"{_safe(versions['det'])}__{_safe(versions['rec'])}__{engine.settings_digest}"
    cache = cache_root / reader / f"{hashlib.sha256(content).hexdigest()}.json"
    if cache.is_file():
        return [Segment.from_dict(s) for s in json.loads(cache.read_text(encoding="utf-8"))]
    image = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return None
    segments = lines_to_segments(engine.read_page(image), page_number, versions)
    cache.parent.mkdir(parents=True, exist_ok=True)
    scratch = cache.with_suffix(f".{os.getpid()}.tmp")
    scratch.write_text(json.dumps([s.to_dict() for s in segments]), encoding="utf-8")
    os.replace(scratch, cache)
    return segments


def align_units(units: Sequence[WordUnit], gold: Page) -> list[int]:
    """For each OCR word, the index of the gold segment whose words it covers most (``-1``: none)."""
    owners, boxes = [], []
    for index, segment in enumerate(gold.segments):
        for word in segment.words or [Word(segment.text, segment.bbox)]:
            owners.append(index)
            boxes.append(word.box)
    if not units or not boxes:
        return [-1] * len(units)
    a = np.array([u.box for u in units], dtype=np.float64)
    b = np.array(boxes, dtype=np.float64)
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    overlap = width * height
    area_a = np.maximum((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), 1.0)
    area_b = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1.0)
    covered = overlap >= MIN_COVER * np.minimum(area_a[:, None], area_b[None, :])
    per_owner = np.zeros((len(units), len(gold.segments)))
    np.add.at(per_owner, (slice(None), np.array(owners)), np.where(covered, overlap, 0.0))
    best = per_owner.argmax(axis=1)
    return [int(k) if per_owner[u, k] > 0 else -1 for u, k in enumerate(best)]


def _entity_segments(gold: Page, units: Sequence[WordUnit], entity: Sequence[int]) -> list[Segment]:
    """The gold entities made of their OCR words (reading order, OCR text); leftover words by line."""
    members: dict[int, list[int]] = {}
    for k, e in enumerate(entity):
        members.setdefault(e, []).append(k)
    segments = []
    for e, group in sorted(members.items(), key=lambda item: min(item[1])):
        ordered = reading_order(units, group)
        words = [Word(units[k].text, units[k].box) for k in ordered]
        xs0, ys0, xs1, ys1 = zip(*(w.box for w in words))
        source = gold.segments[e] if e >= 0 else None
        segments.append(Segment(
            id=source.id if source else f"p{gold.number}-unaligned{min(group)}",
            box=bbox_to_quad((min(xs0), min(ys0), max(xs1), max(ys1))), text=" ".join(w.text for w in words),
            label=source.label if source else None, words=words))
    return segments


def view_page(gold: Page, lines: Sequence[Segment]) -> tuple[WordPage, list[Segment]]:
    """One gold page as the OCR read it: the grouping sample and the entity segments."""
    units = units_of_lines(lines)
    entity = align_units(units, gold)
    labels = [gold.segments[e].label if e >= 0 else None for e in entity]
    word_page = WordPage(float(gold.width), float(gold.height), units, list(entity), labels)
    return word_page, _entity_segments(gold, units, entity)


def service_view(documents: Sequence[Document], engine: "OcrEngine", data_dir: Path) -> ServiceView:
    """Every gold page with a readable image, read by ``engine`` and aligned (see the module docstring)."""
    from service.ocr_learning.pages import image_path

    view = ServiceView()
    cache_root = data_dir / "ocr-cache"
    for document in documents:
        pages = []
        for page in document.pages:
            lines = read_page_lines(engine, image_path(page.image, data_dir), page.number, cache_root) if page.image else None
            if lines is None:
                continue
            word_page, segments = view_page(page, lines)
            view.word_pages.append(word_page)
            pages.append(replace(page, segments=segments))
        if pages:
            kept = {s.id for p in pages for s in p.segments}
            links = [Link(l.key, l.value) for l in document.links if l.key in kept and l.value in kept]
            view.documents.append(replace(document, id=f"{document.id}#ocr", pages=pages, links=links))
    log.info("service view: %d pages of %d gold documents read by the OCR in service", len(view.word_pages), len(documents))
    return view


def service_view_for(cfg: "PaperloopConfig", registry: "ModelRegistry", documents: Sequence[Document]) -> ServiceView:
    """:func:`service_view` with the OCR in service (``kie.training.service_view``; empty when off)."""
    from service.ocr import OcrEngine

    if not cfg.kie.training.service_view:
        return ServiceView()
    return service_view(documents, OcrEngine(registry, cfg.ocr), cfg.paths.resolve("data"))


def read_by_other_rec(document: Document, rec_version: str) -> bool:
    """Whether ``document``'s text is a recognizer's reading (every segment names the rec that read it)
    by a rec other than ``rec_version``: gold labelled on OCR text (``import values``), whose text the
    rec in service would read differently."""
    segments = document.segments
    return bool(segments) and all(s.rec_version is not None for s in segments) and \
        any(s.rec_version != rec_version for s in segments)


def as_read_in_service(cfg: "PaperloopConfig", registry: "ModelRegistry",
                       documents: Sequence[Document]) -> tuple[list[Document], ServiceView]:
    """The gold documents a KIE gate evaluates on, as the service meets them: (the documents kept as they
    are, the service view of the others). A document whose text is another rec's reading
    (:func:`read_by_other_rec`) is re-read by the OCR in service (cached per det/rec version) and its gold
    labels carried over to the OCR words, so that a candidate trained on the new rec's reading is not
    judged on the old one. Nothing is re-read with ``kie.training.service_view`` off."""
    from service.ocr import OcrEngine

    if not cfg.kie.training.service_view:
        return list(documents), ServiceView()
    engine = OcrEngine(registry, cfg.ocr)
    rec_version = engine.refresh()["rec"]
    stale = [d for d in documents if read_by_other_rec(d, rec_version)]
    if not stale:
        return list(documents), ServiceView()
    view = service_view(stale, engine, cfg.paths.resolve("data"))
    reread = {d.id.removesuffix("#ocr") for d in view.documents}
    log.info("gate documents: %d of %d re-read by rec %s", len(reread), len(documents), rec_version)
    return [d for d in documents if d.id not in reread], view
