"""The life of one file: taken from the inbox, processed, then archived or quarantined.

Files move ``inbox → data/work → archive`` (or ``quarantine`` with a ``.reason.txt`` beside it).
The database is always updated before the file moves, and :meth:`JobRunner.recover` finishes any
move a crash interrupted, so every file is processed exactly once and none is lost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from service.config import PaperloopConfig
from service.errors import IngestError, Reason
from service.pipeline import DocumentPipeline
from service.store import DUPLICATE, FINISHED_STATES, Job, Store

log = logging.getLogger(__name__)


def sha256_of(path: Path) -> str:
    """SHA-256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def move_file(source: Path, target: Path) -> None:
    """Move a file, creating the target folder; works across file systems."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
    except OSError:
        shutil.move(str(source), str(target))


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON so that readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False, indent=2)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


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

    @property
    def pipeline(self) -> DocumentPipeline:
        """The OCR pipeline, loaded on first use (loading models takes a moment)."""
        if self._pipeline is None:
            self._pipeline = DocumentPipeline(self.cfg)
        return self._pipeline

    # -- intake -----------------------------------------------------------------------------

    def enqueue(self, path: Path, keep_source: bool = False) -> Job:
        """Record a complete file as a job; a duplicate is never processed.

        A duplicate found in the inbox is moved to ``archive/duplicates``; with ``keep_source`` (the
        one-shot ``process`` command) the caller's file is left where it is.
        """
        path = path.resolve()
        keep_at = None if keep_source else (lambda job_id: self.archive / "duplicates" / f"{job_id}-{path.name}")
        job = self.store.enqueue(path, sha256_of(path), path.stat().st_size, keep_at or (lambda _id: None))
        if job.state == DUPLICATE:
            if job.final_path:
                move_file(path, Path(job.final_path))
            log.info("%s is a duplicate of job %s; not processed again", path.name, job.duplicate_of)
        else:
            log.info("queued %s as job %s", path.name, job.id)
        return job

    def _work_path(self, job: Job) -> Path:
        return self.work / f"{job.id}-{job.source_name}"

    def process_next(self) -> Outcome | None:
        """Process the oldest queued job; ``None`` when there is none."""
        job = self.store.claim_next(self._work_path)
        return None if job is None else self._process(job, keep_source=False)

    def process_job(self, job_id: int, keep_source: bool = False) -> Outcome | None:
        """Process one queued job now; ``None`` if another worker already took it."""
        job = self.store.claim(job_id, self._work_path)
        return None if job is None else self._process(job, keep_source)

    def _take(self, job: Job, keep_source: bool) -> Path:
        """Bring the job's file into the work folder (again, after a crash, if need be)."""
        work = Path(job.work_path or "")
        source = Path(job.source_path)
        if work.is_file():
            return work
        if not source.is_file():
            raise IngestError(Reason.FILE_MISSING, f"{source.name} was removed before it could be processed")
        work.parent.mkdir(parents=True, exist_ok=True)
        if keep_source:
            shutil.copy2(source, work)
        else:
            move_file(source, work)
        return work

    def _process(self, job: Job, keep_source: bool) -> Outcome:
        try:
            work = self._take(job, keep_source)
            document = self.pipeline.process_file(work, document_id_for(job), job.sha256, job.source_name)
        except IngestError as exc:
            return self._quarantine(job, exc.reason, exc.message)
        except Exception as exc:  # noqa: BLE001 - one failure path: any error quarantines the file
            log.exception("processing %s failed", job.source_name)
            return self._quarantine(job, Reason.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")
        routing = self.pipeline.route(document)
        json_path = self.output / f"{document.id}.json"
        write_json_atomic(json_path, {**document.to_dict(), "key_values": document.key_values(),
                                      "state": routing.state, "review_reason": routing.reason})
        target = self.archive / f"{job.id}-{job.source_name}"
        self.store.save_result(job.id, document, routing.state, routing.reason, json_path, target)
        move_file(work, target)
        log.info("job %s %s: %s → %s", job.id, routing.state, job.source_name, json_path)
        return Outcome(self.store.job(job.id), json_path)

    def _quarantine(self, job: Job, reason: Reason, message: str) -> Outcome:
        target = self.quarantine / f"{job.id}-{job.source_name}"
        self.store.fail(job.id, reason, message, target)
        note = target.with_name(target.name + ".reason.txt")
        note.parent.mkdir(parents=True, exist_ok=True)
        note.write_text(f"{reason.value}\n{message}\nsource: {job.source_path}\nsha256: {job.sha256}\n",
                        encoding="utf-8")
        work = Path(job.work_path or "")
        if work.is_file():
            move_file(work, target)
        log.warning("job %s quarantined (%s): %s", job.id, reason.value, message)
        return Outcome(self.store.job(job.id), None)

    # -- crash recovery ---------------------------------------------------------------------

    def recover(self) -> int:
        """Finish what a crash interrupted: requeue in-flight jobs, complete pending file moves."""
        requeued = self.store.requeue_interrupted()
        for job in self.store.jobs():
            if job.state not in FINISHED_STATES or not job.final_path or Path(job.final_path).exists():
                continue
            # A duplicate never left the inbox; anything else waits in the work folder.
            pending = Path(job.source_path) if job.state == DUPLICATE else Path(job.work_path or "")
            if pending.is_file() and (job.state != DUPLICATE or sha256_of(pending) == job.sha256):
                move_file(pending, Path(job.final_path))
                log.info("completed the interrupted move of job %s to %s", job.id, job.final_path)
        if requeued:
            log.warning("requeued %d job(s) interrupted by a crash", requeued)
        return requeued

