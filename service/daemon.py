"""The daemon: watch the inbox, enqueue complete files, process the queue.

The watcher only detects files and enqueues them; a separate worker thread processes jobs, or with
``daemon.workers`` > 1 that many worker processes (:mod:`service.workers`). A file
is taken once its size and mtime have not changed for ``quiet_seconds``. A scan at start-up and a
periodic rescan catch anything the file-system events missed.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import signal
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from service.config import PaperloopConfig, WatcherConfig
from service.jobs import JobRunner
from service.safe_files import inside, walk_entries
from service.store import Store
from service.workers import WorkerPool

log = logging.getLogger(__name__)


def is_ignored(path: Path, inbox: Path, patterns: Iterable[str]) -> bool:
    """Hidden files, files in hidden folders, and temporary-file patterns are never taken."""
    try:
        parts = path.relative_to(inbox).parts
    except ValueError:
        return True
    if any(part.startswith(".") for part in parts):
        return True
    return any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns)


@dataclass
class _Observation:
    size: int
    mtime_ns: int
    stable_since: float


class ReadinessTracker:
    """Candidates waiting for a quiet period with unchanged size and mtime."""

    def __init__(self, quiet_seconds: float) -> None:
        self.quiet_seconds = quiet_seconds
        self._seen: dict[Path, _Observation] = {}
        self._lock = threading.Lock()

    def add(self, path: Path) -> None:
        """Start (or restart) watching a candidate."""
        with self._lock:
            self._seen.setdefault(path, _Observation(-1, -1, time.monotonic()))

    def ready(self, now: float | None = None) -> list[Path]:
        """Candidates that have been quiet long enough; they are forgotten once returned."""
        now = time.monotonic() if now is None else now
        done: list[Path] = []
        with self._lock:
            for path, seen in list(self._seen.items()):
                try:
                    entry = os.lstat(path)  # the entry itself: a link is never followed
                except FileNotFoundError:
                    del self._seen[path]
                    continue
                if (entry.st_size, entry.st_mtime_ns) != (seen.size, seen.mtime_ns):
                    self._seen[path] = _Observation(entry.st_size, entry.st_mtime_ns, now)
                elif now - seen.stable_since >= self.quiet_seconds:
                    done.append(path)
                    del self._seen[path]
        return done

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)


class _InboxEvents(FileSystemEventHandler):
    """Forwards created, modified and moved-in files to the readiness tracker."""

    def __init__(self, daemon: "Daemon") -> None:
        self._daemon = daemon

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type not in ("created", "modified", "moved", "closed"):
            return
        target = getattr(event, "dest_path", "") or event.src_path
        self._daemon.notice(Path(os.fsdecode(target)))


class Daemon:
    """Watcher and worker around one :class:`JobRunner`."""

    def __init__(self, cfg: PaperloopConfig, store: Store, runner: JobRunner | None = None) -> None:
        self.cfg = cfg
        self.watcher_cfg: WatcherConfig = cfg.watcher
        self.store = store
        self.runner = runner or JobRunner(cfg, store)
        self.inbox = cfg.paths.resolve("inbox")
        self.tracker = ReadinessTracker(cfg.watcher.quiet_seconds)
        self.stop_event = threading.Event()
        self._work_available = threading.Event()
        self._worker: threading.Thread | None = None
        self.workers = cfg.daemon.resolved_workers(cfg.ocr.threads)
        self.pool: WorkerPool | None = None

    def notice(self, path: Path) -> None:
        """A file-system event or a scan saw ``path``.

        Every entry but a real folder is a candidate: links and FIFOs too, so that they are
        recorded and quarantined rather than left unexplained in the inbox.
        """
        if is_ignored(path, self.inbox, self.watcher_cfg.ignore_patterns) or not inside(path, self.inbox):
            return  # hidden, temporary, or reached through a linked folder (that link is quarantined)
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return
        if not stat.S_ISDIR(mode) and not self._known_unmovable(path):
            self.tracker.add(path)

    def _known_unmovable(self, path: Path) -> bool:
        """An entry that already failed and could not be moved out, unchanged since."""
        seen = self.runner.unmovable.get(str(path))
        if seen is None:
            return False
        try:
            now = os.lstat(path)
        except OSError:
            return True
        return (now.st_size, now.st_mtime_ns) == seen

    def scan(self) -> None:
        """Walk the inbox for entries not yet queued (start-up scan and periodic rescan)."""
        pending = self.store.pending_sources()
        for path in walk_entries(self.inbox, self.watcher_cfg.recursive):
            if str(path) not in pending:
                self.notice(path)

    def enqueue_ready(self) -> int:
        """Enqueue every candidate that became quiet; returns how many."""
        count = 0
        pending = self.store.pending_sources()
        for path in self.tracker.ready():
            if str(path) in pending or self._known_unmovable(path):
                continue
            try:
                self.runner.enqueue(path)
                count += 1
            except FileNotFoundError:
                log.info("%s vanished before it was queued", path.name)
            except Exception:  # noqa: BLE001 - unreadable: logged once, not at every rescan; the watcher goes on
                log.exception("cannot take %r; it stays in the inbox until it changes", str(path))
                self.runner.remember_unmovable(path)
        if count:
            self._work_available.set()
        return count

    def _work_loop(self, loaded: threading.Event, errors: list[BaseException]) -> None:
        try:
            _ = self.runner.pipeline  # predictors are built on the thread that runs them
        except BaseException as exc:  # noqa: BLE001 - reported to start() and re-raised there
            errors.append(exc)
            return
        finally:
            loaded.set()
        while not self.stop_event.is_set():
            try:
                outcome = self.runner.process_next()
            except Exception:  # noqa: BLE001 - the worker must survive anything
                log.exception("worker error; continuing")
                outcome = None
                time.sleep(1)
            if outcome is None:
                self._work_available.wait(self.watcher_cfg.poll_interval_seconds)
                self._work_available.clear()

    def start(self) -> None:
        """Recover from a crash, scan the inbox and start the worker thread (or processes)."""
        for folder in ("inbox", "archive", "quarantine", "output"):
            self.cfg.paths.resolve(folder).mkdir(parents=True, exist_ok=True)
        self.runner.recover()  # once, here, before any worker claims a job
        if self.workers > 1:
            self.pool = WorkerPool(self.cfg, self.runner, self.workers)
            self.pool.start()
            self.scan()
            return
        loaded, errors = threading.Event(), []
        self._worker = threading.Thread(target=self._work_loop, args=(loaded, errors),
                                        name="paperloop-worker", daemon=True)
        self._worker.start()
        loaded.wait()
        if errors:
            raise errors[0]
        self.scan()

    def run(self, install_signal_handlers: bool = True) -> None:
        """Serve until SIGINT/SIGTERM; the document in flight is finished before returning."""
        if install_signal_handlers:
            self._install_signal_handlers()
        self.start()
        observer = Observer()
        if self.watcher_cfg.mode == "events":
            observer.schedule(_InboxEvents(self), str(self.inbox), recursive=self.watcher_cfg.recursive)
            observer.start()
        log.info("watching %s (%s)", self.inbox, self.watcher_cfg.mode)
        last_scan = time.monotonic()
        try:
            while not self.stop_event.is_set():
                if self.pool is not None:
                    self.pool.check()
                self.enqueue_ready()
                if time.monotonic() - last_scan >= self.watcher_cfg.rescan_interval_seconds:
                    self.scan()
                    last_scan = time.monotonic()
                self.stop_event.wait(self.watcher_cfg.poll_interval_seconds)
        finally:
            if observer.is_alive():
                observer.stop()
                observer.join(timeout=5)
            self.shutdown()

    def shutdown(self) -> None:
        """Stop taking work and wait for the document in flight."""
        self.stop_event.set()
        self._work_available.set()
        if self._worker is not None:
            self._worker.join()
        if self.pool is not None:
            self.pool.stop()
        log.info("stopped")

    def _install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: object) -> None:
            if self.stop_event.is_set():
                log.warning("second signal: exiting now; the job in flight is requeued at next start")
                os._exit(130)
            log.info("signal %s: finishing the document in flight, then stopping", signum)
            self.stop_event.set()

        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGTERM, handle)
