"""The real `paperloop` command in child processes: crash recovery, clean stop, offline use."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from service.config import PaperloopConfig

from conftest import wait_for, write_pdf

PAPERLOOP = [sys.executable, "-m", "service"]


def _config_file(cfg: PaperloopConfig) -> Path:
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


@pytest.mark.slow
def test_kill_9_mid_document_loses_nothing_and_processes_once(
    cfg: PaperloopConfig, funsd_pages: list[Path], tmp_path: Path
) -> None:
    config, log = _config_file(cfg), tmp_path / "serve.log"
    pdf = write_pdf(tmp_path / "three-pages.pdf", funsd_pages)
    daemon = _serve(config, log)
    try:
        shutil.copy(pdf, cfg.paths.resolve("inbox") / "three-pages.pdf")
        wait_for(lambda: _query(cfg, "SELECT state FROM jobs") == [("processing",)], timeout=120)
        daemon.kill()  # SIGKILL: no chance to clean up
        daemon.wait(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
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
