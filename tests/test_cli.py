"""The command line, run in-process through click's test runner on temporary folders."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from service.cli import cli
from service.config import PaperloopConfig


def _invoke(cfg: PaperloopConfig, *args: str):
    config = cfg.paths.resolve("data") / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def test_process_prints_results_and_fails_on_bad_input(cfg: PaperloopConfig, funsd_page_path: Path,
                                                       tmp_path: Path) -> None:
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.7 nothing else")
    result = _invoke(cfg, "process", str(funsd_page_path), str(bad))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    json_path = Path(lines[0].split()[-1])
    assert json.loads(json_path.read_text())["pages"][0]["segments"]
    assert "failed (pdf_damaged)" in lines[1]
    assert funsd_page_path.is_file() and bad.is_file(), "process leaves the caller's files in place"

    again = _invoke(cfg, "process", str(funsd_page_path))
    assert again.exit_code == 0 and "duplicate of job 1" in again.output


def test_status_reports_counts_and_models(cfg: PaperloopConfig) -> None:
    result = _invoke(cfg, "status", "--json")
    status = json.loads(result.output)
    assert status["jobs"]["queued"] == 0
    assert status["models"]["det"] == "base" and status["models"]["ser"] is None
    text = _invoke(cfg, "status").output
    assert "no SER/RE model trained yet" in text


def test_models_list_marks_the_version_in_service(cfg: PaperloopConfig) -> None:
    result = _invoke(cfg, "models", "list", "det")
    assert result.output.startswith("* det  base")


def test_invalid_config_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("paths:\n  inbox: x\n  outbox: y\n")
    result = CliRunner().invoke(cli, ["--config", str(config), "status"])
    assert result.exit_code == 1 and "outbox" in result.output
