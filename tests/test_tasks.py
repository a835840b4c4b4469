"""The model-task contract: one object per task, iterated by the registry, config, CLI, job and app."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from service.cli import cli
from service.config import PaperloopConfig
from service.document import Document, Link, Page, Segment, Word
from service.finetune.det_train import DetTrainConfig
from service.finetune.rec_train import FinetuneSettings
from service.kie.fit import TrainSettings
from service.labels import LabelStore
from service.learning import run_learning_job
from service.registry import TASKS
from service.store import Store
from service.tasks import TASK_NAMES, TrainOverrides, UnsupportedOverride, all_tasks, get_task
from service.tasks.det import DEFAULTS as DET
from service.tasks.kie_common import DEFAULTS as KIE
from service.tasks.rec import DEFAULTS as REC


def test_every_task_declares_its_contract() -> None:
    assert [task.name for task in all_tasks()] == list(TASK_NAMES) == ["det", "rec", "group", "ser", "re"]
    for task in all_tasks():
        assert task.title and task.metric_names, task.name
        assert get_task(task.name) is task
    with pytest.raises(KeyError):
        get_task("cls")


def test_one_place_for_each_default() -> None:
    learning, kie = PaperloopConfig().learning, PaperloopConfig().kie.training
    assert (learning.det_steps, learning.det_learning_rate, learning.det_crop_size) == (
        DET.steps, DET.learning_rate, DET.crop_size)
    assert (DetTrainConfig().steps, DetTrainConfig().learning_rate) == (DET.steps, DET.learning_rate)
    assert (learning.rec_epochs, learning.rec_learning_rate, learning.rec_synthetic_ratio) == (
        REC.epochs, REC.learning_rate, REC.synthetic_ratio)
    assert (FinetuneSettings().epochs, FinetuneSettings().learning_rate) == (REC.epochs, REC.learning_rate)
    kie_defaults = asdict(KIE)
    assert {k: v for k, v in kie.model_dump().items() if k in kie_defaults} == kie_defaults
    settings = asdict(TrainSettings())
    assert settings == {k: v for k, v in kie_defaults.items() if k in settings}


def test_the_registered_tasks_are_what_every_surface_lists() -> None:
    assert TASKS == TASK_NAMES
    assert PaperloopConfig().learning.tasks == list(TASK_NAMES)
    for command in (("train",), ("eval",), ("models", "list"), ("models", "promote")):
        found = cli
        for name in command:
            found = found.commands[name]  # type: ignore[attr-defined]
        choice = next(p.type for p in found.params if isinstance(p.type, click.Choice))
        assert tuple(choice.choices) == TASK_NAMES, command
    from review_app.views.data import TASKS as DATA_PAGE_TASKS
    assert list(DATA_PAGE_TASKS) == list(TASK_NAMES)
    with pytest.raises(ValueError, match="unknown task"):
        PaperloopConfig.model_validate({"learning": {"tasks": ["det", "layout"]}})


def test_gold_items_per_task() -> None:
    page = Page(number=1, width=100, height=100, image="", segments=[
        Segment(id="a", box=[(0, 0), (1, 0), (1, 1), (0, 1)], text="Date:", label="question",
                words=[Word("Date:", (0, 0, 1, 1))]),
        Segment(id="b", box=[(2, 0), (3, 0), (3, 1), (2, 1)], text="  ", label=None)])
    document = Document(id="d", source_name="d.png", sha256="", created_at="", pages=[page],
                        links=[Link(key="a", value="b")])
    assert {task.name: task.gold_items(document) for task in all_tasks()} == {"det": 2, "rec": 1, "group": 1, "ser": 1,
                                                                                    "re": 1}


def test_overrides_a_task_has_no_setting_for_are_refused() -> None:
    get_task("ser").check_overrides(TrainOverrides(epochs=3, seed=1))
    get_task("rec").check_overrides(TrainOverrides(epochs=1))
    with pytest.raises(UnsupportedOverride, match="det has no setting for --epochs"):
        get_task("det").check_overrides(TrainOverrides(epochs=3))


def _invoke(cfg: PaperloopConfig, *args: str):
    config = cfg.paths.resolve("data") / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return CliRunner().invoke(cli, ["--config", str(config), *args])


def test_train_now_refuses_options_it_cannot_honour(cfg: PaperloopConfig) -> None:
    promote = _invoke(cfg, "train", "--now", "--promote")
    assert promote.exit_code == 2 and "promotes only through its holdout gate" in promote.output
    epochs = _invoke(cfg, "train", "--now", "--epochs", "2")  # all tasks: det has no epochs
    assert epochs.exit_code == 2 and "det has no setting for --epochs" in epochs.output
    assert not Store(cfg.paths.database).db["learning_runs"].count, "nothing may run before the refusal"


@pytest.mark.slow
def test_train_now_honours_epochs_and_seed(own_registry: PaperloopConfig, tmp_path: Path) -> None:
    from service.formats import read_funsd
    from service.funsd import split_pairs

    from conftest import FUNSD_ROOT

    cfg = own_registry
    cfg.kie.training.dim, cfg.kie.training.layers, cfg.kie.training.embed_dim = 32, 1, 16
    labels = LabelStore(Store(cfg.paths.database))
    pairs = split_pairs("training", FUNSD_ROOT)
    for split, chosen in (("train", pairs[:4]), ("holdout", pairs[4:6])):
        for image, annotation in chosen:
            labels.put(read_funsd(annotation, image), "funsd", split)

    [run] = run_learning_job(cfg, force=True, tasks=["ser"], overrides=TrainOverrides(epochs=1, seed=7))

    assert run.status == "promoted", run.reason
    card = json.loads((cfg.paths.resolve("models") / "ser" / run.candidate / "card.json").read_text())
    assert (card["metrics"]["settings"]["epochs"], card["metrics"]["settings"]["seed"]) == (1, 7)


def _gold(document_id: str, label: str) -> Document:
    page = Page(number=1, width=100, height=100, image="", segments=[
        Segment(id="a", box=[(0, 0), (9, 0), (9, 9), (0, 9)], text="Name:", label="question"),
        Segment(id="b", box=[(20, 0), (29, 0), (29, 9), (20, 9)], text="Ada", label=label)])
    return Document(id=document_id, source_name=f"{document_id}.png", sha256="", created_at="", pages=[page],
                    links=[Link(key="a", value="b")])


def test_new_since_training_is_one_measure_for_the_job_and_the_review_app(cfg: PaperloopConfig,
                                                                           tmp_path: Path) -> None:
    from service.learning import last_training, new_documents_since
    from service.registry import ModelCard, ModelRegistry
    from service.review import ReviewService
    from service.store import utc_now

    cfg.paths.models = tmp_path / "own-models"
    store = Store(cfg.paths.database)
    labels = LabelStore(store)
    registry = ModelRegistry(cfg.paths.models)
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\0")
    registry.add_version(ModelCard(task="ser", version="v1", model_name="PaperloopGraphSER"),
                         {"inference.pdiparams": weights}, {"Global": {"model_name": "PaperloopGraphSER"}})
    for name in ("one", "two", "three"):
        labels.put(_gold(name, "answer"), "test-source", "train")

    def both() -> tuple[tuple[str | None, str | None], int, dict]:
        since = last_training(store, registry, "ser")
        summary = ReviewService(cfg, store).gold_summary()["new_since_training"]["ser"]
        return since, new_documents_since(store, since[1]), summary

    (version, since), documents, summary = both()  # no learning run yet: everything is new
    assert (version, since, documents) == ("v1", None, 3)
    assert (summary["since_version"], summary["since"], summary["count"]) == ("v1", None, 6)

    store.db["learning_runs"].insert({"task": "ser", "started_at": utc_now(), "finished_at": utc_now(),
                                      "status": "rejected", "candidate": "v2", "current": "v1"})
    time.sleep(0.01)  # times have millisecond resolution
    labels.put(_gold("two", "other"), "test-source", "train")  # corrected after that run
    (version, since), documents, summary = both()
    assert (version, documents) == ("v2", 1)
    assert (summary["since_version"], summary["since"], summary["count"]) == ("v2", since, 2)


def test_each_task_predicts_in_memory_and_the_pipeline_runs_the_stages_in_order(
    cfg: PaperloopConfig, ocr_engine, page_path: Path
) -> None:
    import numpy as np
    from PIL import Image

    from service.kie.inference import KieModels
    from service.pipeline import DocumentPipeline, ServiceModels
    from service.registry import ModelRegistry
    from service.tasks import Prediction

    rgb = np.asarray(Image.open(page_path).convert("RGB"))
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    models = ServiceModels(ocr_engine, KieModels(ModelRegistry(cfg.paths.resolve("models"))))
    versions = models.refresh()
    document = Document(id="d", source_name="p.png", sha256="", created_at="", model_versions=versions,
                        pages=[Page(number=1, width=rgb.shape[1], height=rgb.shape[0])])
    prediction = Prediction(document, versions, images={1: bgr})

    for task in all_tasks():  # no file is read or written by a stage
        task.predict(models, prediction)

    expected = ocr_engine.read_page(bgr)
    assert len(prediction.boxes[1]) == len(expected) > 3
    assert [s.text for s in document.pages[0].segments] == [line.text for line in expected]
    assert all((s.det_version, s.rec_version) == (versions["det"], versions["rec"]) for s in document.segments)
    assert prediction.label_probabilities is None and document.links == []  # no SER / RE in service yet
    piped = DocumentPipeline(cfg, ocr_engine).process_file(page_path, "doc-000001", "0" * 64, "p.png")
    assert [s.to_dict() for s in piped.segments] == [s.to_dict() for s in document.segments]


def test_the_gate_lets_a_much_better_model_trade_a_side_metric() -> None:
    """Measured by bench/active.py: RE at 20 forms (Hmean 0.015 → 0.398) was refused because precision
    fell 0.667 → 0.539 on a 10-form holdout (the old model kept 3 links of 133)."""
    rule = get_task("re").gate_rule(PaperloopConfig())
    current = {"hmean": 0.0149, "precision": 0.6667, "recall": 0.0075}
    ok, why = rule.decide({"hmean": 0.3981, "precision": 0.5385, "recall": 0.3158}, current)
    assert ok, why
    ok, why = rule.decide({"hmean": 0.0300, "precision": 0.4000, "recall": 0.0160}, current)
    assert not ok and "precision" in why
