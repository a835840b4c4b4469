"""Inbox safety, one rule at a time: links, long names, poison files, the finish phase, image modes."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from service.config import PaperloopConfig
from service.daemon import Daemon
from service.errors import Reason
from service.jobs import JobRunner
from service.ocr import OcrEngine
from service.pipeline import DocumentPipeline
from service.rasterize import iter_pages, probe
from service.safe_files import MAX_DISK_NAME_BYTES, disk_name, walk_entries
from service.store import DONE, FAILED, NEEDS_REVIEW, PROCESSING, QUEUED, Store

from conftest import wait_for


def _runner(cfg: PaperloopConfig, ocr_engine: OcrEngine | None = None) -> JobRunner:
    store = Store(cfg.paths.database)
    return JobRunner(cfg, store, DocumentPipeline(cfg, ocr_engine) if ocr_engine else None)


# -- links --------------------------------------------------------------------------------------

def test_a_link_in_the_inbox_is_quarantined_itself_and_its_target_never_moved(
    cfg: PaperloopConfig, tmp_path: Path, page_path: Path
) -> None:
    secret = tmp_path / "etc-passwd"
    secret.write_bytes(page_path.read_bytes())
    link = cfg.paths.resolve("inbox") / "a.png"
    link.symlink_to(secret)
    runner = _runner(cfg)

    job = runner.enqueue(link)

    assert (job.state, job.reason_code) == (FAILED, Reason.SYMLINK.value)
    assert secret.read_bytes() == page_path.read_bytes(), "the link's target was touched"
    kept = Path(job.final_path)
    assert kept.is_symlink() and kept.parent == cfg.paths.resolve("quarantine")
    assert not os.path.lexists(link)
    assert "symbolic link" in Path(str(kept) + ".reason.txt").read_text()


def test_a_file_swapped_for_a_link_after_it_was_queued_is_caught(
    cfg: PaperloopConfig, tmp_path: Path, pages: list[Path], ocr_engine: OcrEngine
) -> None:
    inbox = cfg.paths.resolve("inbox")
    page = inbox / "scan.png"
    shutil.copy(pages[0], page)
    runner = _runner(cfg, ocr_engine)
    job = runner.enqueue(page)
    assert job.state == QUEUED
    outside = tmp_path / "private.png"
    shutil.copy(pages[1], outside)
    page.unlink()
    page.symlink_to(outside)  # swapped between the quiet period and the take

    outcome = runner.process_next()

    assert (outcome.job.state, outcome.job.reason_code) == (FAILED, Reason.SYMLINK.value)
    assert outside.read_bytes() == pages[1].read_bytes() and not outside.is_symlink()
    assert Path(outcome.job.final_path).is_symlink()
    assert runner.store.db["documents"].count == 0, "the link's target was read as a document"


def test_the_scan_never_descends_into_a_linked_folder(tmp_path: Path) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    (inbox / "team").mkdir(parents=True)
    outside.mkdir()
    (outside / "payroll.pdf").write_bytes(b"%PDF-")
    (inbox / "team" / "linked").symlink_to(outside, target_is_directory=True)
    (inbox / "team" / "real.pdf").write_bytes(b"%PDF-")

    found = walk_entries(inbox, recursive=True)

    assert sorted(p.relative_to(inbox).as_posix() for p in found) == ["team/linked", "team/real.pdf"]


def test_a_file_behind_a_linked_folder_is_never_read_or_moved(
    cfg: PaperloopConfig, tmp_path: Path, page_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    private = outside / "private.png"
    shutil.copy(page_path, private)
    inbox = cfg.paths.resolve("inbox")
    (inbox / "linked").symlink_to(outside, target_is_directory=True)
    store = Store(cfg.paths.database)
    daemon = Daemon(cfg, store, JobRunner(cfg, store))

    daemon.notice(inbox / "linked" / "private.png")  # as an event from inside the linked folder would
    job = daemon.runner.enqueue(inbox / "linked" / "private.png")

    assert len(daemon.tracker) == 0
    assert (job.state, job.reason_code, job.sha256) == (FAILED, Reason.SYMLINK.value, "")
    assert private.read_bytes() == page_path.read_bytes()
    assert not any(cfg.paths.resolve("quarantine").glob("*.png"))


def test_a_folder_swapped_for_a_link_after_its_file_was_queued_is_never_entered(
    cfg: PaperloopConfig, tmp_path: Path, pages: list[Path], ocr_engine: OcrEngine
) -> None:
    inbox = cfg.paths.resolve("inbox")
    (inbox / "racedir").mkdir()
    shutil.copy(pages[0], inbox / "racedir" / "race.png")
    runner = _runner(cfg, ocr_engine)
    job = runner.enqueue(inbox / "racedir" / "race.png")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(pages[1], outside / "race.png")
    (inbox / "racedir").rename(tmp_path / "moved-away")
    (inbox / "racedir").symlink_to(outside, target_is_directory=True)  # swapped before the take

    outcome = runner.process_job(job.id)

    assert (outcome.job.state, outcome.job.reason_code) == (FAILED, Reason.SYMLINK.value)
    assert (outside / "race.png").read_bytes() == pages[1].read_bytes(), "the outside file was moved"
    assert runner.store.db["documents"].count == 0, "the outside file was read as a document"


def test_a_folder_name_that_is_not_utf8_is_renamed_and_its_file_queued(cfg: PaperloopConfig, page_path: Path) -> None:
    inbox = cfg.paths.resolve("inbox")
    folder = os.fsencode(inbox) + b"/dir\xff"
    os.mkdir(folder)
    with open(folder + b"/scan.png", "wb") as handle:
        handle.write(page_path.read_bytes())
    store = Store(cfg.paths.database)
    daemon = Daemon(cfg, store, JobRunner(cfg, store))

    daemon.scan()
    time.sleep(cfg.watcher.quiet_seconds + 0.1)
    daemon.tracker.ready()  # first look records size and mtime
    time.sleep(cfg.watcher.quiet_seconds + 0.1)
    assert daemon.enqueue_ready() == 1

    [job] = store.jobs()
    assert job.state == QUEUED and job.source_path == str(inbox / "dir_" / "scan.png")
    assert Path(job.source_path).read_bytes() == page_path.read_bytes()


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(cfg: PaperloopConfig) -> None:
    cfg.ingest.max_file_bytes = 10_000_000
    huge = cfg.paths.resolve("inbox") / "huge.pdf"
    with open(huge, "wb") as handle:
        handle.truncate(64 * 2**30)  # 64 GiB, sparse: hashing it would take minutes
    started = time.monotonic()

    job = _runner(cfg).enqueue(huge)

    assert (job.state, job.reason_code) == (FAILED, Reason.FILE_TOO_LARGE.value)
    assert time.monotonic() - started < 5
    assert Path(job.final_path).exists() and not huge.exists()


def test_a_pdf_is_rasterized_at_the_crop_box_its_page_size_was_checked_with(
    cfg: PaperloopConfig, tmp_path: Path
) -> None:
    import pypdf
    from pypdf.generic import RectangleObject

    writer = pypdf.PdfWriter()
    page = writer.add_blank_page(width=3000, height=3000)  # MediaBox: 3000 pt square
    page.cropbox = RectangleObject([0, 0, 300, 300])  # what a viewer shows, and what pdfinfo reports
    path = tmp_path / "crop.pdf"
    writer.write(path)
    cfg.ingest.dpi = 100

    [image] = list(iter_pages(path, probe(path, cfg.ingest), cfg.ingest))

    assert image.size == (417, 417)  # 300 pt at 100 dpi, not the 3000 pt media box (4167 px)


# -- names --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["x" * 251 + ".pdf", "é" * 127, "ü" * 120 + ".ñame", "a\nb\tc.png", "report.pdf"])
def test_names_on_disk_are_bounded_in_bytes_and_readable(name: str) -> None:
    stored = disk_name(123456, name)
    encoded = stored.encode("utf-8")  # valid UTF-8, never cut inside a character
    assert len(encoded) <= MAX_DISK_NAME_BYTES
    assert len((stored + ".reason.txt").encode()) <= 255
    assert stored.startswith("123456-") and "\n" not in stored and "/" not in stored
    if name.endswith(".pdf"):
        assert stored.endswith(".pdf")


@pytest.mark.slow
def test_a_255_byte_name_is_processed_once_and_serve_restarts(
    cfg: PaperloopConfig, funsd_page_path: Path, ocr_engine: OcrEngine
) -> None:
    cfg.watcher.rescan_interval_seconds = 0.3
    name = "n" * 251 + ".png"
    shutil.copy(funsd_page_path, cfg.paths.resolve("inbox") / name)
    store = Store(cfg.paths.database)
    daemon = Daemon(cfg, store, JobRunner(cfg, store, DocumentPipeline(cfg, ocr_engine)))
    thread = threading.Thread(target=daemon.run, kwargs={"install_signal_handlers": False}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: any(j.state in (DONE, NEEDS_REVIEW) for j in store.jobs()), timeout=120)
        time.sleep(1.5)  # several rescans
    finally:
        daemon.stop_event.set()
        thread.join(timeout=60)
    [job] = store.jobs()
    assert job.source_name == name
    assert Path(job.final_path).is_file() and not any(cfg.paths.resolve("inbox").iterdir())
    JobRunner(cfg, Store(cfg.paths.database)).recover()  # the next start


def test_recovery_goes_on_past_a_bad_row(cfg: PaperloopConfig, page_path: Path) -> None:
    runner = _runner(cfg)
    bad = runner.enqueue(_copy_into_inbox(cfg, page_path, "bad.png"))
    good = runner.enqueue(_copy_into_inbox(cfg, page_path, "good.png", extra=b"\0"))
    for job in (bad, good):
        runner.store.claim(job.id, runner._work_path)
        runner._take(runner.store.job(job.id), keep_source=False)
    archive = cfg.paths.resolve("archive")
    # A row whose final path no file system accepts (an old 300-byte name), then a normal one.
    runner.store.update_job(bad.id, state=DONE, final_path=str(archive / ("b" * 300)))
    runner.store.update_job(good.id, state=DONE, final_path=str(archive / "good.png"))
    runner.store.update_job(bad.id, source_path="\0")

    JobRunner(cfg, runner.store).recover()

    assert (archive / "good.png").is_file(), "recovery stopped before the good row"


def _copy_into_inbox(cfg: PaperloopConfig, source: Path, name: str, extra: bytes = b"") -> Path:
    path = cfg.paths.resolve("inbox") / name
    path.write_bytes(source.read_bytes() + extra)
    return path


# -- poison files -------------------------------------------------------------------------------

def test_a_file_that_keeps_killing_the_worker_is_quarantined(cfg: PaperloopConfig, page_path: Path) -> None:
    runner = _runner(cfg)
    job = runner.enqueue(_copy_into_inbox(cfg, page_path, "poison.png"))
    for attempt in range(cfg.ingest.max_attempts):
        claimed = runner.store.claim_next(runner._work_path)  # the worker takes it ...
        runner._take(claimed, keep_source=False)
        assert runner.store.job(job.id).state == PROCESSING
        # ... and dies (a segfault inside a decoder): the next start recovers.
        JobRunner(cfg, Store(cfg.paths.database)).recover()
        state = runner.store.job(job.id).state
        assert state == (QUEUED if attempt + 1 < cfg.ingest.max_attempts else FAILED)

    failed = runner.store.job(job.id)
    assert failed.reason_code == Reason.CRASHED_WORKER.value
    assert Path(failed.final_path).read_bytes() == page_path.read_bytes()
    assert Path(failed.final_path + ".reason.txt").read_text().startswith("crashed_worker\n")
    assert runner.store.claim_next(runner._work_path) is None, "it would be tried again"


# -- the finish phase ---------------------------------------------------------------------------

def test_a_failure_after_ocr_quarantines_the_file_and_the_daemon_goes_on(
    cfg: PaperloopConfig, pages: list[Path], ocr_engine: OcrEngine
) -> None:
    inbox, output = cfg.paths.resolve("inbox"), cfg.paths.resolve("output")
    store = Store(cfg.paths.database)
    daemon = Daemon(cfg, store, JobRunner(cfg, store, DocumentPipeline(cfg, ocr_engine)))
    thread = threading.Thread(target=daemon.run, kwargs={"install_signal_handlers": False}, daemon=True)
    thread.start()

    def state_of(name: str) -> str | None:
        return next((j.state for j in store.jobs() if j.source_name == name), None)

    try:
        shutil.copy(pages[0], inbox / "before.png")
        wait_for(lambda: state_of("before.png") in (DONE, NEEDS_REVIEW), timeout=120, what="first processed")
        shutil.rmtree(output)
        output.write_text("not a folder")  # the JSON cannot be written
        shutil.copy(pages[1], inbox / "during.png")
        wait_for(lambda: state_of("during.png") == FAILED, timeout=120, what="second quarantined")
        failed = next(j for j in store.jobs() if j.source_name == "during.png")
        assert failed.reason_code == Reason.PROCESSING_ERROR.value and "output" in failed.reason
        # The failure is recorded (with its quarantine path) before the file is moved there, so that a
        # crash in between is finished at start-up; the move follows at once.
        wait_for(lambda: Path(failed.final_path).exists() and not any((cfg.paths.resolve("data") / "work").iterdir()),
                 timeout=30, what="the file moved into quarantine")
        assert Path(failed.final_path).read_bytes() == pages[1].read_bytes()

        output.unlink()
        output.mkdir()
        shutil.copy(pages[2], inbox / "after.png")
        wait_for(lambda: state_of("after.png") in (DONE, NEEDS_REVIEW), timeout=120, what="third processed")
    finally:
        daemon.stop_event.set()
        thread.join(timeout=60)
    assert not thread.is_alive()


# -- image modes --------------------------------------------------------------------------------

def _grey(page: Path) -> np.ndarray:
    return np.asarray(Image.open(page).convert("L").crop((0, 0, 600, 400)))


def _save_pil(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def _with_transparent_paper(grey: np.ndarray, mode: str) -> Image.Image:
    alpha = np.where(grey > 200, 0, 255).astype(np.uint8)
    hidden = np.where(alpha == 0, 0, grey).astype(np.uint8)  # black under the transparent paper
    if mode == "LA":
        return Image.merge("LA", [Image.fromarray(hidden), Image.fromarray(alpha)])
    rgb = Image.fromarray(hidden).convert("RGB")
    rgb.putalpha(Image.fromarray(alpha))
    return rgb


def _palette_with_transparent_paper(grey: np.ndarray) -> Image.Image:
    # Index i is grey i; index 255, used for the paper, is black and declared transparent.
    indices = np.where(grey > 200, 255, np.minimum(grey, 254)).astype(np.uint8)
    image = Image.frombytes("P", indices.shape[::-1], indices.tobytes())
    image.putpalette([v for i in range(255) for v in (i, i, i)] + [0, 0, 0])
    return image


MODE_VARIANTS = {
    "16-bit grey PNG": lambda g, d: _save_pil(Image.fromarray(g.astype(np.uint16) * 257), d / "g16.png"),
    "16-bit grey TIFF": lambda g, d: _save_pil(Image.fromarray(g.astype(np.uint16) * 257), d / "g16.tif"),
    "32-bit integer TIFF": lambda g, d: _save_pil(Image.fromarray(g.astype(np.int32) * 257, mode="I"), d / "i32.tif"),
    "float TIFF in [0, 1]": lambda g, d: _save_pil(Image.fromarray(g.astype(np.float32) / 255), d / "f.tif"),
    "16-bit RGB TIFF": lambda g, d: d / "rgb16.tif" if cv2.imwrite(
        str(d / "rgb16.tif"), np.repeat(g[:, :, None], 3, axis=2).astype(np.uint16) * 257) else None,
    "LA PNG, transparent paper": lambda g, d: _save_pil(_with_transparent_paper(g, "LA"), d / "la.png"),
    "RGBA PNG, transparent paper": lambda g, d: _save_pil(_with_transparent_paper(g, "RGBA"), d / "rgba.png"),
    "P PNG with a transparent colour": lambda g, d: _save_pil(_palette_with_transparent_paper(g), d / "p.png",
                                                              transparency=255),
    "12-bit grey in a 16-bit PNG": lambda g, d: _save_pil(Image.fromarray(g.astype(np.uint16) * 16), d / "g12.png"),
    "CMYK TIFF": lambda g, d: _save_pil(Image.fromarray(g).convert("CMYK"), d / "cmyk.tif"),
    "CMYK JPEG": lambda g, d: _save_pil(Image.fromarray(g).convert("CMYK"), d / "cmyk.jpg", quality=95),
}


@pytest.mark.parametrize("variant", list(MODE_VARIANTS))
def test_every_image_mode_reads_like_its_8_bit_copy(
    variant: str, tmp_path: Path, page_path: Path, cfg: PaperloopConfig
) -> None:
    grey = _grey(page_path)
    path = MODE_VARIANTS[variant](grey, tmp_path)
    [page] = list(iter_pages(path, probe(path, cfg.ingest), cfg.ingest))
    rgb = np.asarray(page).astype(np.float64)
    assert page.mode == "RGB" and rgb.shape[:2] == grey.shape
    ink = grey < 128
    # Paper stays paper and ink stays ink, as in the 8-bit copy.
    assert abs(rgb[~ink].mean() - grey[~ink].mean()) < 6, f"paper {rgb[~ink].mean():.0f} vs {grey[~ink].mean():.0f}"
    assert abs(rgb[ink].mean() - grey[ink].mean()) < 12, f"ink {rgb[ink].mean():.0f} vs {grey[ink].mean():.0f}"
