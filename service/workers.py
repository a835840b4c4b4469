"""Worker processes for ``paperloop serve`` with ``daemon.workers`` > 1.

Each worker is a process started with the ``spawn`` method (Paddle and oneDNN must never be forked
once loaded) that builds its own :class:`~service.pipeline.DocumentPipeline` and claims jobs
through the store, whose claim is one ``BEGIN IMMEDIATE`` transaction: a job is claimed by one
worker only, and the claim records the worker's pid (``jobs.claimed_by``). Workers poll the queue
every ``watcher.poll_interval_seconds``; the watcher stays in the main process and only enqueues.

The main process (:class:`WorkerPool`) notices a worker that died (``kill -9``, a segfault, out of
memory), logs it, requeues the job that worker had claimed (its ``attempts`` keep counting towards
``ingest.max_attempts``; a job that reached it is quarantined as ``crashed_worker``), and starts a
replacement. On stop it sets one event: each worker finishes the document in flight and exits.
Workers die with the main process (``PR_SET_PDEATHSIG``), so a ``kill -9`` of the daemon leaves no
worker behind to race the next start's recovery.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from typing import Any

from service.config import PaperloopConfig
from service.jobs import JobRunner
from service.store import Job, Store

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_LOAD_FAILED = 3  # exit code of a worker whose pipeline could not be built
_RESTART_DELAY_S = 10.0  # a worker that died before it was ready is not restarted sooner than this


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when the process that started it dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the poll loop checks the parent instead
        pass
    if os.getppid() != parent_pid:  # the parent died before the request was in place
        os._exit(1)


def worker_main(config: dict[str, Any], slot: int, parent_pid: int, log_level: int,
                stop: Any, ready: Any) -> None:
    """The body of one worker process: load the pipeline, then process jobs until ``stop``."""
    _die_with_parent(parent_pid)
    logging.basicConfig(level=log_level, stream=sys.stderr, force=True,
                        format=f"%(asctime)s %(levelname)-7s [worker {slot} pid {os.getpid()}] %(name)s: %(message)s")
    # Ctrl-C reaches the whole process group: the main process decides when workers stop. A
    # SIGTERM sent to this worker alone finishes the document in flight, then exits.
    terminated = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: terminated.append(True))

    cfg = PaperloopConfig.model_validate(config)
    store = Store(cfg.paths.database)
    runner = JobRunner(cfg, store)
    try:
        _ = runner.pipeline  # predictors are built here, in the process that runs them
    except BaseException:  # noqa: BLE001 - reported to the main process by the exit code
        log.exception("worker %d (pid %d): could not load the pipeline", slot, os.getpid())
        sys.stderr.flush()
        os._exit(_LOAD_FAILED)
    ready.set()
    log.info("worker %d (pid %d) ready", slot, os.getpid())
    interval = cfg.watcher.poll_interval_seconds
    while not stop.is_set() and not terminated:
        if os.getppid() != parent_pid:
            log.error("worker %d (pid %d): the daemon is gone; exiting", slot, os.getpid())
            break
        try:
            outcome = runner.process_next()
        except Exception:  # noqa: BLE001 - the worker must survive anything
            log.exception("worker error; continuing")
            outcome = None
            time.sleep(1)
        if outcome is None:
            stop.wait(interval)
    store.close()


def requeue_worker_jobs(runner: JobRunner, pid: int) -> list[Job]:
    """A worker process died: put the job it had claimed back in the queue; one interrupted
    ``ingest.max_attempts`` times is quarantined as ``crashed_worker`` instead, as at start-up.
    Returns the jobs taken back from it."""
    jobs = runner.store.requeue_claimed_by(pid)
    for job in jobs:
        try:
            runner._recover_job(job)  # the same rule as JobRunner.recover at start-up
        except Exception:  # noqa: BLE001 - the daemon goes on
            log.exception("could not recover job %s (%s); left queued", job.id, job.source_name)
    return jobs


class WorkerPool:
    """``count`` worker processes, watched and replaced by the main process."""

    def __init__(self, cfg: PaperloopConfig, runner: JobRunner, count: int) -> None:
        self.cfg = cfg
        self.runner = runner
        self.count = count
        self._ctx = multiprocessing.get_context("spawn")
        self.stop_event = self._ctx.Event()
        self._procs: list[Any] = [None] * count
        self._ready: list[Any] = [None] * count
        self._started_at: list[float] = [0.0] * count
        self._buried: set[int] = set()
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        """The pids of the workers now running."""
        return [p.pid for p in self._procs if p is not None and p.is_alive()]

    def _spawn(self, slot: int) -> None:
        ready = self._ctx.Event()
        proc = self._ctx.Process(
            target=worker_main, name=f"paperloop-worker-{slot}", daemon=True,
            args=(self.cfg.model_dump(mode="json"), slot, os.getpid(), logging.getLogger().getEffectiveLevel(),
                  self.stop_event, ready))
        proc.start()
        self._procs[slot], self._ready[slot], self._started_at[slot] = proc, ready, time.monotonic()
        log.info("worker %d started (pid %d)", slot, proc.pid)

    def start(self) -> None:
        """Start every worker and wait until each has loaded its pipeline.

        Call this from the thread that stays alive while the workers run (the main thread of
        ``paperloop serve``): workers are killed when the thread that started them ends.
        """
        for slot in range(self.count):
            self._spawn(slot)
        while not all(ready.is_set() for ready in self._ready):
            for slot, proc in enumerate(self._procs):
                if not self._ready[slot].is_set() and not proc.is_alive():
                    code = proc.exitcode
                    self.stop()
                    raise RuntimeError(f"worker {slot} (pid {proc.pid}) failed to start "
                                       f"(exit code {code}); see the log above")
            time.sleep(0.1)
        log.info("%d workers ready (pids %s)", self.count, ", ".join(map(str, self.pids)))

    def check(self) -> int:
        """Handle workers that died: requeue their jobs and start replacements; returns how many
        died since the last check."""
        died = 0
        for slot, proc in enumerate(self._procs):
            if proc is None or proc.is_alive():
                continue
            if proc.pid not in self._buried:
                died += 1
                self._bury(slot, proc)
            if self._stopping:
                continue
            if not self._ready[slot].is_set() and time.monotonic() - self._started_at[slot] < _RESTART_DELAY_S:
                continue  # died while loading: restarted at a later check, not in a tight loop
            self._spawn(slot)
        return died

    def _bury(self, slot: int, proc: Any) -> None:
        self._buried.add(proc.pid)
        proc.join()
        code = proc.exitcode
        requeued = requeue_worker_jobs(self.runner, proc.pid)
        if self._stopping and code == 0:
            return
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        jobs = ", ".join(f"{job.id} ({job.source_name}, attempt {job.attempts})" for job in requeued) or "none"
        log.error("worker %d (pid %d) died (%s); its job(s) requeued: %s%s", slot, proc.pid, how, jobs,
                  "" if self._stopping else "; starting a replacement")

    def stop(self) -> None:
        """Tell the workers to finish the document in flight and exit; wait for them."""
        self._stopping = True
        self.stop_event.set()
        for proc in self._procs:
            if proc is not None:
                proc.join()
        self.check()  # a worker that died meanwhile: its job back in the queue
