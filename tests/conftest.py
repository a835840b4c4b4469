"""Shared fixtures: real models, real FUNSD pages, a fresh Paperloop root per test."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

from service.base_models import install_base_models
from service.config import OcrConfig, PaperloopConfig
from service.ocr import OcrEngine
from service.registry import ModelRegistry

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FUNSD_ROOT = Path(os.environ.get("PAPERLOOP_FUNSD", PROJECT_ROOT.parent / "shared/datasets/funsd"))
FUNSD_TEST_IMAGES = FUNSD_ROOT / "dataset/testing_data/images"


@pytest.fixture(scope="session")
def funsd_page_path() -> Path:
    """A real scanned FUNSD test form (PNG)."""
    path = FUNSD_TEST_IMAGES / "82092117.png"
    assert path.is_file(), f"FUNSD is expected at {FUNSD_ROOT} (see README)"
    return path


@pytest.fixture(scope="session")
def funsd_pages() -> list[Path]:
    """A few real FUNSD test forms."""
    paths = sorted(FUNSD_TEST_IMAGES.glob("*.png"))[:3]
    assert len(paths) == 3, f"FUNSD is expected at {FUNSD_ROOT} (see README)"
    return paths


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model registry with the base models, shared by the whole session."""
    root = tmp_path_factory.mktemp("models")
    install_base_models(ModelRegistry(root))
    return root


@pytest.fixture(scope="session")
def ocr_engine(models_dir: Path) -> OcrEngine:
    """One loaded OCR engine for the session (loading and oneDNN warm-up take seconds)."""
    return OcrEngine(ModelRegistry(models_dir), OcrConfig())


@pytest.fixture
def cfg(tmp_path: Path, models_dir: Path) -> PaperloopConfig:
    """A configuration rooted in a fresh temporary folder, with fast watcher timings."""
    config = PaperloopConfig.model_validate({
        "paths": {"root": str(tmp_path), "models": str(models_dir)},
        "watcher": {"quiet_seconds": 0.3, "poll_interval_seconds": 0.05, "rescan_interval_seconds": 1.0},
    })
    for folder in ("inbox", "archive", "quarantine", "output", "data"):
        config.paths.resolve(folder).mkdir(parents=True, exist_ok=True)
    return config


@pytest.fixture
def own_registry(cfg: PaperloopConfig, tmp_path: Path) -> PaperloopConfig:
    """``cfg`` with a registry of its own (base det/rec linked in), for tests that add versions."""
    models = tmp_path / "own-models"
    models.mkdir()
    for task in ("det", "rec"):
        (models / task).symlink_to(cfg.paths.resolve("models") / task)
    cfg.paths.models = models
    return cfg


def write_pdf(path: Path, pages: list[Path]) -> Path:
    """Render real page images into a multi-page PDF (Pillow writes it; poppler reads it back)."""
    images = [Image.open(p).convert("RGB") for p in pages]
    images[0].save(path, "PDF", resolution=100.0, save_all=True, append_images=images[1:])
    return path


def wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition",
             interval: float = 0.05) -> None:
    """Poll until ``condition()`` holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"{what}: not met within {timeout}s")
