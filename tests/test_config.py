from pathlib import Path

import pytest

from service.config import ConfigError, PaperloopConfig, load_config

from conftest import PROJECT_ROOT


def test_default_yaml_matches_embedded_defaults() -> None:
    assert load_config(PROJECT_ROOT / "configs/default.yaml") == PaperloopConfig()


def test_no_file_gives_embedded_defaults() -> None:
    assert load_config(None).ingest.dpi == 200


def test_unknown_key_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("ingest:\n  dpi: 150\n  colour: blue\n")
    with pytest.raises(ConfigError, match="colour"):
        load_config(path)


def test_invalid_value_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("ocr:\n  det:\n    limit_type: diagonal\n")
    with pytest.raises(ConfigError, match="limit_type"):
        load_config(path)


def test_relative_paths_resolve_against_root(tmp_path: Path) -> None:
    cfg = PaperloopConfig.model_validate({"paths": {"root": str(tmp_path)}})
    assert cfg.paths.resolve("inbox") == tmp_path / "inbox"
    assert cfg.paths.database == tmp_path / "data" / "paperloop.db"
