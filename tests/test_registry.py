import json
from pathlib import Path

import pytest

from service.base_models import install_base_models
from service.registry import ModelCard, ModelRegistry, RegistryError


def test_install_base_is_idempotent_and_sets_current(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    assert install_base_models(registry) == ["det", "rec", "cls"]
    assert install_base_models(registry) == []
    assert registry.current_version("det") == "base"
    (installed,) = registry.history("det")
    assert (installed["from"], installed["to"]) == (None, "base") and "install" in installed["actor"]
    card = registry.card("rec", "base")
    assert card.model_name == "PP-OCRv4_mobile_rec"
    yml = registry.inference_config("rec", "base")
    # 6623 dictionary characters; the decoder adds blank and space for 6625 classes.
    assert len(yml["PostProcess"]["character_dict"]) == 6623
    assert yml["Global"]["model_name"] == "PP-OCRv4_mobile_rec"


def test_set_current_switches_and_rejects_unknown(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    install_base_models(registry)
    base_dir = registry.version_dir("det", "base")
    registry.add_version(ModelCard(task="det", version="v2", model_name="PP-OCRv4_mobile_det", parent="base"),
                         {"inference.pdmodel": base_dir / "inference.pdmodel",
                          "inference.pdiparams": base_dir / "inference.pdiparams"},
                         registry.inference_config("det", "base"))
    registry.set_current("det", "v2", reason="test", actor="test")
    assert registry.current_dir("det") == ("v2", tmp_path / "det" / "v2")
    assert registry.versions("det") == ["base", "v2"]
    with pytest.raises(RegistryError):
        registry.set_current("det", "v3", reason="test", actor="test")
    assert registry.current_version("det") == "v2"


def test_adding_an_existing_version_fails_and_leaves_no_debris(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    install_base_models(registry)
    with pytest.raises(RegistryError):
        registry.add_version(ModelCard(task="det", version="base", model_name="x"), {}, {})
    assert sorted(p.name for p in (tmp_path / "det").iterdir()) == [".lock", "base", "current", "history.jsonl"]


def test_missing_task_model_is_reported(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="install-base"):
        ModelRegistry(tmp_path).current_dir("ser")


def _kie_versions(registry: ModelRegistry, tmp_path: Path, *versions: tuple[str, str | None]) -> None:
    """Versions of the ``ser`` task with a card (version, parent) and placeholder model files."""
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\0")
    for version, parent in versions:
        registry.add_version(ModelCard(task="ser", version=version, model_name="PaperloopGraphSER", parent=parent),
                             {"inference.pdiparams": weights}, {"Global": {"model_name": "PaperloopGraphSER"}})


def test_every_change_of_current_is_recorded_with_why_and_who(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    _kie_versions(registry, tmp_path, ("v1", None), ("v2", "v1"))
    registry.set_current("ser", "v1", reason="first version, evaluated", actor="learning run A")
    registry.set_current("ser", "v2", reason="hmean 0.5 → 0.6", actor="user alice")
    registry.set_current("ser", "v2", reason="again", actor="user alice")  # no change, no record
    history = registry.history("ser")
    assert [(h["from"], h["to"], h["action"], h["reason"], h["actor"]) for h in history] == [
        (None, "v1", "promote", "first version, evaluated", "learning run A"),
        ("v1", "v2", "promote", "hmean 0.5 → 0.6", "user alice"),
    ]
    assert all(h["task"] == "ser" and h["at"] <= history[-1]["at"] for h in history)
    lines = (tmp_path / "models" / "ser" / "history.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["to"] == "v1"


def test_rollback_walks_back_along_what_was_in_service(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    # v3 was trained from v1 (its parent) but replaced v2: a rollback must bring v2 back, not v1.
    _kie_versions(registry, tmp_path, ("v1", None), ("v2", "v1"), ("v3", "v1"))
    for version in ("v1", "v2", "v3"):
        registry.set_current("ser", version, reason="gate", actor="learning run")
    assert registry.rollback("ser", actor="user bob") == ("v3", "v2")
    assert registry.rollback("ser", actor="user bob") == ("v2", "v1")
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback("ser", actor="user bob")
    assert registry.current_version("ser") == "v1"
    # A promotion after rollbacks is rolled back to what it replaced.
    registry.set_current("ser", "v3", reason="by hand", actor="user bob")
    assert registry.rollback("ser", actor="user bob") == ("v3", "v1")
    last = registry.history("ser")[-1]
    assert (last["from"], last["to"], last["action"], last["actor"]) == ("v3", "v1", "rollback", "user bob")
