"""Exports of the gold set in PaddleOCR's formats.

:func:`export_gold` writes each split: detection ``Label.txt`` + ``images/``, recognition
``rec_gt.txt`` + ``crop_img/``, KIE ``Label.txt`` and XFUND JSON. :func:`create_export` is what the
review app uses: a new folder under ``review.exports_dir`` each time, a manifest of the files it wrote,
and one zip of exactly those files.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from service.config import PaperloopConfig
from service.document import Document, Page
from service.labels import SPLITS
from service.review.queue import ReviewService


def resolve_image(page: Page, data_dir: Path) -> Path | None:
    """The page image on disk (relative paths are under the data folder), or ``None``."""
    if not page.image:
        return None
    path = Path(page.image)
    path = path if path.is_absolute() else data_dir / path
    return path if path.is_file() else None


def _image_name(document: Document, page: Page, source: Path) -> str:
    return f"{document.id}-p{page.number:03d}{source.suffix.lower() or '.png'}"


def _ppocr_annotations(page: Page) -> list[dict[str, Any]]:
    return [{"transcription": s.text, "points": [[round(x), round(y)] for x, y in s.box], "difficult": False}
            for s in page.segments]


def _pages_with_images(documents: Iterable[Document], data_dir: Path,
                       skipped: list[int]) -> Iterator[tuple[Document, Page, Path]]:
    """Every page whose image can be found; ``skipped[0]`` counts the others."""
    for document in documents:
        for page in document.pages:
            source = resolve_image(page, data_dir)
            if source is None:
                skipped[0] += 1
                continue
            yield document, page, source


def export_det(documents: Iterable[Document], out_dir: Path, data_dir: Path) -> dict[str, int]:
    """PaddleOCR detection labels: ``out_dir/Label.txt`` (``images/<name>\\t[{transcription, points,
    difficult}]``) and the page images in ``out_dir/images/``."""
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    lines, skipped = [], [0]
    for document, page, source in _pages_with_images(documents, data_dir, skipped):
        name = _image_name(document, page, source)
        shutil.copy2(source, out_dir / "images" / name)
        lines.append(f"images/{name}\t{json.dumps(_ppocr_annotations(page), ensure_ascii=False)}")
    (out_dir / "Label.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return {"pages": len(lines), "pages_without_image": skipped[0]}


def export_rec(documents: Iterable[Document], out_dir: Path, data_dir: Path) -> dict[str, int]:
    """PaddleOCR recognition labels: ``out_dir/rec_gt.txt`` (``crop_img/<name>\\t<text>``) and the
    cropped lines in ``out_dir/crop_img/``; segments without text are left out."""
    import cv2
    import numpy as np

    from service.ocr.recognizer import crop_quad  # imports Paddle: only when exporting

    (out_dir / "crop_img").mkdir(parents=True, exist_ok=True)
    lines, skipped = [], [0]
    for document, page, source in _pages_with_images(documents, data_dir, skipped):
        image = cv2.imread(str(source), cv2.IMREAD_COLOR)
        if image is None:
            skipped[0] += 1
            continue
        for i, segment in enumerate(page.segments):
            text = segment.text.replace("\t", " ").replace("\n", " ").strip()
            if not text:
                continue
            name = f"{document.id}-p{page.number:03d}_crop_{i}.jpg"
            cv2.imwrite(str(out_dir / "crop_img" / name), crop_quad(image, np.asarray(segment.box, dtype=np.float32)))
            lines.append(f"crop_img/{name}\t{text}")
    (out_dir / "rec_gt.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return {"crops": len(lines), "pages_without_image": skipped[0]}


def export_kie(documents: list[Document], out_dir: Path, data_dir: Path, split: str,
               lang: str = "en") -> dict[str, int]:
    """KIE labels with ``label`` (not ``key_cls``): PPOCRLabel's ``kie/Label.txt`` (written by
    ``service.formats.write_ppocr_kie``, which links the page images beside it) and XFUND JSON
    ``xfund/<lang>.<split>.json`` with the page images copied to ``xfund/<lang>.<split>/``.

    These formats hold one image per record, so a document with a link between two pages is left
    out (counted in ``skipped_cross_page_links``).
    """
    from service import formats  # imported late so that det/rec exports never depend on it

    kie_docs, xfund_docs, skipped = [], [], 0
    image_dir = out_dir / "xfund" / f"{lang}.{split}"
    for document in documents:
        page_of = {s.id: page.number for page in document.pages for s in page.segments}
        if any(page_of.get(link.key) != page_of.get(link.value) for link in document.links):
            skipped += 1
            continue
        absolute, copied = [], []
        for page in document.pages:
            source = resolve_image(page, data_dir)
            name = None
            if source is not None:
                image_dir.mkdir(parents=True, exist_ok=True)
                name = _image_name(document, page, source)
                shutil.copy2(source, image_dir / name)
            absolute.append(Page(number=page.number, width=page.width, height=page.height,
                                 image=str(source) if source else None, segments=page.segments))
            copied.append(Page(number=page.number, width=page.width, height=page.height, image=name,
                               segments=page.segments))
        for pages, target in ((absolute, kie_docs), (copied, xfund_docs)):
            target.append(Document(id=document.id, source_name=document.source_name, sha256=document.sha256,
                                   created_at=document.created_at, model_versions=document.model_versions,
                                   pages=pages, links=document.links))
    formats.write_ppocr_kie(kie_docs, out_dir / "kie" / "Label.txt")
    xfund = formats.xfund_dict(xfund_docs, lang, split)
    (out_dir / "xfund").mkdir(parents=True, exist_ok=True)
    (out_dir / "xfund" / f"{lang}.{split}.json").write_text(
        json.dumps(xfund, ensure_ascii=False, indent=1), encoding="utf-8")
    return {"documents": len(kie_docs), "skipped_cross_page_links": skipped}


EXPORT_FORMATS = ("det", "rec", "kie")


def export_gold(service: ReviewService, out_dir: Path, splits: Iterable[str] = ("train", "holdout"),
                formats: Iterable[str] = EXPORT_FORMATS, sources: Iterable[str] | None = None,
                lang: str = "en") -> dict[str, Any]:
    """Write the gold set to ``out_dir/<split>/``: ``det/`` (Label.txt + images/), ``rec/``
    (rec_gt.txt + crop_img/), ``kie/`` (Label.txt) and ``xfund/``; returns counts per part."""
    wanted_sources = set(sources) if sources is not None else None
    rows = service.gold_rows()
    summary: dict[str, Any] = {}
    for split in splits:
        documents = [d for d, s, source, _ in rows
                     if s == split and (wanted_sources is None or source in wanted_sources)]
        if not documents:
            continue
        part: dict[str, Any] = {"documents": len(documents)}
        for fmt in formats:
            target = out_dir / split / fmt
            try:
                if fmt == "det":
                    part[fmt] = export_det(documents, target, service.data_dir)
                elif fmt == "rec":
                    part[fmt] = export_rec(documents, target, service.data_dir)
                elif fmt == "kie":
                    part[fmt] = export_kie(documents, out_dir / split, service.data_dir, split, lang)
                else:
                    raise ValueError(f"unknown export format {fmt!r}")
            except ImportError as exc:
                part[fmt] = {"error": f"not available yet: {exc}"}
        summary[split] = part
    return summary


# -- exports made from the review app: one new folder each, under review.exports_dir ------------------

MANIFEST = "manifest.json"


class ExportError(ValueError):
    """An export cannot be made as asked (unknown format or split)."""


@dataclass(frozen=True)
class ExportRecord:
    """One export made by :func:`create_export`: its folder, its zip, what it wrote."""

    folder: Path
    archive: Path
    summary: dict[str, Any]
    files: list[str]


def exports_root(cfg: PaperloopConfig) -> Path:
    """The folder every export goes under (``review.exports_dir``, relative to ``paths.root``)."""
    path = cfg.review.exports_dir
    return path if path.is_absolute() else (cfg.paths.root / path).resolve()


def _new_folder(root: Path, stem: str) -> Path:
    """A folder that did not exist before, created now (``stem``, then ``stem-2``...)."""
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        folder = root / (stem if n == 1 else f"{stem}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise ExportError(f"no free export folder name for {stem} in {root}")


def _written_files(folder: Path) -> list[str]:
    """The files under a fresh export folder (written by the export), relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _zip_export(folder: Path, files: list[str]) -> Path:
    """``<folder>.zip`` beside the folder, holding exactly ``files`` (written once, atomically)."""
    archive = folder.with_name(folder.name + ".zip")
    partial = folder.with_name(folder.name + ".zip.part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as out:
        for name in [*files, MANIFEST]:
            out.write(folder / name, f"{folder.name}/{name}")
    partial.replace(archive)
    return archive


def create_export(service: ReviewService, splits: Iterable[str], formats: Iterable[str], by: str,
                  sources: Iterable[str] | None = None, lang: str = "en") -> ExportRecord:
    """Export the gold set into a new folder under :func:`exports_root` named by the time and the
    formats, with a ``manifest.json`` of the files written, and zip exactly those files once.

    No caller-given path is used: where files go is decided here.
    """
    splits, formats = list(splits), list(formats)
    unknown = [f for f in formats if f not in EXPORT_FORMATS] or [s for s in splits if s not in SPLITS]
    if unknown or not formats:
        raise ExportError(f"cannot export {unknown or 'no format'}; formats are {EXPORT_FORMATS}, splits {SPLITS}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    folder = _new_folder(exports_root(service.cfg), f"gold-{stamp}-{'-'.join(formats)}")
    summary = export_gold(service, folder, splits=splits, formats=formats, sources=sources, lang=lang)
    files = _written_files(folder)
    manifest = {"created_at": stamp, "by": by, "splits": splits, "formats": formats,
                "sources": list(sources) if sources is not None else None, "summary": summary, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
    return ExportRecord(folder=folder, archive=_zip_export(folder, files), summary=summary, files=files)


def export_archive(cfg: PaperloopConfig, name: str) -> Path:
    """The zip of an export by its file name, only from directly under :func:`exports_root`."""
    root = exports_root(cfg)
    path = root / Path(name).name
    if Path(name).name != name or not name.endswith(".zip") or not path.is_file() or path.is_symlink():
        raise ExportError(f"no export archive {name!r} in {root}")
    return path
