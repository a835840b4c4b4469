"""Synthetic lines for the recognition fine-tune: real fonts, labels that match the pixels."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from service.config import LearningConfig
from service.ocr_learning.synthetic import (
    PRINTABLE,
    NoFontsError,
    find_fonts,
    synthetic_samples,
    synthetic_texts,
    vocabulary,
)

FONT_DIRS = LearningConfig().synthetic_font_dirs
GOLD = ["Date of birth:", "TOTAL AMOUNT DUE", "Lorillard Tobacco Company", "R&D 新产品"]


def test_the_default_font_folders_hold_real_fonts() -> None:
    fonts = find_fonts(FONT_DIRS)
    assert len(fonts) >= 4, "./run installs fonts-dejavu-core and fonts-liberation"
    assert {f.suffix for f in fonts} <= {".ttf", ".otf"}


def test_texts_are_printable_ascii_and_reuse_the_gold_vocabulary() -> None:
    words = vocabulary(GOLD)
    assert "新产品" not in words and "Tobacco" in words and "R&D" in words
    texts = synthetic_texts(words, 200, random.Random(0))
    assert all(set(t) <= PRINTABLE and t.strip() == t and t for t in texts)
    assert sum(any(w in t.split() for w in ("Tobacco", "TOBACCO")) for t in texts) > 5
    assert any(any(c.isdigit() for c in t) for t in texts)


def test_samples_are_seeded_crops_with_their_texts() -> None:
    first = synthetic_samples(GOLD, 12, FONT_DIRS, seed=3)
    again = synthetic_samples(GOLD, 12, FONT_DIRS, seed=3)
    assert [s.text for s in first] == [s.text for s in again]
    assert all((a.image == b.image).all() for a, b in zip(first, again))
    for sample in first:
        h, w, channels = sample.image.shape
        assert channels == 3 and 12 < h < 80 and w > h / 2
        assert sample.image.min() < 100 < sample.image.max()  # dark ink on a light background


def test_no_fonts_is_a_clear_error(tmp_path: Path) -> None:
    assert synthetic_samples(GOLD, 0, [tmp_path]) == []
    with pytest.raises(NoFontsError, match="fonts-dejavu-core"):
        synthetic_samples(GOLD, 5, [tmp_path / "missing"])


@pytest.mark.slow
def test_the_shipped_recognizer_reads_the_rendered_lines(cfg) -> None:
    """The pixels say what the labels say: the base model reads them nearly right."""
    from service.ocr_learning.rec import rec_metrics
    from service.registry import ModelRegistry

    samples = synthetic_samples(GOLD * 5, 40, FONT_DIRS, seed=1)
    metrics = rec_metrics(cfg, ModelRegistry(cfg.paths.resolve("models")), "base", samples)
    assert metrics["char_accuracy"] > 0.8, metrics
