"""A corpus of hostile and broken inbox entries, built at test time, against the running daemon.

Each case states where its file must end (archive, quarantine with a coded reason, left in the
inbox, recorded as a duplicate) and what must stay untouched (the targets of links). The daemon
must still be up, and still process a good file, after all of them.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pypdf
import pytest
from PIL import Image

from service.config import PaperloopConfig
from service.daemon import Daemon
from service.errors import Reason
from service.jobs import JobRunner
from service.ocr import OcrEngine
from service.pipeline import DocumentPipeline
from service.safe_files import MAX_DISK_NAME_BYTES
from service.store import DONE, DUPLICATE, FAILED, NEEDS_REVIEW, Job, Store

from conftest import wait_for, write_pdf

PROCESSED = "processed"
IN_INBOX = "left in the inbox"
DUPLICATE_OF_GOOD = "duplicate"


@dataclass
class Case:
    """One corpus entry: how to make it, and what must become of it."""

    make: Callable[["Corpus"], Path]
    outcome: str | Reason  # PROCESSED, IN_INBOX, DUPLICATE_OF_GOOD or the quarantine reason


class Corpus:
    """Builds entries in the inbox from real FUNSD pages; keeps an outside folder for link targets."""

    def __init__(self, inbox: Path, outside: Path, pages: list[Path]) -> None:
        self.inbox, self.outside, self.pages = inbox, outside, pages

    def write(self, name: str | bytes, content: bytes, folder: Path | None = None) -> Path:
        """Write outside, then rename in: the daemon never sees a half-written corpus file."""
        folder = folder or self.inbox
        path = Path(os.fsdecode(os.path.join(os.fsencode(folder), os.fsencode(name))))
        scratch = self.outside / f".scratch-{time.monotonic_ns()}"
        scratch.write_bytes(content)
        os.rename(scratch, path)
        return path

    def page_bytes(self, index: int = 0) -> bytes:
        return self.pages[index].read_bytes()

    def pdf_bytes(self, pages: list[Path]) -> bytes:
        scratch = self.outside / f"scratch-{time.monotonic_ns()}.pdf"
        data = write_pdf(scratch, pages).read_bytes()
        scratch.unlink()
        return data

    def outside_file(self, name: str, content: bytes) -> Path:
        path = self.outside / name
        path.write_bytes(content)
        return path


def _blank_pdf(sizes: list[tuple[float, float]]) -> bytes:
    writer = pypdf.PdfWriter()
    for width, height in sizes:
        writer.add_blank_page(width=width, height=height)
    from io import BytesIO
    buffer = BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _encrypted_pdf(c: Corpus) -> Path:
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(c.outside_file("plain.pdf", c.pdf_bytes(c.pages[:1]))))
    writer.encrypt(user_password="secret", owner_password="owner")
    scratch = c.outside / "encrypted.pdf"
    writer.write(scratch)
    data = scratch.read_bytes()
    scratch.unlink()
    return c.write("encrypted.pdf", data)


def _pixel_bomb(c: Corpus) -> Path:
    scratch = c.outside / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(scratch, optimize=True)  # seconds to write: renamed in when done
    data = scratch.read_bytes()
    scratch.unlink()
    return c.write("bomb.png", data)


def _grey16_png(c: Corpus) -> Path:
    grey = np.asarray(Image.open(c.pages[2]).convert("L"), dtype=np.uint16) * 257
    return c.write("scan-16bit.png", _png_bytes(Image.fromarray(grey)))  # mode I;16


def _grey8_png(c: Corpus) -> Path:
    return c.write("scan-8bit.png", _png_bytes(Image.open(c.pages[2]).convert("L")))


def _png_bytes(image: Image.Image) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _fifo(c: Corpus) -> Path:
    path = c.inbox / "pipe.pdf"
    os.mkfifo(path)
    return path


def _folder_named_pdf(c: Corpus) -> Path:
    path = c.inbox / "folder.pdf"
    path.mkdir()
    return path


def _link_to_outside_file(c: Corpus) -> Path:
    target = c.outside_file("secret.png", c.page_bytes(1))
    path = c.inbox / "innocent.png"
    path.symlink_to(target)
    return path


def _link_to_outside_folder(c: Corpus) -> Path:
    folder = c.outside / "private"
    folder.mkdir()
    (folder / "payroll.png").write_bytes(c.page_bytes(1))
    path = c.inbox / "shared-folder"
    path.symlink_to(folder, target_is_directory=True)
    return path


def _link_in_subfolder(c: Corpus) -> Path:
    (c.inbox / "team-b").mkdir()
    path = c.inbox / "team-b" / "passwd.pdf"
    path.symlink_to(c.outside_file("passwd", b"root:x:0:0:root:/root:/bin/bash\n"))
    return path


def _dangling_link(c: Corpus) -> Path:
    path = c.inbox / "dangling.pdf"
    path.symlink_to(c.outside / "does-not-exist.pdf")
    return path


def _slow_writer(c: Corpus) -> Path:
    path = c.inbox / "slow-scanner.png"
    content = c.page_bytes(0) + b"\0" * 4
    step = len(content) // 6

    def write() -> None:
        with open(path, "wb") as handle:
            for start in range(0, len(content), step):
                handle.write(content[start:start + step])
                handle.flush()
                time.sleep(0.25)

    thread = threading.Thread(target=write)
    thread.start()
    thread.join()
    return path


LONG_STEM = "é" * 125  # 250 bytes of UTF-8: with "<id>-" the old on-disk names overflowed NAME_MAX


CORPUS: dict[str, Case] = {
    "zero-byte file": Case(lambda c: c.write("empty.pdf", b""), Reason.EMPTY_FILE),
    "truncated PDF": Case(lambda c: c.write("truncated.pdf", _half(c.pdf_bytes(c.pages[:2]))), Reason.PDF_DAMAGED),
    "garbage named .pdf": Case(lambda c: c.write("garbage.pdf", os.urandom(8192)), Reason.UNSUPPORTED_TYPE),
    "PDF header, garbage body": Case(lambda c: c.write("header-only.pdf", b"%PDF-1.7\n" + os.urandom(4096)),
                                     Reason.PDF_DAMAGED),
    "encrypted PDF": Case(_encrypted_pdf, Reason.PDF_ENCRYPTED),
    "0-page PDF": Case(lambda c: c.write("no-pages.pdf", _blank_pdf([])), Reason.PDF_NO_PAGES),
    "page bomb (200-inch square page)": Case(lambda c: c.write("huge-page.pdf", _blank_pdf([(14400, 14400)])),
                                          Reason.PAGE_TOO_LARGE),
    "pixel bomb PNG": Case(_pixel_bomb, Reason.PAGE_TOO_LARGE),
    "too many pages": Case(lambda c: c.write("long.pdf", _blank_pdf([(300, 300)] * 4)), Reason.TOO_MANY_PAGES),
    "file over the size limit": Case(lambda c: c.write("big.pdf", c.pdf_bytes(c.pages[:1]) + b"\0" * 3_000_000),
                                     Reason.FILE_TOO_LARGE),
    "truncated PNG": Case(lambda c: c.write("cut.png", c.page_bytes(0)[:5000]), Reason.IMAGE_DAMAGED),
    "zip named .docx": Case(lambda c: c.write("notes.docx", b"PK\x03\x04 a zip, not a page"), Reason.UNSUPPORTED_TYPE),
    "PNG named .pdf": Case(lambda c: c.write("really-a-png.pdf", c.page_bytes(0)), PROCESSED),
    "PDF named .jpg": Case(lambda c: c.write("really-a-pdf.jpg", c.pdf_bytes(c.pages[1:2])), PROCESSED),
    "FIFO": Case(_fifo, Reason.NOT_A_FILE),
    "folder named x.pdf": Case(_folder_named_pdf, IN_INBOX),
    "newline in the name": Case(lambda c: c.write("two\nlines.png", c.page_bytes(0) + b"\0"), PROCESSED),
    "255-byte name": Case(lambda c: c.write("x" * 251 + ".png", c.page_bytes(0) + b"\0\0"), PROCESSED),
    "250-byte name, bad content": Case(lambda c: c.write(LONG_STEM, os.urandom(2048)), Reason.UNSUPPORTED_TYPE),
    "name that is not UTF-8": Case(lambda c: c.write(b"scan-\xff\xfe.png", c.page_bytes(0) + b"\0\0\0"), PROCESSED),
    "link to a file outside": Case(_link_to_outside_file, Reason.SYMLINK),
    "link to a folder outside": Case(_link_to_outside_folder, Reason.SYMLINK),
    "link in a sub-folder": Case(_link_in_subfolder, Reason.SYMLINK),
    "dangling link": Case(_dangling_link, Reason.SYMLINK),
    "slow writer": Case(_slow_writer, PROCESSED),
    "duplicate content": Case(lambda c: c.write("copy-of-8bit.png", _grey8_bytes(c)), DUPLICATE_OF_GOOD),
    "16-bit grey PNG": Case(_grey16_png, PROCESSED),
    "hidden file": Case(lambda c: c.write(".hidden.png", c.page_bytes(0)), IN_INBOX),
    "partial download": Case(lambda c: c.write("scan.png.part", c.page_bytes(0)), IN_INBOX),
}


def _grey8_bytes(c: Corpus) -> bytes:
    return (c.inbox.parent / "archive").joinpath(_archived_name(c, "scan-8bit.png")).read_bytes()


def _archived_name(c: Corpus, name: str) -> str:
    return next(p.name for p in (c.inbox.parent / "archive").iterdir() if p.name.endswith(name))


@pytest.fixture
def daemon_factory(cfg: PaperloopConfig, ocr_engine: OcrEngine) -> Iterator[Callable[[], tuple[Daemon, threading.Thread]]]:
    """Start the daemon in a thread; stopped at the end of the test."""
    started: list[tuple[Daemon, threading.Thread]] = []

    def start() -> tuple[Daemon, threading.Thread]:
        store = Store(cfg.paths.database)
        daemon = Daemon(cfg, store, JobRunner(cfg, store, DocumentPipeline(cfg, ocr_engine)))
        thread = threading.Thread(target=daemon.run, kwargs={"install_signal_handlers": False}, daemon=True)
        thread.start()
        started.append((daemon, thread))
        return daemon, thread

    yield start
    for daemon, thread in started:
        daemon.stop_event.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "daemon did not stop"


def _jobs_by_name(store: Store) -> dict[str, list[Job]]:
    found: dict[str, list[Job]] = {}
    for job in store.jobs():
        found.setdefault(job.source_name, []).append(job)
    return found


def _settled(store: Store) -> bool:
    return all(j.state in (DONE, NEEDS_REVIEW, FAILED, DUPLICATE) and
               (not j.final_path or os.path.lexists(j.final_path)) for j in store.jobs())


@pytest.mark.slow
def test_hostile_corpus_against_the_running_daemon(
    cfg: PaperloopConfig, daemon_factory, funsd_pages: list[Path], tmp_path: Path
) -> None:
    cfg.ingest.max_pages = 3
    cfg.ingest.max_file_bytes = 2_000_000
    cfg.watcher.rescan_interval_seconds = 0.5
    cfg.watcher.quiet_seconds = 1.0  # the slow writer pauses 0.25 s between chunks, also on a busy machine
    inbox, quarantine, archive = (cfg.paths.resolve(n) for n in ("inbox", "quarantine", "archive"))
    outside = tmp_path / "outside-the-project"
    outside.mkdir()
    corpus = Corpus(inbox, outside, funsd_pages)
    daemon, thread = daemon_factory()
    store = daemon.store

    made: dict[str, Path] = {}
    made["8-bit grey PNG"] = _grey8_png(corpus)  # the reference for the 16-bit copy and the duplicate
    wait_for(lambda: any(p.name.endswith("scan-8bit.png") for p in archive.iterdir()), timeout=120, what="8-bit page")
    outside_before = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    for name, case in CORPUS.items():
        made[name] = case.make(corpus)
    outside_before.update({p: p.read_bytes() for p in outside.rglob("*") if p.is_file()})
    assert len(CORPUS) >= 25

    def all_handled() -> bool:
        names = _jobs_by_name(store)
        expected = [made[n].name for n, c in CORPUS.items() if c.outcome != IN_INBOX]
        return all(_stored_name(n) in names for n in expected) and _settled(store)

    wait_for(all_handled, timeout=300, what="every corpus entry handled")
    time.sleep(1.5)  # several rescans: nothing may be taken twice
    assert thread.is_alive(), "the daemon died"

    jobs = _jobs_by_name(store)
    for name, case in CORPUS.items():
        path = made[name]
        if case.outcome == IN_INBOX:
            assert os.path.lexists(path), f"{name}: should stay in the inbox"
            assert _stored_name(path.name) not in jobs, f"{name}: should not become a job"
            continue
        [job] = jobs[_stored_name(path.name)]  # recorded exactly once
        assert not os.path.lexists(path), f"{name}: still in the inbox"
        final = Path(job.final_path)
        assert os.path.lexists(final), f"{name}: not kept at {final}"
        assert len(final.name.encode()) <= MAX_DISK_NAME_BYTES, f"{name}: on-disk name too long"
        if case.outcome == PROCESSED:
            assert job.state in (DONE, NEEDS_REVIEW), f"{name}: {job.state} {job.reason}"
            assert final.parent == archive
            document = json.loads((cfg.paths.resolve("output") / f"{job.document_id}.json").read_text())
            assert document["source_name"] == job.source_name
            assert document["pages"][0]["segments"], f"{name}: no text read"
        elif case.outcome == DUPLICATE_OF_GOOD:
            assert job.state == DUPLICATE and final.parent == archive / "duplicates"
        else:
            assert (job.state, job.reason_code) == (FAILED, case.outcome.value), f"{name}: {job.reason}"
            assert final.parent == quarantine
            note = Path(str(final) + ".reason.txt").read_text(encoding="utf-8")
            assert note.startswith(case.outcome.value + "\n")

    # Links were quarantined as links; nothing outside the project was moved, read into a result or changed.
    for name in ("link to a file outside", "link to a folder outside", "link in a sub-folder", "dangling link"):
        assert Path(jobs[_stored_name(made[name].name)][0].final_path).is_symlink(), name
    assert {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()} == outside_before
    # Originals keep their names in the database and the JSON; on disk the names are readable.
    assert "two\nlines.png" in jobs and "x" * 251 + ".png" in jobs
    assert any("\n" not in p.name and p.name.endswith("two_lines.png") for p in archive.iterdir())

    # The 16-bit scan reads as its 8-bit copy does.
    def texts(name: str) -> list[str]:
        job = jobs[name][0]
        return [s.text for s in store.document(job.document_id).pages[0].segments]
    eight, sixteen = texts("scan-8bit.png"), texts("scan-16bit.png")
    assert len(eight) > 20 and sixteen == eight

    # Still serving.
    shutil.copy(funsd_pages[1], inbox / "after-the-storm.png")
    wait_for(lambda: any(j.source_name == "after-the-storm.png" and j.state in (DONE, NEEDS_REVIEW)
                         for j in store.jobs()), timeout=120, what="a good file after the corpus")


def _stored_name(name: str) -> str:
    """The name a job records: names that are not UTF-8 are renamed readable on intake."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("_" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in name)
    return name
