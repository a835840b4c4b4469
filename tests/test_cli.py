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


def test_models_promote_switches_and_rejects_unknown_versions(cfg: PaperloopConfig) -> None:
    assert _invoke(cfg, "models", "promote", "det", "base").output.strip() == "det: base → base"
    result = CliRunner().invoke(cli, ["--config", str(cfg.paths.resolve("data") / "config.yaml"),
                                      "models", "promote", "det", "v9"])
    assert result.exit_code == 1 and "no version 'v9'" in result.output


def test_train_and_eval_commands_on_gold_labels(own_registry: PaperloopConfig) -> None:
    cfg = own_registry
    from service.formats import read_funsd
    from service.funsd import split_pairs
    from service.labels import LabelStore
    from service.store import Store

    from conftest import FUNSD_ROOT

    labels = LabelStore(Store(cfg.paths.database))
    for split, source, count in (("train", "training", 6), ("test", "testing", 2)):
        for image, annotation in split_pairs(source, FUNSD_ROOT)[:count]:
            labels.put(read_funsd(annotation, image), "funsd", split)
    cfg.kie.training.dim, cfg.kie.training.layers, cfg.kie.training.embed_dim = 32, 1, 16
    trained = _invoke(cfg, "train", "ser", "--epochs", "2")
    assert "training ser on 5 documents, validating on 1" in trained.output and "(in service)" in trained.output
    assert "(in service)" in _invoke(cfg, "train", "re", "--epochs", "2").output
    report = json.loads(_invoke(cfg, "eval", "ser", "--json").output)
    assert set(report["versions"]) == {"ser", "re"} and 0 <= report["hmean"] <= 1
    assert report["scores"]["overall"]["gold"] > 0
    again = _invoke(cfg, "train", "ser", "--epochs", "1")
    assert "not in service" in again.output  # a second model waits for promotion
    job = _invoke(cfg, "train", "--now", "re")  # the learning job for one task: too few new documents
    assert job.output.strip() == "re: skipped — 6 new gold documents < 20"
    refused = CliRunner().invoke(cli, ["--config", str(cfg.paths.resolve("data") / "config.yaml"), "train", "rec"])
    assert refused.exit_code == 2 and "paperloop train --now rec" in refused.output
