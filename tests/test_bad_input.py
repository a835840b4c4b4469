"""Bad input: each case is quarantined with a clear, coded reason, and nothing else is lost."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pypdf
import pytest
from PIL import Image

from service.config import PaperloopConfig
from service.errors import IngestError, Reason
from service.jobs import JobRunner
from service.pipeline import DocumentPipeline
from service.rasterize import iter_pages, probe
from service.store import DONE, FAILED, NEEDS_REVIEW, Store

from conftest import write_pdf


def _truncated_pdf(folder: Path, pages: list[Path]) -> Path:
    whole = write_pdf(folder / "whole.pdf", pages).read_bytes()
    (folder / "whole.pdf").unlink()
    path = folder / "truncated.pdf"
    path.write_bytes(whole[: len(whole) // 2])
    return path


def _encrypted_pdf(folder: Path, pages: list[Path]) -> Path:
    plain = write_pdf(folder / "plain.pdf", pages[:1])
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(plain))
    writer.encrypt(user_password="secret", owner_password="owner")
    plain.unlink()
    path = folder / "encrypted.pdf"
    writer.write(path)
    return path


def _zero_page_pdf(folder: Path, _pages: list[Path]) -> Path:
    path = folder / "no-pages.pdf"
    pypdf.PdfWriter().write(path)
    return path


def _bytes_file(name: str, content: bytes) -> Callable[[Path, list[Path]], Path]:
    def make(folder: Path, _pages: list[Path]) -> Path:
        path = folder / name
        path.write_bytes(content)
        return path
    return make


def _pixel_bomb(folder: Path, _pages: list[Path]) -> Path:
    # A few KB on disk, 400 million pixels decoded: the classic decompression bomb.
    path = folder / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(path, optimize=True)
    return path


def _truncated_png(folder: Path, pages: list[Path]) -> Path:
    path = folder / "cut.png"
    path.write_bytes(pages[0].read_bytes()[:5000])
    return path


BAD_INPUTS = {
    "zero-byte file": (_bytes_file("empty.pdf", b""), Reason.EMPTY_FILE),
    "truncated PDF": (_truncated_pdf, Reason.PDF_DAMAGED),
    "encrypted PDF": (_encrypted_pdf, Reason.PDF_ENCRYPTED),
    "random bytes named .pdf": (_bytes_file("random.pdf", os.urandom(8192)), Reason.UNSUPPORTED_TYPE),
    "unsupported type": (_bytes_file("notes.docx", b"PK\x03\x04 this is a zip, not a page"), Reason.UNSUPPORTED_TYPE),
    "0-page PDF": (_zero_page_pdf, Reason.PDF_NO_PAGES),
    "image over the pixel limit": (_pixel_bomb, Reason.PAGE_TOO_LARGE),
    "truncated PNG": (_truncated_png, Reason.IMAGE_DAMAGED),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_probe_names_the_reason(case: str, tmp_path: Path, pages: list[Path], cfg: PaperloopConfig) -> None:
    make, reason = BAD_INPUTS[case]
    path = make(tmp_path, pages)
    with pytest.raises(IngestError) as caught:
        # probe catches most cases; a damaged image is only found when its pixels are decoded
        info = probe(path, cfg.ingest)
        list(iter_pages(path, info, cfg.ingest))
    assert caught.value.reason == reason
    assert path.name in caught.value.message


def test_every_bad_file_is_quarantined_and_good_ones_still_processed(
    cfg: PaperloopConfig, pages: list[Path], ocr_engine
) -> None:
    inbox = cfg.paths.resolve("inbox")
    bad = {make(inbox, pages).name: reason for make, reason in BAD_INPUTS.values()}
    good = write_pdf(inbox / "good.pdf", pages[:2])
    store = Store(cfg.paths.database)
    runner = JobRunner(cfg, store, DocumentPipeline(cfg, ocr_engine))
    for path in sorted(inbox.iterdir()):
        runner.enqueue(path)
    while runner.process_next() is not None:
        pass

    jobs = {job.source_name: job for job in store.jobs()}
    quarantine = cfg.paths.resolve("quarantine")
    for name, reason in bad.items():
        job = jobs[name]
        assert (job.state, job.reason_code) == (FAILED, reason.value), name
        kept = quarantine / f"{job.id}-{name}"
        assert kept.is_file(), f"{name} was not kept"
        note = kept.with_name(kept.name + ".reason.txt").read_text()
        assert note.startswith(reason.value) and job.reason in note
    assert jobs[good.name].state in (DONE, NEEDS_REVIEW)
    assert store.document(jobs[good.name].document_id).pages[1].segments
    assert not any(inbox.iterdir()), "every file left the inbox"


def test_file_deleted_before_processing_fails_cleanly(
    cfg: PaperloopConfig, pages: list[Path], ocr_engine
) -> None:
    inbox = cfg.paths.resolve("inbox")
    store = Store(cfg.paths.database)
    runner = JobRunner(cfg, store, DocumentPipeline(cfg, ocr_engine))
    doomed = inbox / "doomed.png"
    doomed.write_bytes(pages[0].read_bytes())
    survivor = inbox / "survivor.png"
    survivor.write_bytes(pages[1].read_bytes())
    job = runner.enqueue(doomed)
    runner.enqueue(survivor)
    doomed.unlink()

    first = runner.process_next()
    assert first is not None and first.job.id == job.id
    assert (first.job.state, first.job.reason_code) == (FAILED, Reason.FILE_MISSING.value)
    reason_file = cfg.paths.resolve("quarantine") / f"{job.id}-doomed.png.reason.txt"
    assert "removed before it could be processed" in reason_file.read_text()
    second = runner.process_next()
    assert second is not None and second.job.state in (DONE, NEEDS_REVIEW)


def test_file_too_large_is_rejected_before_reading(cfg: PaperloopConfig, page_path: Path) -> None:
    cfg.ingest.max_file_bytes = 1000
    with pytest.raises(IngestError) as caught:
        probe(page_path, cfg.ingest)
    assert caught.value.reason == Reason.FILE_TOO_LARGE


def test_too_many_pages_is_rejected(cfg: PaperloopConfig, tmp_path: Path, pages: list[Path]) -> None:
    cfg.ingest.max_pages = 2
    path = write_pdf(tmp_path / "long.pdf", pages)
    with pytest.raises(IngestError) as caught:
        probe(path, cfg.ingest)
    assert caught.value.reason == Reason.TOO_MANY_PAGES
