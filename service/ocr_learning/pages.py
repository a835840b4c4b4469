"""The page images of gold documents, with the boxes and texts reviewers approved."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from service.document import Document, Segment
from service.kie.data import line_segments


@dataclass(frozen=True)
class GoldPage:
    """One gold page: its BGR image and its segments (page pixels)."""

    image: np.ndarray
    segments: list[Segment]

    def polygons(self) -> list[np.ndarray]:
        """Each segment's 4-point box as a float32 4×2 array."""
        return [np.asarray(s.box, dtype=np.float32).reshape(4, 2) for s in self.segments]


def image_path(image: str, data_dir: Path) -> Path:
    """A page image's path: stored paths are relative to the data folder (imports may be absolute)."""
    return Path(image) if Path(image).is_absolute() else data_dir / image


def gold_pages(documents: Sequence[Document], data_dir: Path) -> Iterator[GoldPage]:
    """Every page with a readable image, its segments as text lines (det and rec learn lines; an
    entity printed on several lines is split by its words); pages whose image is gone are skipped."""
    for document in documents:
        for page in document.pages:
            if not page.image:
                continue
            image = cv2.imread(str(image_path(page.image, data_dir)), cv2.IMREAD_COLOR)
            if image is not None:
                yield GoldPage(image, line_segments(list(page.segments)))
