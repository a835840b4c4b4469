"""``daemon.workers``: the setting, and the store under several writers (the process tests, which
run ``paperloop serve`` with 2 workers, are in test_process_lifecycle.py)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from service.config import ConfigError, PaperloopConfig, load_config
from service.jobs import JobRunner
from service.store import FAILED, MIGRATIONS, PROCESSING, QUEUED, Store
from service.workers import requeue_worker_jobs


def test_workers_default_is_one_thread_and_auto_divides_the_cores(tmp_path: Path) -> None:
    assert PaperloopConfig().daemon.workers == 1
    assert PaperloopConfig().daemon.resolved_workers(2) == 1
    auto = PaperloopConfig.model_validate({"daemon": {"workers": "auto"}})
    assert auto.daemon.resolved_workers(1) == os.cpu_count()
    assert auto.daemon.resolved_workers(2) == max(1, os.cpu_count() // 2)
    assert auto.daemon.resolved_workers(1000) == 1
    config = tmp_path / "c.yaml"
    config.write_text("daemon:\n  workers: 3\n")
    assert load_config(config).daemon.resolved_workers(2) == 3


@pytest.mark.parametrize("bad", [0, -1, "many", 1.5, True, None])
def test_invalid_workers_are_refused(tmp_path: Path, bad: object) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"daemon:\n  workers: {'null' if bad is None else bad}\n")
    with pytest.raises(ConfigError, match="workers"):
        load_config(config)


def test_unknown_daemon_key_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("daemon:\n  worker: 2\n")
    with pytest.raises(ConfigError, match="worker"):
        load_config(config)


def test_concurrent_claims_from_several_connections_take_each_job_once(tmp_path: Path) -> None:
    """Four connections (as four worker processes have) claim and finish 60 jobs at once: every job
    is claimed exactly once and no claim fails with "database is locked" (a deferred transaction
    that reads then writes fails at once when another connection committed in between)."""
    database = tmp_path / "paperloop.db"
    main = Store(database)
    for i in range(60):
        main.enqueue(tmp_path / f"f{i}.png", f"{i:064x}", 1)
    claimed: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        store = Store(database)
        try:
            while (job := store.claim_next(lambda j: tmp_path / f"work-{j.id}")) is not None:
                claimed.append(job.id)
                store.update_job(job.id, state="done")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(claimed) == list(range(1, 61))
    assert main.counts()["done"] == 60


def test_review_transactions_and_worker_claims_share_the_database_without_locking_errors(tmp_path: Path) -> None:
    """The review app's read-then-write transactions run beside the workers' claims."""
    database = tmp_path / "paperloop.db"
    main = Store(database)
    for i in range(40):
        main.enqueue(tmp_path / f"f{i}.png", f"{i:064x}", 1)
    errors: list[BaseException] = []

    def claims() -> None:
        store = Store(database)
        try:
            while (job := store.claim_next(lambda j: tmp_path / f"work-{j.id}")) is not None:
                store.update_job(job.id, state="done")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reviews() -> None:
        store = Store(database)
        try:
            for _ in range(40):
                with store.transaction() as db:
                    count = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'done'").fetchone()[0]
                    db.execute("UPDATE jobs SET reason = ? WHERE id = 1", [f"seen {count}"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=t) for t in (claims, claims, reviews, reviews)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert main.counts()["done"] == 40


def test_a_claim_records_the_claiming_process(tmp_path: Path) -> None:
    store = Store(tmp_path / "paperloop.db")
    job = store.enqueue(tmp_path / "a.png", "a" * 64, 1)
    assert store.job(job.id).claimed_by is None
    assert store.claim_next(lambda j: tmp_path / "work-a").claimed_by == os.getpid()


def test_requeue_of_a_dead_worker_takes_back_only_its_jobs(cfg: PaperloopConfig) -> None:
    store = Store(cfg.paths.database)
    runner = JobRunner(cfg, store)
    mine, other = (store.enqueue(cfg.paths.resolve("inbox") / f"{n}.png", n * 64, 1) for n in "ab")
    for job in (mine, other):
        store.claim(job.id, runner._work_path)
    store.update_job(other.id, claimed_by=4242)  # the job of another worker, still alive
    requeued = requeue_worker_jobs(runner, os.getpid())
    assert [(j.id, j.state, j.attempts) for j in requeued] == [(mine.id, QUEUED, 1)]
    assert store.job(other.id).state == PROCESSING
    assert requeue_worker_jobs(runner, os.getpid()) == []


def test_a_job_that_killed_its_worker_too_often_is_quarantined(cfg: PaperloopConfig) -> None:
    store = Store(cfg.paths.database)
    runner = JobRunner(cfg, store)
    job = store.enqueue(cfg.paths.resolve("inbox") / "bomb.png", "b" * 64, 1)
    for attempt in range(cfg.ingest.max_attempts):
        store.claim(job.id, runner._work_path)
        requeue_worker_jobs(runner, os.getpid())
    done = store.job(job.id)
    assert (done.state, done.reason_code, done.attempts) == (FAILED, "crashed_worker", cfg.ingest.max_attempts)
    assert Path(done.final_path + ".reason.txt").is_file()


def _open_store(database: str, start: Any, errors: Any) -> None:
    start.wait()
    try:
        Store(Path(database)).close()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        errors.put(repr(exc))


def test_processes_opening_a_new_database_at_once_migrate_it_once(tmp_path: Path) -> None:
    """The daemon, its workers and the review app may all open a brand-new database together."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    for attempt in range(3):
        database = tmp_path / f"new-{attempt}.db"
        start, errors = context.Event(), context.Queue()
        processes = [context.Process(target=_open_store, args=(str(database), start, errors)) for _ in range(4)]
        for process in processes:
            process.start()
        time.sleep(2.0)  # let every child import and wait at the start line
        start.set()
        for process in processes:
            process.join(timeout=60)
        found = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
        assert found == [] and all(p.exitcode == 0 for p in processes), found
        names = [row["name"] for row in Store(database).db["_migrations"].rows]
        assert len(names) == len(set(names)) == len(MIGRATIONS)
