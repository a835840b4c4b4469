"""Reading the FUNSD form-understanding data set as ground-truth text lines.

FUNSD annotates *entities* (a question, an answer, a header...) made of *words*, each with an
axis-aligned box. An OCR engine detects *lines*, so the words of one entity are regrouped here into
the lines they are printed on. The data set itself stays outside the repository (its licence does
not allow copying it in); its root defaults to ``<project>/../shared/datasets/funsd`` and can be
moved with the ``PAPERLOOP_FUNSD`` environment variable.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in page pixels
Split = Literal["training", "testing"]

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared/datasets/funsd"
ROOT_ENV_VAR = "PAPERLOOP_FUNSD"


@dataclass(frozen=True)
class Word:
    """One annotated word: its text and its axis-aligned box."""

    text: str
    box: Box

    @property
    def center_y(self) -> float:
        """Vertical center of the word."""
        return (self.box[1] + self.box[3]) / 2.0

    @property
    def height(self) -> float:
        """Height of the word's box."""
        return self.box[3] - self.box[1]


@dataclass(frozen=True)
class GtLine:
    """A ground-truth text line: the words of one entity printed on one row."""

    text: str
    box: Box
    entity_id: int
    label: str
    words: tuple[Word, ...]


def dataset_root() -> Path:
    """The FUNSD root folder (the one holding ``dataset/``), honouring ``PAPERLOOP_FUNSD``."""
    override = os.environ.get(ROOT_ENV_VAR)
    return Path(override) if override else DEFAULT_ROOT


def split_pairs(split: Split = "testing", root: Path | None = None) -> list[tuple[Path, Path]]:
    """(image path, annotation path) of every page of a split, sorted by file name.

    Raises ``FileNotFoundError`` when the split folder or a page's annotation is missing.
    """
    split_dir = (root or dataset_root()) / "dataset" / f"{split}_data"
    images_dir, annotations_dir = split_dir / "images", split_dir / "annotations"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"no FUNSD images at {images_dir} (set {ROOT_ENV_VAR})")
    pairs = []
    for image in sorted(images_dir.glob("*.png")):
        annotation = annotations_dir / f"{image.stem}.json"
        if not annotation.is_file():
            raise FileNotFoundError(f"{image.name} has no annotation {annotation}")
        pairs.append((image, annotation))
    return pairs


def normalize_box(raw: list[float] | tuple[float, ...]) -> Box:
    """An ``[x0, y0, x1, y1]`` box with x0 <= x1 and y0 <= y1 (a few FUNSD boxes are reversed)."""
    x0, y0, x1, y1 = (float(v) for v in raw)
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def union_box(boxes: list[Box]) -> Box:
    """Smallest axis-aligned box containing all the given boxes."""
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def _belongs_to_row(word: Word, row: list[Word], min_overlap: float) -> bool:
    """Whether a word sits on a row: its center lies within the row's vertical extent, or the two
    overlap vertically by at least ``min_overlap`` of the smaller height."""
    top = min(w.box[1] for w in row)
    bottom = max(w.box[3] for w in row)
    if top <= word.center_y <= bottom:
        return True
    overlap = min(bottom, word.box[3]) - max(top, word.box[1])
    smaller = min(bottom - top, word.height)
    return smaller > 0 and overlap >= min_overlap * smaller


def group_into_rows(words: list[Word], min_overlap: float = 0.5) -> list[list[Word]]:
    """Group words into rows (top to bottom), each row ordered left to right."""
    rows: list[list[Word]] = []
    for word in sorted(words, key=lambda w: (w.center_y, w.box[0])):
        row = next((r for r in rows if _belongs_to_row(word, r, min_overlap)), None)
        if row is None:
            rows.append([word])
        else:
            row.append(word)
    ordered = [sorted(row, key=lambda w: w.box[0]) for row in rows]
    return sorted(ordered, key=lambda r: (min(w.box[1] for w in r), r[0].box[0]))


def _entity_words(entity: dict[str, Any]) -> list[Word]:
    """The non-empty words of one FUNSD entity."""
    words = []
    for raw in entity.get("words", []):
        text = str(raw.get("text", "")).strip()
        if text:
            words.append(Word(text=text, box=normalize_box(raw["box"])))
    return words


def entity_lines(entity: dict[str, Any]) -> list[GtLine]:
    """The text lines of one FUNSD entity (none when all its words are empty)."""
    lines = []
    for row in group_into_rows(_entity_words(entity)):
        lines.append(
            GtLine(
                text=" ".join(w.text for w in row),
                box=union_box([w.box for w in row]),
                entity_id=int(entity["id"]),
                label=str(entity.get("label", "")),
                words=tuple(row),
            )
        )
    return lines


def load_gt_lines(annotation_path: Path) -> list[GtLine]:
    """Ground-truth text lines of one FUNSD annotation file, in the file's entity order."""
    form = json.loads(Path(annotation_path).read_text(encoding="utf-8"))["form"]
    return [line for entity in form for line in entity_lines(entity)]
