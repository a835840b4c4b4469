"""The life of one file: taken from the inbox, processed, then archived or quarantined.

Files move ``inbox → data/work → archive`` (or ``quarantine`` with a ``.reason.txt`` beside it).
The database is always updated before the file moves, and :meth:`JobRunner.recover` finishes any
move a crash interrupted, so every file is processed exactly once and none is lost.

Inbox entries are hostile: they are never resolved or followed. A symbolic link or a FIFO is
quarantined itself (its target is never read or moved); names on disk are bounded in bytes while
the original name stays in the database and the JSON; a file that kept killing the worker is
quarantined after ``ingest.max_attempts`` interrupted attempts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from service.config import PaperloopConfig
from service.errors import IngestError, Reason
from service.document import Document
from service.pipeline import DocumentPipeline, Routing
from service.results import result_json, write_json_atomic
from service.safe_files import (disk_name, entry_problem, hash_regular_file, inside, is_utf8_name, move_entry,
                                printable_name)
from service.store import DUPLICATE, FAILED, FINISHED_STATES, QUEUED, Job, Store

log = logging.getLogger(__name__)


def move_file(source: Path, target: Path) -> None:
    """Move a file, creating the target folder; works across file systems."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
    except OSError:
        shutil.move(str(source), str(target))


def document_id_for(job: Job) -> str:
    """Stable document id of a job."""
    return f"doc-{job.id:06d}"


@dataclass(frozen=True)
class Outcome:
    """What happened to a job, for the caller to report."""

    job: Job
    json_path: Path | None


class JobRunner:
    """Enqueues files and processes queued jobs, one at a time."""

    def __init__(self, cfg: PaperloopConfig, store: Store, pipeline: DocumentPipeline | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self._pipeline = pipeline
        paths = cfg.paths
        self.inbox = paths.resolve("inbox")
        self.archive = paths.resolve("archive")
        self.quarantine = paths.resolve("quarantine")
        self.output = paths.resolve("output")
        self.work = paths.resolve("data") / "work"
        # Inbox entries that failed and could not be moved out either: (size, mtime_ns) when last
        # tried, so that the daemon records them once instead of at every rescan.
        self.unmovable: dict[str, tuple[int, int]] = {}

    @property
    def pipeline(self) -> DocumentPipeline:
        """The OCR pipeline, loaded on first use (loading models takes a moment)."""
        if self._pipeline is None:
            self._pipeline = DocumentPipeline(self.cfg)
        return self._pipeline

    # -- intake -----------------------------------------------------------------------------

    def enqueue(self, path: Path, keep_source: bool = False, hashed: tuple[str, int] | None = None) -> Job:
        """Record a complete file as a job; a duplicate is never processed.

        An inbox entry is taken as it is, never through a link: a link or a FIFO is recorded as a
        failed job and moved to quarantine itself. A duplicate found in the inbox is moved to
        ``archive/duplicates``; with ``keep_source`` (the one-shot ``process`` command, whose paths
        the user typed) the caller's file is read where it is and left there; ``hashed`` is its
        (SHA-256, size) when the caller has just read it (``paperloop batch``).
        """
        if keep_source:
            path = path.resolve()
        else:
            path = self._readable_entry(Path(os.path.abspath(path)))
            if not inside(path, self.inbox):
                return self._reject(path, IngestError(
                    Reason.SYMLINK, f"{path.name} was reached through a linked folder; never read or moved"))
        try:
            digest, size = (hashed if keep_source and hashed else
                            hash_regular_file(path, None if keep_source else self.inbox, self.cfg.ingest.max_file_bytes))
        except IngestError as exc:
            if keep_source:
                raise
            return self._reject(path, exc)
        keep_at = (lambda _id: None) if keep_source else (
            lambda job_id: self.archive / "duplicates" / disk_name(job_id, path.name))
        job = self.store.enqueue(path, digest, size, keep_at)
        if job.state == DUPLICATE:
            if job.final_path:
                self._move_inbox_entry(path, Path(job.final_path))
            log.info("%s is a duplicate of job %s; not processed again", path.name, job.duplicate_of)
        else:
            log.info("queued %s as job %s", path.name, job.id)
        return job

    def _readable_entry(self, path: Path) -> Path:
        """A path that is not valid UTF-8 cannot be stored or written to JSON: rename each folder or
        file on the way whose name is not (in its own folder, without following links) first."""
        for depth in range(len(path.relative_to(self.inbox).parts)):
            relative = path.relative_to(self.inbox).parts
            if is_utf8_name(Path(relative[depth])):
                continue
            entry = self.inbox.joinpath(*relative[:depth + 1])
            readable = _free_name(entry.parent, printable_name(entry.name, 200))
            move_entry(self.inbox, entry, readable)
            log.warning("renamed %r to %s (its name was not UTF-8)", entry.name, readable.name)
            path = readable.joinpath(*relative[depth + 1:])
        return path

    def _move_inbox_entry(self, entry: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        move_entry(self.inbox, entry, target)

    def _reject(self, path: Path, problem: IngestError) -> Job:
        job = self.store.record_rejected(path, problem.reason, problem.message,
                                         lambda job_id: self.quarantine / disk_name(job_id, path.name))
        self._keep_in_quarantine(job, path)
        log.warning("job %s quarantined (%s): %s", job.id, problem.reason.value, problem.message)
        return job

    def _work_path(self, job: Job) -> Path:
        return self.work / disk_name(job.id, job.source_name)

    def process_next(self) -> Outcome | None:
        """Process the oldest queued job; ``None`` when there is none."""
        job = self.store.claim_next(self._work_path)
        return None if job is None else self._process(job, keep_source=False)

    def process_job(self, job_id: int, keep_source: bool = False) -> Outcome | None:
        """Process one queued job now; ``None`` if another worker already took it."""
        job = self.claim(job_id)
        return None if job is None else self._process(job, keep_source)

    def claim(self, job_id: int) -> Job | None:
        """Claim one queued job (``processing``, with its work path); ``None`` if another worker took it."""
        return self.store.claim(job_id, self._work_path)

    def take(self, job: Job, keep_source: bool) -> Path:
        """Public name of :meth:`_take`, for processes that run the pipeline elsewhere (``paperloop batch``)."""
        return self._take(job, keep_source)

    def _take(self, job: Job, keep_source: bool) -> Path:
        """Bring the job's file into the work folder (again, after a crash, if need be).

        An inbox entry is renamed, which never follows a link; only then is the moved entry checked,
        so a file swapped for a link after it was queued is caught. A file outside the inbox (the
        ``process`` command) is copied, never moved.
        """
        work = Path(job.work_path or "")
        if os.path.lexists(work):
            _raise_unless_regular(work)
            return work
        source = Path(job.source_path)
        if not os.path.lexists(source):
            raise IngestError(Reason.FILE_MISSING, f"{source.name} was removed before it could be processed")
        work.parent.mkdir(parents=True, exist_ok=True)
        if keep_source or not _lexically_under(source, self.inbox):
            shutil.copy2(source, work)  # the user's own file (`paperloop process`): copied, never moved
        else:
            try:
                move_entry(self.inbox, source, work)  # raises `symlink` if a folder on the way became a link
            except OSError:
                self.remember_unmovable(source)
                raise
        _raise_unless_regular(work)
        return work

    def remember_unmovable(self, source: Path) -> None:
        """Note an inbox entry that could be neither processed nor moved out, as it is now."""
        try:
            stat = os.lstat(source)
        except OSError:
            return
        self.unmovable[str(source)] = (stat.st_size, stat.st_mtime_ns)

    def _process(self, job: Job, keep_source: bool) -> Outcome:
        """Every step, up to the result committed to SQLite, runs inside one failure path."""
        try:
            work = self._take(job, keep_source)
            document = self.pipeline.process_file(work, document_id_for(job), job.sha256, job.source_name)
            routing = self.pipeline.route(document)
        except Exception as exc:  # noqa: BLE001 - one failure path: any error quarantines the file
            return self.fail(job, exc, keep_source)
        return self.finish(job, work, document, routing, keep_source)

    def finish(self, job: Job, work: Path, document: Document, routing: Routing,
               keep_source: bool = False) -> Outcome:
        """Complete a claimed job whose file (in ``work``) became ``document``: the JSON, then the
        result in SQLite, then the file to ``archive/``. A failure up to the commit quarantines it.

        The daemon's worker calls it after its own pipeline; ``paperloop batch`` with a document that
        a Ray actor's pipeline returned.
        """
        try:
            json_path = self.output / f"{document.id}.json"
            write_json_atomic(json_path, result_json(document, routing.state, routing.reason, routing.record))
            target = self.archive / disk_name(job.id, job.source_name)
            self.store.save_result(job.id, document, routing.state, routing.reason, json_path, target,
                                   routing=routing.record)
        except Exception as exc:  # noqa: BLE001 - one failure path: any error quarantines the file
            return self.fail(job, exc, keep_source)
        # The result is committed: a move that fails now is completed by recover() at the next start.
        _move_or_log(work, target, job)
        log.info("job %s %s: %s → %s", job.id, routing.state, job.source_name, json_path)
        return Outcome(self.store.job(job.id), json_path)

    def fail(self, job: Job, error: Exception, keep_source: bool = False) -> Outcome:
        """Quarantine a claimed job for ``error``: an :class:`IngestError` with its coded reason,
        anything else as ``processing_error`` (logged with its traceback)."""
        if isinstance(error, IngestError):
            return self._quarantine(job, error.reason, error.message, keep_source)
        log.error("processing %s failed", job.source_name, exc_info=error)
        return self._quarantine(job, Reason.PROCESSING_ERROR, f"{type(error).__name__}: {error}", keep_source)

    def _quarantine(self, job: Job, reason: Reason, message: str, keep_source: bool = False) -> Outcome:
        target = self.quarantine / disk_name(job.id, job.source_name)
        self.store.fail(job.id, reason, message, target)
        _remove_quietly(self.output / f"{document_id_for(job)}.json")  # a result written before the failure
        work, source = Path(job.work_path or ""), Path(job.source_path)
        if os.path.lexists(work):
            self._keep_in_quarantine(self.store.job(job.id), work)
        elif not keep_source and inside(source, self.inbox) and os.path.lexists(source):
            self._keep_in_quarantine(self.store.job(job.id), source)
        else:
            self._write_reason_note(self.store.job(job.id))
        log.warning("job %s quarantined (%s): %s", job.id, reason.value, message)
        return Outcome(self.store.job(job.id), None)

    def _keep_in_quarantine(self, job: Job, entry: Path) -> None:
        """The reason note, then the entry itself (a link is moved as a link). Only entries of the
        inbox and the work folder are ever moved."""
        self._write_reason_note(job)
        if not (inside(entry, self.inbox) or inside(entry, self.work)):
            log.error("job %s: %s is not in the inbox; left where it is", job.id, entry)
            return
        try:
            if _lexically_under(entry, self.inbox):
                self._move_inbox_entry(entry, Path(job.final_path or ""))
            else:
                move_file(entry, Path(job.final_path or ""))
        except OSError as exc:
            if inside(entry, self.inbox):
                self.remember_unmovable(entry)
            log.error("job %s: could not move %s to quarantine (%s); kept where it is", job.id, entry, exc)

    def _write_reason_note(self, job: Job) -> None:
        if not job.final_path:
            return
        note = Path(job.final_path + ".reason.txt")
        try:
            note.parent.mkdir(parents=True, exist_ok=True)
            note.write_text(reason_note(job), encoding="utf-8")
        except OSError as exc:
            log.error("job %s: could not write %s (%s)", job.id, note, exc)

    # -- crash recovery ---------------------------------------------------------------------

    def recover(self) -> int:
        """Finish what a crash interrupted: requeue in-flight jobs, quarantine files that crashed
        the worker too often, complete pending file moves. One bad row never stops it."""
        requeued = self.store.requeue_interrupted()
        for job in self.store.jobs():
            try:
                self._recover_job(job)
            except Exception:  # noqa: BLE001 - recovery goes on with the other jobs
                log.exception("could not recover job %s (%s); left as it is", job.id, job.source_name)
        if requeued:
            log.warning("requeued %d job(s) interrupted by a crash", requeued)
        return requeued

    def _recover_job(self, job: Job) -> None:
        if job.state == QUEUED and job.attempts >= self.cfg.ingest.max_attempts:
            self._quarantine(job, Reason.CRASHED_WORKER,
                             f"processing {job.source_name} was interrupted {job.attempts} times "
                             "(the worker process died); not tried again")
            return
        if job.state not in FINISHED_STATES or not job.final_path or os.path.lexists(job.final_path):
            return
        # A duplicate never left the inbox; anything else waits in the work folder.
        pending = Path(job.source_path) if job.state == DUPLICATE else Path(job.work_path or "")
        if not os.path.lexists(pending):
            return
        in_inbox = _lexically_under(pending, self.inbox)
        if job.state == DUPLICATE and hash_regular_file(pending, self.inbox if in_inbox else None)[0] != job.sha256:
            return
        if job.state == FAILED:
            self._write_reason_note(job)
        if in_inbox:
            self._move_inbox_entry(pending, Path(job.final_path))
        else:
            move_file(pending, Path(job.final_path))
        log.info("completed the interrupted move of job %s to %s", job.id, job.final_path)


def reason_note(job: Job) -> str:
    """The ``.reason.txt`` kept beside a quarantined file: code, message, original name and path."""
    message = " ".join((job.reason or "").splitlines())
    return (f"{job.reason_code}\n{message}\n"
            f"name: {json.dumps(job.source_name, ensure_ascii=False)}\n"
            f"source: {json.dumps(job.source_path, ensure_ascii=False)}\nsha256: {job.sha256}\n")


def _raise_unless_regular(path: Path) -> None:
    problem = entry_problem(path)
    if problem is not None:
        raise problem


def _lexically_under(path: Path, folder: Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(folder)


def _free_name(folder: Path, name: str) -> Path:
    """``folder / name``, or ``<n>-name`` when that is taken (bounded in bytes like any name we write)."""
    candidate = folder / name
    for n in range(1, 1000):
        if not os.path.lexists(candidate):
            break
        candidate = folder / disk_name(n, name)
    return candidate


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _move_or_log(source: Path, target: Path, job: Job) -> None:
    try:
        move_file(source, target)
    except OSError as exc:
        log.error("job %s: could not move %s to %s (%s); the next start completes it", job.id, source, target, exc)
