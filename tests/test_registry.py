from pathlib import Path

import pytest

from service.base_models import install_base_models
from service.registry import ModelCard, ModelRegistry, RegistryError


def test_install_base_is_idempotent_and_sets_current(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    assert install_base_models(registry) == ["det", "rec", "cls"]
    assert install_base_models(registry) == []
    assert registry.current_version("det") == "base"
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
    registry.set_current("det", "v2")
    assert registry.current_dir("det") == ("v2", tmp_path / "det" / "v2")
    assert registry.versions("det") == ["base", "v2"]
    with pytest.raises(RegistryError):
        registry.set_current("det", "v3")
    assert registry.current_version("det") == "v2"


def test_adding_an_existing_version_fails_and_leaves_no_debris(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    install_base_models(registry)
    with pytest.raises(RegistryError):
        registry.add_version(ModelCard(task="det", version="base", model_name="x"), {}, {})
    assert sorted(p.name for p in (tmp_path / "det").iterdir()) == ["base", "current"]


def test_missing_task_model_is_reported(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="install-base"):
        ModelRegistry(tmp_path).current_dir("ser")
