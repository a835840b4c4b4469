"""``paperloop batch`` on a local Ray instance (2 CPUs): the daemon's stages, store and JSON writer."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import render_form_page
from service.batch import list_entries, run_batch
from service.cli import cli
from service.config import PaperloopConfig
from service.jobs import JobRunner
from service.store import DONE, DUPLICATE, FAILED, NEEDS_REVIEW, Store


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture
def backlog(tmp_path: Path, pages: list[Path]) -> Path:
    """4 good pages (one in a sub-folder), a damaged PDF and a copy of the first page."""
    folder = tmp_path / "backlog"
    (folder / "more").mkdir(parents=True)
    for page in pages:
        shutil.copy2(page, folder / page.name)
    render_form_page(folder / "more" / "form-4.png", seed=3)
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not a PDF body\n")
    shutil.copy2(pages[0], folder / "more" / "copy-of-form-1.png")
    return folder


@pytest.mark.slow
def test_a_backfill_on_ray_processes_dedups_quarantines_and_resumes(
        cfg: PaperloopConfig, backlog: Path, tmp_path: Path) -> None:
    import ray

    before = _snapshot(backlog)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())), encoding="utf-8")
    try:
        result = CliRunner().invoke(cli, ["--config", str(config), "batch", str(backlog), "--num-cpus", "2"],
                                    catch_exceptions=False)
        assert result.exit_code == 1, result.output  # one file failed
        assert "processed 4 " in result.output and "duplicates 1 " in result.output
        assert "failed 1 " in result.output

        store = Store(cfg.paths.database)
        jobs = store.jobs()
        states = sorted(job.state for job in jobs)
        assert states.count(DUPLICATE) == 1 and states.count(FAILED) == 1
        assert sum(state in (DONE, NEEDS_REVIEW) for state in states) == 4
        failed = next(job for job in jobs if job.state == FAILED)
        assert failed.source_name == "broken.pdf" and failed.reason_code == "pdf_damaged"
        note = Path(failed.final_path + ".reason.txt").read_text(encoding="utf-8")
        assert note.startswith("pdf_damaged\n")
        assert Path(failed.final_path).read_bytes() == (backlog / "broken.pdf").read_bytes()  # a copy
        duplicate = next(job for job in jobs if job.state == DUPLICATE)
        assert duplicate.source_name == "copy-of-form-1.png"
        assert store.job(duplicate.duplicate_of).source_name == "form-1.png"
        for job in jobs:
            if job.state in (DONE, NEEDS_REVIEW):
                data = json.loads((cfg.paths.resolve("output") / f"{job.document_id}.json").read_text())
                assert data["sha256"] == job.sha256 and data["source_name"] == job.source_name
                assert data["pages"][0]["segments"], job.source_name
                assert store.document(job.document_id).pages[0].segments
        assert _snapshot(backlog) == before  # the user's files: same bytes, never moved or touched
        store.close()

        again = run_batch(cfg, [str(backlog / "*.png"), str(backlog / "more"), str(backlog / "broken.pdf")],
                          num_cpus=2, progress=False)
        assert (again.processed, again.duplicates, again.failed, again.skipped) == (0, 0, 0, 6)
        store = Store(cfg.paths.database)
        assert len(store.jobs()) == len(jobs)
        store.close()
        assert _snapshot(backlog) == before

        # A run interrupted after intake left a job queued: the next run takes it up, as the same job;
        # with retry_failed the damaged PDF is tried (and quarantined) once more.
        render_form_page(backlog / "form-5.png", seed=4)
        store = Store(cfg.paths.database)
        left = JobRunner(cfg, store).enqueue(backlog / "form-5.png", keep_source=True)
        store.close()
        resumed = run_batch(cfg, [str(backlog)], num_cpus=2, progress=False, retry_failed=True)
        assert (resumed.processed, resumed.duplicates, resumed.failed, resumed.skipped) == (1, 0, 1, 5)
        store = Store(cfg.paths.database)
        assert store.job(left.id).state in (DONE, NEEDS_REVIEW) and len(store.jobs()) == len(jobs) + 2
        store.close()
    finally:
        ray.shutdown()


def test_links_are_recorded_never_followed(cfg: PaperloopConfig, tmp_path: Path, page_path: Path) -> None:
    """A link to a file and a link to a folder outside the backlog: failed ``symlink`` jobs, targets untouched.
    (Nothing is queued, so no Ray instance starts.)"""
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy2(page_path, outside / "secret.png")
    folder = tmp_path / "backlog"
    folder.mkdir()
    (folder / "link.png").symlink_to(outside / "secret.png")
    (folder / "linked-folder").symlink_to(outside)
    assert [p.name for p in list_entries([str(folder)])] == ["link.png", "linked-folder"]
    assert list_entries([str(folder / "*" / "*.png")]) == []  # a glob does not lead out through the link

    summary = run_batch(cfg, [str(folder)], num_cpus=1, progress=False)
    assert (summary.processed, summary.failed) == (0, 2)
    store = Store(cfg.paths.database)
    assert sorted(job.reason_code for job in store.jobs()) == ["symlink", "symlink"]
    store.close()
    assert os.path.islink(folder / "link.png") and (outside / "secret.png").read_bytes() == page_path.read_bytes()
    assert run_batch(cfg, [str(folder)], num_cpus=1, progress=False).skipped == 2
