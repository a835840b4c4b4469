"""The grouping task trained on real FUNSD forms: `paperloop train group`, its evaluation, and the
service forming entities from a scanned form's OCR words (issue 11). Slow tier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from service.cli import cli
from service.config import PaperloopConfig
from service.formats import read_funsd
from service.funsd import split_pairs
from service.jobs import JobRunner
from service.kie.grouping import gold_groups, gold_word_page, grouping_scores
from service.labels import LabelStore
from service.registry import ModelRegistry
from service.store import Store
from service.tasks import get_task
from tests.conftest import FUNSD_ROOT

pytestmark = pytest.mark.slow


def _forms(split: str, start: int, count: int):
    return [read_funsd(annotation, image) for image, annotation in split_pairs(split, FUNSD_ROOT)[start:start + count]]


@pytest.fixture
def group_cfg(own_registry: PaperloopConfig) -> PaperloopConfig:
    cfg = own_registry
    t = cfg.kie.training
    t.epochs, t.dim, t.layers, t.heads, t.embed_dim = 8, 64, 2, 4, 32
    return cfg


def _invoke(cfg: PaperloopConfig, *args: str):
    config = cfg.paths.resolve("data") / "config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def _lines_as_entities(documents) -> dict[str, float]:
    pages = [gold_word_page(p) for d in documents for p in d.pages]
    predicted = [[frozenset(k for k, u in enumerate(p.units) if u.line == line) for line in {u.line for u in p.units}]
                 for p in pages]
    return grouping_scores(predicted, [gold_groups(p) for p in pages])


def test_grouping_is_trained_evaluated_and_forms_entities_in_service(group_cfg: PaperloopConfig,
                                                                      funsd_page_path: Path) -> None:
    cfg = group_cfg
    store = Store(cfg.paths.database)
    labels = LabelStore(store)
    for document in _forms("training", 0, 24):
        labels.put(document, "funsd", "train")
    holdout = _forms("testing", 10, 8)
    for document in holdout:
        labels.put(document, "funsd", "holdout")

    result = _invoke(cfg, "train", "group")
    assert result.exit_code == 0, result.output
    registry = ModelRegistry(cfg.paths.resolve("models"))
    version = registry.current_version("group")
    assert version is not None and f"group {version}" in result.output and "(in service)" in result.output
    card = registry.card("group", version)
    # Trained on the gold words and on the same pages as the OCR in service read them (cached).
    assert card.data_counts["train_pages"] > len(_forms("training", 0, 24)) * 0.85 * 1.5
    assert list((cfg.paths.resolve("data") / "ocr-cache").glob("base__base__*/*.json"))

    # Better than taking every line for an entity, on forms it never saw.
    ours = get_task("group").evaluate(cfg, registry, version, holdout)
    assert ours["hmean"] > _lines_as_entities(holdout)["hmean"], (ours, _lines_as_entities(holdout))

    # A scanned form dropped in: its segments are entities of OCR words, with the grouping's version.
    runner = JobRunner(cfg, store)
    job = runner.enqueue(funsd_page_path, keep_source=True)
    outcome = runner.process_job(job.id, keep_source=True)
    output = json.loads(outcome.json_path.read_text())
    segments = output["pages"][0]["segments"]
    assert output["model_versions"]["group"] == version
    assert all(s["id"].startswith("p1-e") and s["group_version"] == version for s in segments)
    assert all(0 < s["group_score"] <= 1 for s in segments)
    multi_line = [s for s in segments if len({round(w["box"][1] / 10) for w in s["words"]}) > 1]
    assert multi_line, "no entity joins words of several lines"
    assert all(s["text"] == " ".join(w["text"] for w in s["words"]) for s in segments)
    stored = store.document(outcome.job.document_id)
    assert {s.group_version for s in stored.segments} == {version}


def test_grouping_without_word_boxes_is_refused_with_the_reason(group_cfg: PaperloopConfig) -> None:
    labels = LabelStore(Store(group_cfg.paths.database))
    for document in _forms("training", 0, 2):
        for segment in document.segments:
            segment.words = []
        labels.put(document, "review", "train")
    result = _invoke(group_cfg, "train", "group")
    assert result.exit_code != 0 and "no grouping training signal" in result.output
