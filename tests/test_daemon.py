"""The daemon with a real watchdog observer on a temporary inbox."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from service.config import PaperloopConfig
from service.daemon import Daemon, ReadinessTracker, is_ignored
from service.jobs import JobRunner
from service.ocr import OcrEngine
from service.pipeline import DocumentPipeline
from service.store import DONE, DUPLICATE, NEEDS_REVIEW, Store

from conftest import wait_for

FINISHED = (DONE, NEEDS_REVIEW)


@pytest.fixture
def running_daemon(cfg: PaperloopConfig, ocr_engine: OcrEngine) -> Iterator[Callable[[], Daemon]]:
    """Start a daemon in a thread on demand; it is stopped at the end of the test."""
    started: list[tuple[Daemon, threading.Thread]] = []

    def start() -> Daemon:
        store = Store(cfg.paths.database)
        daemon = Daemon(cfg, store, JobRunner(cfg, store, DocumentPipeline(cfg, ocr_engine)))
        thread = threading.Thread(target=daemon.run, kwargs={"install_signal_handlers": False}, daemon=True)
        thread.start()
        started.append((daemon, thread))
        return daemon

    yield start
    for daemon, thread in started:
        daemon.stop_event.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "daemon did not stop"


def _states(store: Store) -> dict[str, str]:
    return {job.source_name: job.state for job in store.jobs()}


def _finished(store: Store, name: str) -> bool:
    """The job of ``name`` is done or awaiting review, and its file has reached the archive."""
    job = next((j for j in store.jobs() if j.source_name == name), None)
    return job is not None and job.state in FINISHED and Path(job.final_path or "").is_file()


def test_readiness_waits_for_a_quiet_period(tmp_path: Path) -> None:
    path = tmp_path / "growing.pdf"
    path.write_bytes(b"%PDF-1.4 part one")
    tracker = ReadinessTracker(quiet_seconds=1.0)
    tracker.add(path)
    assert tracker.ready(now=100.0) == []  # first look: records size and mtime
    assert tracker.ready(now=100.5) == []  # not quiet long enough
    with open(path, "ab") as handle:
        handle.write(b" and part two")
    assert tracker.ready(now=101.2) == []  # changed: the quiet period starts again
    assert tracker.ready(now=101.9) == []
    assert tracker.ready(now=102.3) == [path]
    assert len(tracker) == 0


def test_hidden_and_temporary_files_are_ignored(tmp_path: Path) -> None:
    patterns = PaperloopConfig().watcher.ignore_patterns
    assert is_ignored(tmp_path / ".scan.pdf", tmp_path, patterns)
    assert is_ignored(tmp_path / ".sync" / "scan.pdf", tmp_path, patterns)
    assert is_ignored(tmp_path / "scan.pdf.part", tmp_path, patterns)
    assert is_ignored(tmp_path / "~scan.pdf", tmp_path, patterns)
    assert not is_ignored(tmp_path / "team" / "scan.pdf", tmp_path, patterns)


def test_dropped_files_are_processed_once_and_duplicates_recorded(
    cfg: PaperloopConfig, running_daemon: Callable[[], Daemon], pages: list[Path]
) -> None:
    inbox = cfg.paths.resolve("inbox")
    already_there = inbox / "before-start.png"
    shutil.copy(pages[0], already_there)  # found by the start-up scan
    daemon = running_daemon()
    (inbox / "team-a").mkdir()
    shutil.copy(pages[1], inbox / "team-a" / "nested.png")  # recursive watch
    shutil.copy(pages[2], inbox / ".hidden.png")
    shutil.copy(pages[2], inbox / "download.png.part")
    store = daemon.store
    wait_for(lambda: _finished(store, "before-start.png") and _finished(store, "nested.png"))

    shutil.copy(pages[0], inbox / "same-content-new-name.png")
    wait_for(lambda: _states(store).get("same-content-new-name.png") == DUPLICATE)
    duplicate = next(j for j in store.jobs() if j.state == DUPLICATE)
    original = next(j for j in store.jobs() if j.source_name == "before-start.png")
    assert duplicate.duplicate_of == original.id
    wait_for(lambda: Path(duplicate.final_path).is_file())  # recorded first, then moved

    assert sorted(p.name for p in inbox.iterdir()) == [".hidden.png", "download.png.part", "team-a"]
    archive = cfg.paths.resolve("archive")
    assert (archive / f"{original.id}-before-start.png").read_bytes() == pages[0].read_bytes()
    assert store.db["documents"].count == 2


def test_a_file_is_not_taken_while_it_is_still_being_written(
    cfg: PaperloopConfig, running_daemon: Callable[[], Daemon], pages: list[Path]
) -> None:
    cfg.watcher.quiet_seconds = 1.0
    daemon = running_daemon()
    content = pages[0].read_bytes()
    target = cfg.paths.resolve("inbox") / "slow-scanner.png"
    with open(target, "wb") as handle:
        for start in range(0, len(content), len(content) // 8):
            handle.write(content[start:start + len(content) // 8])
            handle.flush()
            time.sleep(0.3)
            assert daemon.store.jobs() == [], "taken before the writer finished"
    wait_for(lambda: _finished(daemon.store, "slow-scanner.png"))
    job = daemon.store.jobs()[0]
    assert Path(job.final_path).read_bytes() == content


def test_polling_mode_rescan_finds_files_without_events(
    cfg: PaperloopConfig, running_daemon: Callable[[], Daemon], pages: list[Path]
) -> None:
    cfg.watcher.mode = "polling"
    cfg.watcher.rescan_interval_seconds = 0.5
    daemon = running_daemon()
    time.sleep(0.3)  # after the start-up scan
    shutil.copy(pages[1], cfg.paths.resolve("inbox") / "late.png")
    wait_for(lambda: _finished(daemon.store, "late.png"))
