"""The command line, run in-process through click's test runner on temporary folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import paddle.inference
import pytest
import yaml
from click.testing import CliRunner

from service.cli import cli
from service.config import PaperloopConfig
from service.formats import read_funsd
from service.funsd import split_pairs
from service.labels import LabelStore
from service.registry import ModelCard, ModelRegistry
from service.store import Store

from conftest import FUNSD_ROOT


def _invoke(cfg: PaperloopConfig, *args: str):
    config = cfg.paths.resolve("data") / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def test_process_prints_results_and_fails_on_bad_input(cfg: PaperloopConfig, page_path: Path,
                                                       tmp_path: Path) -> None:
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.7 nothing else")
    result = _invoke(cfg, "process", str(page_path), str(bad))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    json_path = Path(lines[0].split()[-1])
    assert json.loads(json_path.read_text())["pages"][0]["segments"]
    assert "failed (pdf_damaged)" in lines[1]
    assert page_path.is_file() and bad.is_file(), "process leaves the caller's files in place"

    again = _invoke(cfg, "process", str(page_path))
    assert again.exit_code == 0 and "duplicate of job 1" in again.output


def test_status_reports_counts_and_models(cfg: PaperloopConfig) -> None:
    result = _invoke(cfg, "status", "--json")
    status = json.loads(result.output)
    assert status["jobs"]["queued"] == 0
    assert status["models"]["det"] == "base" and status["models"]["ser"] is None
    text = _invoke(cfg, "status").output
    assert "no SER/RE model trained yet" in text
    assert "  group (none)\n" in text  # a task name as long as the column still leaves a space


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


@pytest.mark.slow
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


def _placeholder_versions(cfg: PaperloopConfig, tmp_path: Path, *versions: tuple[str, str | None]) -> ModelRegistry:
    """A registry of its own with ``ser`` versions (version, parent): cards and placeholder files."""
    cfg.paths.models = tmp_path / "own-models"
    registry = ModelRegistry(cfg.paths.models)
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\0")
    for version, parent in versions:
        registry.add_version(ModelCard(task="ser", version=version, model_name="PaperloopGraphSER", parent=parent),
                             {"inference.pdiparams": weights}, {"Global": {"model_name": "PaperloopGraphSER"}})
    return registry


def test_promote_and_rollback_are_recorded_and_rollback_follows_the_record(cfg: PaperloopConfig,
                                                                            tmp_path: Path) -> None:
    registry = _placeholder_versions(cfg, tmp_path, ("v1", None), ("v2", "v1"), ("v3", "v1"))
    for version in ("v1", "v2", "v3"):
        assert _invoke(cfg, "models", "promote", "ser", version).exit_code == 0
    # v3's parent is v1, but v2 was in service before it: that is what comes back.
    assert _invoke(cfg, "models", "rollback", "ser").output.strip() == "ser: v3 → v2 (rolled back)"
    assert _invoke(cfg, "models", "rollback", "ser").output.strip() == "ser: v2 → v1 (rolled back)"
    refused = CliRunner().invoke(cli, ["--config", str(cfg.paths.resolve("data") / "config.yaml"),
                                       "models", "rollback", "ser"])
    assert refused.exit_code == 1 and "nothing to roll back" in refused.output
    assert registry.current_version("ser") == "v1"
    history = registry.history("ser")
    assert [(h["from"], h["to"], h["action"]) for h in history] == [
        (None, "v1", "promote"), ("v1", "v2", "promote"), ("v2", "v3", "promote"),
        ("v3", "v2", "rollback"), ("v2", "v1", "rollback")]
    assert all(h["actor"].startswith("user ") and "paperloop models" in h["reason"] for h in history)
    printed = _invoke(cfg, "models", "history", "ser").output.strip().splitlines()
    assert len(printed) == 5 and "v3 → v2" in printed[3] and "rollback" in printed[3]
    assert "(none) → v1" in printed[0]


def _gold(cfg: PaperloopConfig, train: int, holdout: int = 0) -> LabelStore:
    labels = LabelStore(Store(cfg.paths.database))
    for split, source, count in (("train", "training", train), ("holdout", "testing", holdout)):
        for image, annotation in split_pairs(source, FUNSD_ROOT)[:count]:
            labels.put(read_funsd(annotation, image), "funsd", split)
    return labels


def _tiny(cfg: PaperloopConfig) -> None:
    t = cfg.kie.training
    t.dim, t.layers, t.heads, t.embed_dim, t.line_augmentation = 32, 1, 2, 16, False


@pytest.mark.slow
def test_training_without_signal_is_refused_before_it_starts(own_registry: PaperloopConfig) -> None:
    cfg = own_registry
    labels = _gold(cfg, train=3)
    for document in labels.documents("train"):  # a schema without keys: labels, but no links
        document.links = []
        labels.put(document, "funsd", "train")
    config = cfg.paths.resolve("data") / "config.yaml"
    _invoke(cfg, "status")  # writes the config file
    refused = CliRunner().invoke(cli, ["--config", str(config), "train", "re", "--epochs", "1"])
    assert refused.exit_code == 1 and "no gold links" in refused.output, refused.output
    assert "training re" not in refused.output
    for document in labels.documents("train"):  # nothing but "other"
        for segment in document.segments:
            segment.label = cfg.kie.other_label
        labels.put(document, "funsd", "train")
    refused = CliRunner().invoke(cli, ["--config", str(config), "train", "ser", "--epochs", "1"])
    assert refused.exit_code == 1 and "no gold label other than 'other'" in refused.output, refused.output
    registry = ModelRegistry(cfg.paths.resolve("models"))
    assert registry.versions("ser") == [] and registry.versions("re") == []


@pytest.mark.slow
def test_a_first_version_enters_service_only_after_its_evaluation(own_registry: PaperloopConfig,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = own_registry
    _tiny(cfg)
    cfg.kie.training.service_view = False  # the OCR would fail first: this is about the evaluation failing
    _gold(cfg, train=3, holdout=1)
    registry = ModelRegistry(cfg.paths.resolve("models"))
    _invoke(cfg, "status")

    def out_of_memory(*_args, **_kwargs):
        raise MemoryError("simulated: the predictor cannot be created")

    monkeypatch.setattr(paddle.inference, "create_predictor", out_of_memory)
    failed = CliRunner().invoke(cli, ["--config", str(cfg.paths.resolve("data") / "config.yaml"),
                                      "train", "ser", "--epochs", "1"])
    assert failed.exit_code == 1 and "not put in service" in failed.output, failed.output
    (stored,) = registry.versions("ser")
    assert registry.current_version("ser") is None and registry.history("ser") == []

    monkeypatch.undo()
    trained = _invoke(cfg, "train", "ser", "--epochs", "1")
    assert "(in service)" in trained.output and "holdout Hmean" in trained.output, trained.output
    version = registry.current_version("ser")
    assert version != stored
    evaluation = registry.card("ser", version).metrics["evaluation"]
    assert evaluation["split"] == "holdout" and evaluation["documents"] == 1 and 0 <= evaluation["metrics"]["hmean"] <= 1
    (record,) = registry.history("ser")
    assert record["to"] == version and record["actor"] == "paperloop train ser" and "holdout" in record["reason"]


@pytest.mark.slow
def test_holdout_documents_cannot_be_reimported_into_another_split(cfg: PaperloopConfig, tmp_path: Path) -> None:
    def funsd_folder(name: str, count: int) -> Path:
        folder = tmp_path / name
        (folder / "annotations").mkdir(parents=True)
        for image, annotation in split_pairs("testing", FUNSD_ROOT)[:count]:
            (folder / "annotations" / annotation.name).symlink_to(annotation)
        return folder

    assert _invoke(cfg, "import", "funsd", str(funsd_folder("held", 2)), "--split", "holdout").exit_code == 0
    config = cfg.paths.resolve("data") / "config.yaml"
    refused = CliRunner().invoke(cli, ["--config", str(config), "import", "funsd", str(funsd_folder("again", 3)),
                                       "--split", "train"])
    assert refused.exit_code == 1 and "frozen holdout" in refused.output, refused.output
    assert "Traceback" not in refused.output
    counts = LabelStore(Store(cfg.paths.database)).counts()  # all or nothing: the third form is not in either
    assert counts["holdout"]["documents"] == 2 and counts["train"]["documents"] == 0


NOISE = ("No ccache found", "not support input out tensor", "UserWarning")


@pytest.mark.slow
def test_paddle_noise_stays_out_of_our_output(own_registry: PaperloopConfig) -> None:
    cfg = own_registry
    _tiny(cfg)
    _gold(cfg, train=3)
    _invoke(cfg, "status")
    paperloop = [str(Path(sys.executable).parent / "paperloop"), "--config", str(cfg.paths.resolve("data") / "config.yaml")]
    for args in (["--help"], ["status"], ["train", "ser", "--epochs", "1"], ["train", "re", "--epochs", "1"]):
        result = subprocess.run([*paperloop, *args], capture_output=True, text=True, timeout=300)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert not [n for n in NOISE if n in output], (args, output)
    assert ModelRegistry(cfg.paths.resolve("models")).current_version("re") is not None


def test_native_stderr_filter_drops_only_the_noise(capfd: pytest.CaptureFixture[str]) -> None:
    from service.paddle_noise import filtered_native_stderr

    with filtered_native_stderr(["not support input out tensor"]):
        os.write(2, b"W1127 eager_utils.cc:3584] Paddle static graph(PIR) not support input out tensor for now!!!!!\n")
        os.write(2, b"E1127 something that matters\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "E1127 something that matters\nafter\n"
