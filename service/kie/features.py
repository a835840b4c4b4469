"""Turning a document's segments into model inputs: text, layout and pair-geometry features.

No pretrained embeddings exist offline, so text is represented by hashed character n-grams and
lower-cased words (fastText-style), learned from scratch, plus a few hand-made cues that forms make
reliable (a trailing colon marks a question, capitals mark a header, digits mark an answer).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

from service.document import Document, Segment

HASH_BUCKETS = 1 << 15
MAX_TOKENS = 96
N_TEXT_CUES = 14
N_BOX = 10
N_PAIR = 14

_DATE = re.compile(r"\b\d{1,4}[/.-]\d{1,2}([/.-]\d{1,4})?\b")
_MONEY = re.compile(r"[$€£]\s?\d|\d[.,]\d{2}\b")


def _hash(token: str) -> int:
    # crc32 is stable across processes and Python versions (unlike hash()); 0 is padding.
    return 1 + zlib.crc32(token.encode("utf-8")) % (HASH_BUCKETS - 1)


def text_tokens(text: str) -> list[int]:
    """Hashed ids of the lower-cased words and their character 2- to 4-grams."""
    ids: list[int] = []
    for word in text.lower().split()[:24]:
        ids.append(_hash("w:" + word))
        padded = f"<{word}>"
        for n in (2, 3, 4):
            ids.extend(_hash(f"{n}:{padded[i:i + n]}") for i in range(max(1, len(padded) - n + 1)))
    return ids[:MAX_TOKENS]


def text_cues(text: str) -> list[float]:
    """Hand-made surface cues of a segment's text."""
    stripped = text.strip()
    letters = [c for c in stripped if c.isalpha()]
    words = stripped.split()
    n = max(len(stripped), 1)
    return [
        np.log1p(len(stripped)) / 5,
        np.log1p(len(words)) / 3,
        float(stripped.endswith(":")),
        float(":" in stripped),
        float(stripped.endswith("?")),
        sum(c.isupper() for c in letters) / max(len(letters), 1),
        sum(w[:1].isupper() for w in words) / max(len(words), 1),
        sum(c.isdigit() for c in stripped) / n,
        sum(not c.isalnum() and not c.isspace() for c in stripped) / n,
        float(bool(_DATE.search(stripped))),
        float(bool(_MONEY.search(stripped))),
        float(stripped[:1].isdigit()),
        float(len(stripped) == 0),
        float(stripped.isupper() and len(letters) > 1),
    ]


def _box_features(box: tuple[float, float, float, float], width: float, height: float) -> list[float]:
    x0, y0, x1, y1 = box
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    return [x0 / width, y0 / height, x1 / width, y1 / height, w / width, h / height,
            (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, np.log(w / h) / 4, np.log(h) / 5]


def pair_features(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Relative geometry of every ordered pair (i → j): an (N, N, N_PAIR) float32 array."""
    x0, y0, x1, y1 = (boxes[:, k] for k in range(4))
    w = np.maximum(x1 - x0, 1.0)
    h = np.maximum(y1 - y0, 1.0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    scale = max(width, height)

    def rel(a: np.ndarray) -> np.ndarray:
        return a[None, :] - a[:, None]

    overlap_x = np.minimum(x1[:, None], x1[None, :]) - np.maximum(x0[:, None], x0[None, :])
    overlap_y = np.minimum(y1[:, None], y1[None, :]) - np.maximum(y0[:, None], y0[None, :])
    dist = np.sqrt(rel(cx) ** 2 + rel(cy) ** 2) / scale
    feats = [
        rel(cx) / width, rel(cy) / height,
        (x0[None, :] - x1[:, None]) / width,   # horizontal gap, i's right edge to j's left edge
        (y0[None, :] - y1[:, None]) / height,  # vertical gap, i's bottom to j's top
        rel(x0) / width, rel(y0) / height,
        np.log(w[None, :] / w[:, None]) / 3, np.log(h[None, :] / h[:, None]) / 3,
        overlap_x / np.minimum(w[:, None], w[None, :]),
        overlap_y / np.minimum(h[:, None], h[None, :]),
        dist, np.log1p(dist * 20),
        np.arctan2(rel(cy), rel(cx)) / np.pi,
        np.eye(len(boxes)),
    ]
    return np.clip(np.stack(feats, axis=-1), -5, 5).astype(np.float32)


@dataclass
class DocumentFeatures:
    """Inputs of one document for the KIE graph models (N segments)."""

    segment_ids: list[str]
    tokens: np.ndarray  # (N, MAX_TOKENS) int64, 0 = padding
    cues: np.ndarray  # (N, N_TEXT_CUES) float32
    boxes: np.ndarray  # (N, N_BOX) float32
    pairs: np.ndarray  # (N, N, N_PAIR) float32


def _page_offset(document: Document) -> dict[int, float]:
    """Vertical offset of each page when the pages are stacked (multi-page documents)."""
    offsets, top = {}, 0.0
    for page in document.pages:
        offsets[page.number] = top
        top += page.height
    return offsets


def featurize(document: Document) -> DocumentFeatures:
    """Features of every segment of a document (pages stacked top to bottom)."""
    segments: list[tuple[Segment, float]] = []
    offsets = _page_offset(document)
    for page in document.pages:
        segments.extend((s, offsets[page.number]) for s in page.segments)
    width = float(max((p.width for p in document.pages), default=1))
    height = float(max((p.height for p in document.pages), default=1))
    n = len(segments)
    tokens = np.zeros((n, MAX_TOKENS), dtype=np.int64)
    raw_boxes = np.zeros((n, 4), dtype=np.float32)
    cues, boxes = [], []
    for i, (segment, dy) in enumerate(segments):
        ids = text_tokens(segment.text)
        tokens[i, : len(ids)] = ids
        x0, y0, x1, y1 = segment.bbox
        raw_boxes[i] = (x0, y0 + dy, x1, y1 + dy)
        cues.append(text_cues(segment.text))
        boxes.append(_box_features((x0, y0, x1, y1), width, height))
    return DocumentFeatures(
        segment_ids=[s.id for s, _ in segments],
        tokens=tokens,
        cues=np.asarray(cues, dtype=np.float32).reshape(n, N_TEXT_CUES),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(n, N_BOX),
        pairs=pair_features(raw_boxes, width, height) if n else np.zeros((0, 0, N_PAIR), np.float32),
    )
