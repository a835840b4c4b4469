"""The real `paperloop` command in child processes: crash recovery, clean stop, offline use."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from service.config import PaperloopConfig

from conftest import render_form_page, wait_for, write_pdf

PAPERLOOP = [sys.executable, "-m", "service"]


def _config_file(cfg: PaperloopConfig, workers: int = 1) -> Path:
    if workers > 1:  # N worker processes of one thread each, as on this 2-core machine
        cfg.daemon.workers, cfg.ocr.threads = workers, 1
    path = cfg.paths.resolve("data") / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def _query(cfg: PaperloopConfig, sql: str) -> list[tuple]:
    if not cfg.paths.database.exists():
        return []
    with sqlite3.connect(cfg.paths.database, timeout=30) as conn:
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return []


def _serve(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([*PAPERLOOP, "--config", str(config), "serve"],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def _workers(daemon: subprocess.Popen) -> list[psutil.Process]:
    """The daemon's worker processes (short-lived children such as poppler's, even exited ones, are not)."""
    return [p for p in psutil.Process(daemon.pid).children() if "spawn_main" in _cmdline(p)]


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except (psutil.ZombieProcess, psutil.NoSuchProcess, psutil.AccessDenied):  # a pdftoppm that just exited
        return ""


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _finished(cfg: PaperloopConfig) -> bool:
    states = _query(cfg, "SELECT state FROM jobs")
    return bool(states) and all(s in ("done", "needs_review") for (s,) in states)


def _drop_forms_and_wait(cfg: PaperloopConfig, prefix: str, seeds: range) -> None:
    """Render one form page per seed into the inbox; wait until every job so far is finished."""
    for seed in seeds:
        render_form_page(cfg.paths.resolve("inbox") / f"{prefix}-{seed}.png", seed=seed)
    total = len(_query(cfg, "SELECT id FROM jobs")) + len(seeds)
    wait_for(lambda: len(_query(cfg, "SELECT id FROM jobs")) == total and _finished(cfg), timeout=300,
             what=f"{len(seeds)} {prefix} pages processed")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_mid_document_loses_nothing_and_processes_once(
    cfg: PaperloopConfig, funsd_pages: list[Path], tmp_path: Path, workers: int
) -> None:
    config, log = _config_file(cfg, workers), tmp_path / "serve.log"
    pdf = write_pdf(tmp_path / "three-pages.pdf", funsd_pages)
    daemon = _serve(config, log)
    try:
        shutil.copy(pdf, cfg.paths.resolve("inbox") / "three-pages.pdf")
        wait_for(lambda: _query(cfg, "SELECT state FROM jobs") == [("processing",)], timeout=120)
        children = _workers(daemon)
        assert len(children) == (workers if workers > 1 else 0)
        daemon.kill()  # SIGKILL: no chance to clean up
        daemon.wait(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    wait_for(lambda: all(_gone(p) for p in children), timeout=10, what="workers die with the daemon")
    assert _query(cfg, "SELECT state FROM jobs") == [("processing",)]

    restarted = _serve(config, log)
    try:
        wait_for(lambda: _query(cfg, "SELECT state FROM jobs")[0][0] in ("done", "needs_review"), timeout=180)
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert _query(cfg, "SELECT attempts, document_id FROM jobs") == [(2, "doc-000001")]
    assert _query(cfg, "SELECT COUNT(*) FROM documents") == [(1,)]
    assert _query(cfg, "SELECT COUNT(*) FROM pages") == [(3,)]
    archived = cfg.paths.resolve("archive") / "1-three-pages.pdf"
    assert archived.read_bytes() == pdf.read_bytes()
    assert not any((cfg.paths.resolve("data") / "work").iterdir())
    assert not any(cfg.paths.resolve("inbox").iterdir())


@pytest.mark.slow
def test_sigterm_finishes_the_document_in_flight(
    cfg: PaperloopConfig, funsd_pages: list[Path], tmp_path: Path
) -> None:
    config, log = _config_file(cfg), tmp_path / "serve.log"
    daemon = _serve(config, log)
    try:
        write_pdf(cfg.paths.resolve("inbox") / "two-pages.pdf", funsd_pages[:2])
        wait_for(lambda: _query(cfg, "SELECT state FROM jobs") == [("processing",)], timeout=120)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert _query(cfg, "SELECT state FROM jobs")[0][0] in ("done", "needs_review")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                    reason="needs root and unshare to cut the network")
def test_process_runs_with_no_network_at_all(cfg: PaperloopConfig, funsd_pages: list[Path], tmp_path: Path) -> None:
    config = _config_file(cfg)
    pdf = write_pdf(tmp_path / "offline.pdf", funsd_pages[:1])
    result = subprocess.run(["unshare", "-n", *PAPERLOOP, "--config", str(config), "process", str(pdf)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    json_path = Path(result.stdout.split()[-1])
    assert json_path.is_file() and "segments" in json_path.read_text()
    # the namespace really had no network: only the loopback device, and it is down
    probe = subprocess.run(["unshare", "-n", sys.executable, "-c",
                            "import socket; socket.create_connection(('pypi.org', 443), timeout=3)"],
                           capture_output=True, text=True)
    assert probe.returncode != 0


def _two_worker_daemon(cfg: PaperloopConfig, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    config, log = _config_file(cfg, workers=2), tmp_path / "serve.log"
    daemon = _serve(config, log)
    wait_for(lambda: "2 workers ready" in log.read_text(errors="replace"), timeout=180, what="workers ready")
    return daemon, log


def _stop(daemon: subprocess.Popen, log: Path) -> None:
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=180) == 0, log.read_text()[-3000:]


@pytest.mark.slow
def test_two_workers_process_a_batch_once_each(cfg: PaperloopConfig, tmp_path: Path) -> None:
    daemon, log = _two_worker_daemon(cfg, tmp_path)
    try:
        worker_pids = {p.pid for p in _workers(daemon)}
        assert len(worker_pids) == 2
        _drop_forms_and_wait(cfg, "form", range(6))
    finally:
        if daemon.poll() is None:
            _stop(daemon, log)
    jobs = _query(cfg, "SELECT attempts, claimed_by, document_id FROM jobs ORDER BY id")
    assert [attempts for attempts, _, _ in jobs] == [1] * 6
    assert {pid for _, pid, _ in jobs} == worker_pids  # both workers took jobs, the main process none
    assert sorted(doc for _, _, doc in jobs) == [f"doc-{i:06d}" for i in range(1, 7)]
    assert _query(cfg, "SELECT COUNT(*), COUNT(DISTINCT sha256) FROM documents") == [(6, 6)]
    assert len(list(cfg.paths.resolve("output").glob("*.json"))) == 6
    assert len(list(cfg.paths.resolve("archive").iterdir())) == 6
    assert not any(cfg.paths.resolve("inbox").iterdir())


@pytest.mark.slow
def test_kill_9_of_one_worker_requeues_only_its_job(cfg: PaperloopConfig, pages: list[Path],
                                                     tmp_path: Path) -> None:
    first = write_pdf(tmp_path / "first.pdf", pages)
    second = write_pdf(tmp_path / "second.pdf", [render_form_page(tmp_path / f"p{i}.png", seed=10 + i)
                                                 for i in range(3)])
    daemon, log = _two_worker_daemon(cfg, tmp_path)
    try:
        shutil.copy(first, cfg.paths.resolve("inbox") / "first.pdf")
        shutil.copy(second, cfg.paths.resolve("inbox") / "second.pdf")
        wait_for(lambda: _query(cfg, "SELECT state FROM jobs ORDER BY id") == [("processing",)] * 2,
                 timeout=120, what="both documents in flight")
        (victim,), (survivor,) = _query(cfg, "SELECT claimed_by FROM jobs ORDER BY id")
        assert victim != survivor
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: _finished(cfg) and len(_query(cfg, "SELECT id FROM jobs")) == 2, timeout=300,
                 what="both documents processed")
        assert daemon.poll() is None  # the daemon went on
        replacement = {p.pid for p in _workers(daemon)} - {survivor}
        assert len(replacement) == 1 and victim not in replacement
        text = log.read_text(errors="replace")
        assert f"pid {victim}) died (killed by signal 9); its job(s) requeued: 1 (first.pdf, attempt 1)" in text
    finally:
        if daemon.poll() is None:
            _stop(daemon, log)
    assert _query(cfg, "SELECT id, attempts FROM jobs ORDER BY id") == [(1, 2), (2, 1)]
    (redo,), (kept,) = _query(cfg, "SELECT claimed_by FROM jobs ORDER BY id")
    assert redo != victim and kept == survivor
    assert _query(cfg, "SELECT COUNT(*) FROM documents") == [(2,)]
    assert _query(cfg, "SELECT COUNT(*) FROM pages") == [(6,)]
    assert (cfg.paths.resolve("archive") / "1-first.pdf").read_bytes() == first.read_bytes()
    assert not any((cfg.paths.resolve("data") / "work").iterdir())


@pytest.mark.slow
def test_sigterm_with_two_workers_finishes_both_documents_in_flight(
    cfg: PaperloopConfig, pages: list[Path], tmp_path: Path
) -> None:
    daemon, log = _two_worker_daemon(cfg, tmp_path)
    try:
        write_pdf(cfg.paths.resolve("inbox") / "a.pdf", pages[:2])
        write_pdf(cfg.paths.resolve("inbox") / "b.pdf", pages[1:])
        wait_for(lambda: _query(cfg, "SELECT state FROM jobs ORDER BY id") == [("processing",)] * 2,
                 timeout=120, what="both documents in flight")
        children = _workers(daemon)
        _stop(daemon, log)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert all(_gone(p) for p in children)
    assert _query(cfg, "SELECT state FROM jobs WHERE state NOT IN ('done', 'needs_review')") == []
    assert _query(cfg, "SELECT COUNT(*), SUM(attempts) FROM jobs") == [(2, 2)]


@pytest.mark.slow
def test_a_model_promoted_while_two_workers_run_reaches_both(cfg: PaperloopConfig, tmp_path: Path) -> None:
    """Hot reload with N workers: every document read after the switch names the new version, from both workers."""
    import dataclasses
    import json

    from service.base_models import install_base_models
    from service.registry import ModelRegistry

    cfg.paths.models = tmp_path / "own-models"  # a registry of its own: this test adds a version
    registry = ModelRegistry(cfg.paths.models)
    install_base_models(registry)
    daemon, log = _two_worker_daemon(cfg, tmp_path)
    try:
        _drop_forms_and_wait(cfg, "before", range(2))
        base, base_dir = registry.current_dir("rec")
        card = dataclasses.replace(registry.card("rec", base), version="v2-copy", parent=base, source="test")
        files = {p.name: p for p in base_dir.iterdir() if p.name not in ("inference.yml", "card.json")}
        registry.add_version(card, files, registry.inference_config("rec", base))
        registry.set_current("rec", "v2-copy", reason="promoted while serving", actor="test")
        _drop_forms_and_wait(cfg, "after", range(2, 8))
    finally:
        if daemon.poll() is None:
            _stop(daemon, log)
    jobs = _query(cfg, "SELECT claimed_by, document_id FROM jobs ORDER BY id")
    output = cfg.paths.resolve("output")
    rec_of = {doc: json.loads((output / f"{doc}.json").read_text())["model_versions"]["rec"] for _, doc in jobs}
    assert [rec_of[doc] for _, doc in jobs[:2]] == [base, base]
    assert [rec_of[doc] for _, doc in jobs[2:]] == ["v2-copy"] * 6
    assert len({pid for pid, _ in jobs[2:]}) == 2  # both workers read with the new version
