"""``paperloop batch``: a backfill of folders and globs on Ray, with the daemon's stage code and store.

The driver (this process) is the only one that touches the store and moves files: it lists the
entries (never through a link), hashes and deduplicates them with :meth:`JobRunner.enqueue` as
``paperloop process`` does (``keep_source``: the user's files stay where they are), claims each
queued job and copies its file into ``data/work/``. Ray actors, one per CPU, each build their own
:class:`DocumentPipeline` (the ``service/tasks/`` stages through ``process_file``) and return the
:class:`Document` with its routing; the driver finishes the job with :meth:`JobRunner.finish` (JSON,
SQLite, archive) or quarantines it with :meth:`JobRunner.fail`, exactly as the daemon's worker does.

Ray *actors* rather than Ray Data: the work items are a few hundred bytes (a job id and a path) and
each result is a Python object that only the driver may write (SQLite has one writer), so Data's
block streaming and Arrow conversion would add start-up and memory without moving anything faster;
an actor per CPU keeps every core busy (the next file is sent before the last one is written).

Resumable: an entry whose path and content already have a job is skipped (a job left ``queued`` by an
interrupted run is taken up again; one that failed is tried again only with ``retry_failed``); known
content under another path is a ``duplicate`` as in the daemon. Links and other non-files are recorded
as ``failed`` (``symlink`` / ``not_a_file``) with a reason note in ``quarantine/``, and never followed;
a file that fails is copied to quarantine, the user's own file is never moved.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from service.config import PaperloopConfig
from service.errors import IngestError, Reason
from service.jobs import JobRunner, reason_note
from service.safe_files import disk_name, entry_problem, inside, walk_entries
from service.store import DONE, DUPLICATE, FAILED, NEEDS_REVIEW, PROCESSING, QUEUED, Job, Store

log = logging.getLogger(__name__)


@dataclass
class BatchSummary:
    """What a batch run did, per outcome."""

    processed: int = 0   # done or needs_review
    duplicates: int = 0  # content already known under another path (a ``duplicate`` job)
    skipped: int = 0     # this path with this content had a job before (an earlier run)
    failed: int = 0      # quarantined, with a reason
    states: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    startup_seconds: float = 0.0  # Ray and the actors' pipelines, before the first document

    def line(self) -> str:
        return (f"processed {self.processed} ({self.states[DONE]} done, {self.states[NEEDS_REVIEW]} needs_review) "
                f"/ duplicates {self.duplicates} / failed {self.failed} / skipped {self.skipped} (done before) "
                f"in {self.seconds:.1f} s")


# -- listing ----------------------------------------------------------------------------------

def list_entries(patterns: Iterable[str]) -> list[Path]:
    """Every entry named by the folders, files and globs in ``patterns``, sorted, each once.

    Folders are walked recursively without entering linked folders or hidden ones; a glob's matches
    must lie inside the folder before its first wildcard (a linked folder cannot lead out of it).
    Links themselves are returned (as entries, never followed) so that they are recorded.
    """
    found: dict[str, Path] = {}
    for pattern in patterns:
        if glob.has_magic(pattern):
            base = _glob_base(pattern)
            for match in sorted(glob.glob(pattern, recursive=True)):
                path = Path(os.path.abspath(match))
                if os.path.isdir(path) and not os.path.islink(path):
                    continue
                if inside(path, base):
                    found.setdefault(str(path), path)
                else:
                    log.warning("%s lies outside %s (through a linked folder); not read", match, base)
        else:
            path = Path(os.path.abspath(pattern))
            if os.path.isdir(path) and not os.path.islink(path):
                for entry in walk_entries(path, recursive=True):
                    if not entry.name.startswith("."):
                        found.setdefault(str(entry), entry)
            elif os.path.lexists(path):
                found.setdefault(str(path), path)
            else:
                raise FileNotFoundError(f"{pattern}: no such file or folder")
    return [found[key] for key in sorted(found)]


def _glob_base(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed = [part for part in parts[:next(i for i, p in enumerate(parts) if glob.has_magic(p))]]
    return Path(os.path.realpath(os.path.join(*fixed) if fixed else "."))


# -- the actors -------------------------------------------------------------------------------

class PipelineWorker:
    """One Ray actor: its own pipeline (own predictors), one file at a time."""

    def __init__(self, cfg: PaperloopConfig) -> None:
        from service.pipeline import DocumentPipeline

        self.pipeline = DocumentPipeline(cfg)

    def ready(self) -> int:
        return os.getpid()

    def process(self, work: str, document_id: str, sha256: str, source_name: str) -> tuple[Any, ...]:
        """``("ok", document, routing)``, ``("ingest", reason, message)`` or ``("error", message, trace)``."""
        try:
            document = self.pipeline.process_file(Path(work), document_id, sha256, source_name)
            return "ok", document, self.pipeline.route(document)
        except IngestError as exc:
            return "ingest", exc.reason.value, exc.message
        except Exception as exc:  # noqa: BLE001 - the driver quarantines the file with this message
            return "error", f"{type(exc).__name__}: {exc}", traceback.format_exc()


def start_ray(num_cpus: int | None, address: str | None) -> bool:
    """A local Ray instance (``num_cpus``) or an existing cluster (``address``); offline, no dashboard,
    no usage statistics. ``False`` when this process was connected already."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # offline: never report usage
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=True, configure_logging=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, log_to_driver=True,
                 configure_logging=False)
    return True


# -- the driver -------------------------------------------------------------------------------

def run_batch(cfg: PaperloopConfig, patterns: Iterable[str], num_cpus: int | None = None,
              address: str | None = None, progress: bool = True, threads_per_actor: int = 1,
              retry_failed: bool = False) -> BatchSummary:
    """Process every file named by ``patterns`` on Ray; see the module's docstring."""
    started = time.perf_counter()
    summary = BatchSummary()
    store = Store(cfg.paths.database)
    runner = JobRunner(cfg, store)
    try:
        queued = _intake(runner, list_entries(patterns), summary, retry_failed)
        if queued:
            _process_on_ray(cfg, runner, queued, summary, num_cpus, address, progress, threads_per_actor)
    finally:
        store.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _intake(runner: JobRunner, entries: list[Path], summary: BatchSummary, retry_failed: bool) -> list[Job]:
    """Record every entry as a job; returns the queued ones (new, or left queued by an earlier run)."""
    known: dict[tuple[str, str], Job] = {}
    for job in runner.store.jobs():
        known[(job.source_path, job.sha256)] = job  # the latest job per path and content
    queued: list[Job] = []
    for entry in entries:
        problem = entry_problem(entry) if os.path.lexists(entry) else IngestError(
            Reason.FILE_MISSING, f"{entry.name} was removed before it could be read")
        if problem is not None:
            if (str(entry), "") in known:
                summary.skipped += 1
                continue
            _reject(runner, entry, problem)
            summary.failed += 1
            continue
        try:
            job = _known_or_new(runner, entry, known, retry_failed)
        except IngestError as exc:  # too large, or gone or changed into something else while it was read
            if (str(entry), "") in known:
                summary.skipped += 1  # refused at intake by an earlier run
            else:
                _reject(runner, entry, exc)
                summary.failed += 1
            continue
        except OSError as exc:
            _reject(runner, entry, IngestError(Reason.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}"))
            summary.failed += 1
            continue
        if job is None:
            summary.skipped += 1
        elif job.state == DUPLICATE:
            summary.duplicates += 1
        elif job.state == QUEUED:
            queued.append(job)
    return queued


def _known_or_new(runner: JobRunner, entry: Path, known: dict[tuple[str, str], Job],
                  retry_failed: bool) -> Job | None:
    """The job to run for ``entry``: ``None`` when this path with this content was handled before."""
    from service.safe_files import hash_regular_file

    path = entry.resolve()  # not a link (checked): resolves the parent folders only, as enqueue does
    digest, size = hash_regular_file(path, None, runner.cfg.ingest.max_file_bytes)  # as enqueue reads it
    earlier = known.get((str(path), digest))
    if earlier is not None and not (retry_failed and earlier.state == FAILED):
        if earlier.state == QUEUED:
            return earlier  # an interrupted run: take it up again
        if earlier.state == PROCESSING:
            log.warning("%s is being processed by another worker (job %s); skipped", path, earlier.id)
        return None
    job = runner.enqueue(path, keep_source=True, hashed=(digest, size))  # read once, not twice
    known[(job.source_path, job.sha256)] = job
    return job


def _reject(runner: JobRunner, entry: Path, problem: IngestError) -> None:
    """A failed job for an entry that is not a readable file; its note in quarantine, the entry left alone."""
    job = runner.store.record_rejected(entry, problem.reason, problem.message,
                                       lambda job_id: runner.quarantine / disk_name(job_id, entry.name))
    note = Path(f"{job.final_path}.reason.txt")
    note.parent.mkdir(parents=True, exist_ok=True)
    note.write_text(reason_note(job), encoding="utf-8")
    log.warning("job %s failed (%s): %s", job.id, problem.reason.value, problem.message)


def _process_on_ray(cfg: PaperloopConfig, runner: JobRunner, queued: list[Job], summary: BatchSummary,
                    num_cpus: int | None, address: str | None, progress: bool, threads_per_actor: int) -> None:
    import ray
    from tqdm import tqdm

    from service.jobs import document_id_for

    started = time.perf_counter()
    started_ray = start_ray(num_cpus, address)
    actors: list[Any] = []
    in_flight: dict[Any, tuple[Any, Job, Path]] = {}
    todo = list(reversed(queued))
    bar = None
    try:
        count = max(1, min(int(ray.cluster_resources().get("CPU", 1)), len(queued)))
        Worker = ray.remote(num_cpus=1, max_restarts=-1)(PipelineWorker)
        actor_cfg = _actor_config(cfg, threads_per_actor)
        actors = [Worker.remote(actor_cfg) for _ in range(count)]
        ray.get([actor.ready.remote() for actor in actors])
        summary.startup_seconds = time.perf_counter() - started
        log.info("%d Ray actors ready in %.1f s", count, summary.startup_seconds)
        bar = tqdm(total=len(queued), desc="batch", unit="file", file=sys.stderr, disable=not progress)

        def submit(actor: Any) -> None:
            """Give ``actor`` the next file. One at a time, so that a crash names its file."""
            while todo:
                job = runner.claim(todo.pop().id)
                if job is None:
                    bar.update()  # a daemon's worker took it (it copies the file too, never moves it)
                    continue
                try:
                    work = runner.take(job, keep_source=True)
                except Exception as exc:  # noqa: BLE001 - the file went missing or became a link
                    _count(summary, runner.fail(job, exc, keep_source=True).job)
                    bar.update()
                    continue
                ref = actor.process.remote(str(work), document_id_for(job), job.sha256, job.source_name)
                in_flight[ref] = (actor, job, work)
                return

        for actor in actors:
            submit(actor)
        while in_flight:
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            actor, job, work = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as exc:  # the process died on this file (Ray restarts it)
                result = ("ingest", Reason.CRASHED_WORKER.value,
                          f"the Ray actor processing {job.source_name} died ({type(exc).__name__}); not tried again")
            except Exception as exc:  # noqa: BLE001 - anything Ray raises quarantines this one file
                result = ("error", f"{type(exc).__name__}: {exc}", "")
            submit(actor)  # the actor works on the next file while this one is written
            if result[0] == "ok":
                outcome = runner.finish(job, work, result[1], result[2], keep_source=True)
            elif result[0] == "ingest":
                outcome = runner.fail(job, IngestError(Reason(result[1]), result[2]), keep_source=True)
            else:
                log.error("processing %s failed on a Ray actor:\n%s", job.source_name, result[2])
                outcome = runner.fail(job, IngestError(Reason.PROCESSING_ERROR, result[1]), keep_source=True)
            _count(summary, outcome.job)
            bar.update()
            bar.set_postfix(processed=summary.processed, failed=summary.failed, refresh=False)
    finally:
        if bar is not None:
            bar.close()
        for _, job, _ in in_flight.values():
            runner.store.update_job(job.id, state=QUEUED)  # interrupted: the next run takes it up again
        for actor in actors:
            ray.kill(actor)
        if started_ray:
            ray.shutdown()


def _count(summary: BatchSummary, job: Job) -> None:
    summary.states[job.state] += 1
    if job.state in (DONE, NEEDS_REVIEW):
        summary.processed += 1
    elif job.state == FAILED:
        summary.failed += 1


def _actor_config(cfg: PaperloopConfig, threads: int) -> PaperloopConfig:
    """The config shipped to the actors: paths made absolute (an actor's working folder is Ray's),
    Paddle threads per actor (one actor per CPU)."""
    paths = cfg.paths.model_copy(update={name: cfg.paths.resolve(name) for name in
                                         ("inbox", "archive", "quarantine", "output", "data", "models")})
    paths = paths.model_copy(update={"root": paths.root.resolve()})
    ocr = cfg.ocr.model_copy(update={"threads": threads})
    return cfg.model_copy(update={"paths": paths, "ocr": ocr})
