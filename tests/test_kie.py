"""SER / RE: metrics, calibration, export parity, and short real trainings on FUNSD forms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.config import KieConfig, PaperloopConfig, load_config
from service.document import Document
from service.formats import read_funsd
from service.funsd import split_pairs
from service.kie import fit
from service.kie.data import split_into_lines
from service.kie.evaluation import evaluate_gold
from service.kie.inference import KieModels
from service.kie.metrics import expected_calibration_error, link_scores, ser_scores
from service.kie.candidates import register, train_re, train_ser
from service.ocr.engine import Predictor
from service.jobs import JobRunner
from service.store import Store
from service.registry import ModelRegistry

from conftest import FUNSD_ROOT, PROJECT_ROOT

LABELS = ["header", "question", "answer", "other"]
QUICK = fit.TrainSettings(epochs=12, dim=64, layers=2, heads=4, embed_dim=32, seed=0, learning_rate=2e-3)


def _funsd(split: str, count: int) -> list[Document]:
    pairs = split_pairs(split, FUNSD_ROOT)[:count]
    return [read_funsd(annotation, image) for image, annotation in pairs]


def test_ser_scores_leave_out_other_and_count_by_hand() -> None:
    gold = ["question", "answer", "answer", "header", "other"]
    predicted = ["question", "answer", "question", "other", "other"]
    scores = ser_scores(gold, predicted, LABELS)
    assert (scores["question"].matched, scores["question"].predicted, scores["question"].ground_truth) == (1, 2, 1)
    # overall without "other": tp 2 (question, answer), predicted 3, gold 4
    assert scores["overall"].precision == pytest.approx(2 / 3)
    assert scores["overall"].recall == pytest.approx(2 / 4)


def test_a_link_needs_the_right_direction() -> None:
    scores = link_scores([("q1", "a1"), ("q2", "a2")], [("q1", "a1"), ("a2", "q2")])
    assert (scores.matched, scores.predicted, scores.ground_truth) == (1, 2, 2)


def test_ece_of_perfectly_calibrated_and_overconfident_predictions() -> None:
    confidences = np.array([0.8] * 10)
    assert expected_calibration_error(confidences, np.array([1] * 8 + [0] * 2)) == pytest.approx(0.0)
    assert expected_calibration_error(confidences, np.array([1] * 5 + [0] * 5)) == pytest.approx(0.3)


def test_temperature_cools_overconfident_logits() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, 400)
    logits = rng.normal(0, 1, (400, 3))
    logits[np.arange(400), targets] += 1.0
    example = fit.Example(features=None, labels=targets, links=np.zeros((0, 0)), label_probs=np.zeros((0, 3)))  # type: ignore[arg-type]
    assert fit.ser_temperature([logits * 6], [example]) > 2.0  # 6x too sharp: T must soften it
    assert fit.ser_temperature([logits], [example]) == pytest.approx(1.0, rel=0.35)


@pytest.mark.slow
def test_line_split_keeps_labels_and_links_on_first_lines() -> None:
    document = _funsd("testing", 1)[0]
    lines = split_into_lines(document)
    assert len(lines.segments) > len(document.segments)
    by_id = {s.id: s for s in lines.segments}
    assert all(by_id[l.key] and by_id[l.value] for l in lines.links)
    assert len(lines.links) == len(document.links)
    multi = next(s for s in lines.segments if ".l1" in s.id)
    assert multi.label == document.segment(multi.id.split(".l")[0]).label


def test_custom_label_schema_from_config() -> None:
    cfg = load_config(PROJECT_ROOT / "configs/invoice.yaml")
    assert "total" in cfg.kie.labels and cfg.kie.other_label in cfg.kie.labels
    with pytest.raises(ValueError):
        KieConfig(labels=["a", "b"], other_label="other")


@pytest.fixture(scope="module")
def quick_models(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> dict:
    """SER and RE trained briefly on 16 FUNSD training forms, registered with the base OCR models."""
    forms = _funsd("training", 20)
    train, val = forms[:16], forms[16:]
    ser = train_ser(train, val, LABELS, QUICK, progress=False)
    # No SER label source: RE learns on (lightly noised) gold labels, as when no SER is in service yet.
    re = train_re(train, val, LABELS, QUICK, None, progress=False)
    registry_root = tmp_path_factory.mktemp("kie-models")
    for task in ("det", "rec"):
        (registry_root / task).symlink_to(models_dir / task)
    registry = ModelRegistry(registry_root)
    versions = {"ser": register(ser, registry), "re": register(re, registry)}
    for task, version in versions.items():
        registry.set_current(task, version, reason="test: the models under test", actor="tests/test_kie.py")
    return {"ser": ser, "re": re, "registry": registry, "versions": versions}


@pytest.mark.slow
def test_short_training_beats_trivial_baselines_on_held_out_forms(quick_models: dict) -> None:
    test_docs = _funsd("testing", 10)
    report = evaluate_gold(KieModels(quick_models["registry"]), test_docs, LABELS, "other")
    # Baseline SER: every segment is a "question" (the most frequent label in FUNSD training).
    gold = [s.label for d in test_docs for s in d.segments]
    majority = ser_scores(gold, ["question"] * len(gold), LABELS)["overall"].hmean
    assert report["ser"]["hmean"] > majority + 0.15, (report["ser"]["hmean"], majority)
    assert 0 < report["re"]["hmean"] <= 1 and 0 <= report["ser"]["ece"] < 0.5

    # Baseline RE: with the gold labels given to both, link every answer to the nearest question.
    examples = [fit.make_example(d, LABELS) for d in test_docs]
    re = quick_models["re"]
    ours = fit.re_evaluate(fit.re_logits(re.model, examples), examples, re.threshold, re.temperature).hmean
    nearest = _nearest_question_baseline(test_docs)
    assert ours > nearest, (ours, nearest)


def _nearest_question_baseline(documents: list[Document]) -> float:
    gold, predicted = [], []
    for d in documents:
        gold += [(d.id, l.key, l.value) for l in d.links]
        questions = [s for s in d.segments if s.label == "question"]
        for answer in (s for s in d.segments if s.label == "answer"):
            if questions:
                ax, ay = answer.bbox[0], (answer.bbox[1] + answer.bbox[3]) / 2
                q = min(questions, key=lambda s: (s.bbox[2] - ax) ** 2 + ((s.bbox[1] + s.bbox[3]) / 2 - ay) ** 2)
                predicted.append((d.id, q.id, answer.id))
    return link_scores(gold, predicted).hmean


@pytest.mark.slow
def test_exported_models_match_the_trained_ones(quick_models: dict) -> None:
    registry: ModelRegistry = quick_models["registry"]
    document = _funsd("testing", 1)[0]
    example = fit.make_example(document, LABELS)
    expected = fit.ser_logits(quick_models["ser"].model, [example])[0]
    exported = Predictor(registry.version_dir("ser", quick_models["versions"]["ser"]), use_mkldnn=False)
    batch = fit.collate([example])
    got = exported.run([batch[k].numpy() for k in fit.MODEL_INPUTS])[0][0]
    assert np.abs(got - expected).max() < 1e-4
    card = registry.card("ser", quick_models["versions"]["ser"])
    assert card.data_counts["train_documents"] == 16 and 0 < card.metrics["hmean"] <= 1
    assert 0 <= card.metrics["ece"] < 1 and card.metrics["parameters"] < 10_000_000
    yml = registry.inference_config("re", quick_models["versions"]["re"])
    assert yml["PostProcess"]["label_list"] == LABELS and 0 < yml["PostProcess"]["link_threshold"] < 1


@pytest.mark.slow
def test_pipeline_output_has_labels_and_key_values(quick_models: dict, tmp_path: Path) -> None:
    registry: ModelRegistry = quick_models["registry"]
    cfg = PaperloopConfig.model_validate({"paths": {"root": str(tmp_path), "models": str(registry.root)}})
    image = split_pairs("testing", FUNSD_ROOT)[0][0]
    store = Store(cfg.paths.database)
    runner = JobRunner(cfg, store)
    job = runner.enqueue(image, keep_source=True)
    outcome = runner.process_job(job.id, keep_source=True)
    result = json.loads(outcome.json_path.read_text())
    assert result["model_versions"]["ser"] == quick_models["versions"]["ser"]
    segments = result["pages"][0]["segments"]
    assert all(s["label"] in LABELS and 0 < s["label_score"] <= 1 for s in segments)
    assert all(0 < s["link_score"] <= 1 for s in segments)  # RE's decision about every segment, links or not
    assert {s["label"] for s in segments} >= {"question", "answer"}
    assert result["links"] and result["key_values"]
    pair = result["key_values"][0]
    assert pair["key"] and pair["value"] and 0 < pair["score"] <= 1
    stored = store.document(outcome.job.document_id)
    assert stored.links and stored.links[0].re_version == quick_models["versions"]["re"]
    assert stored.segments[0].ser_version == quick_models["versions"]["ser"]
    assert [s.link_score for s in stored.segments] == [s["link_score"] for s in segments]


@pytest.mark.slow
def test_training_is_reproducible_with_a_seed() -> None:
    forms = _funsd("training", 4)
    settings = fit.TrainSettings(epochs=1, dim=32, layers=1, heads=2, embed_dim=16, seed=3)
    first = train_ser(forms[:3], forms[3:], LABELS, settings, with_lines=False, progress=False)
    second = train_ser(forms[:3], forms[3:], LABELS, settings, with_lines=False, progress=False)
    example = [fit.make_example(forms[3], LABELS)]
    assert np.array_equal(fit.ser_logits(first.model, example)[0], fit.ser_logits(second.model, example)[0])
