"""Text recognition: crop each detected line, batch crops of similar width, CTC-decode.

The decode also keeps each character's CTC time steps, from which :mod:`service.ocr.words` places words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from service.config import RecConfig
from service.ocr.engine import Predictor


@dataclass(frozen=True)
class RecognizedText:
    """The text read from one crop and its confidence (mean probability of the kept characters).

    ``char_steps`` gives, for each character of ``text``, the first and last CTC time step (inclusive)
    of the run that produced it; ``step_width`` is how many pixels of the crop (as given, before any
    resize) one time step covers, 0.0 when unknown (a bare decode without the batch geometry).
    """

    text: str
    score: float
    char_steps: tuple[tuple[int, int], ...] = ()
    step_width: float = 0.0


def load_charset_from_list(characters: list[str], use_space_char: bool = True) -> list[str]:
    """The CTC alphabet: index 0 is the blank, then the dictionary, then (optionally) a space."""
    return ["<blank>", *characters, *([" "] if use_space_char else [])]


def crop_size(quad: np.ndarray) -> tuple[int, int]:
    """Width and height of the upright rectangle :func:`crop_quad` warps ``quad`` to (before rotation)."""
    quad = quad.astype(np.float32)
    width = int(max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[2] - quad[3])))
    height = int(max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2])))
    return max(width, 1), max(height, 1)


def is_rotated(width: int, height: int) -> bool:
    """Whether :func:`crop_quad` turns a warped crop of this size by 90° (tall crops: vertical text)."""
    return height / width >= 1.5


def crop_rectangle(width: int, height: int) -> np.ndarray:
    """The corners of a ``width`` × ``height`` crop, in the order of a quad (clockwise from top left)."""
    return np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)


def crop_quad(image: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """Perspective-crop a 4-point region; tall crops are rotated to read left to right."""
    width, height = crop_size(quad)
    matrix = cv2.getPerspectiveTransform(quad.astype(np.float32), crop_rectangle(width, height))
    crop = cv2.warpPerspective(
        image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC
    )
    if is_rotated(width, height):
        crop = np.rot90(crop)
    return crop


def _normalize_batch(crops: list[np.ndarray], cfg: RecConfig) -> np.ndarray:
    """Resize crops to a shared height keeping aspect, pad right to the widest, scale to [-1, 1].

    The batch width is rounded up to a multiple of ``cfg.width_step``: oneDNN builds kernels per
    input shape, and fewer distinct shapes means more reuse (measured: recognition of 15 FUNSD
    pages 10.3 s → 8.4 s with a 160 px step).
    """
    height = cfg.image_height
    batch_w, widths = _batch_geometry(crops, cfg)
    batch = np.zeros((len(crops), 3, height, batch_w), dtype=np.float32)
    for i, (crop, w) in enumerate(zip(crops, widths)):
        resized = cv2.resize(crop, (w, height)).astype(np.float32)
        batch[i, :, :, :w] = resized.transpose(2, 0, 1) * (2.0 / 255.0) - 1.0
    return batch


def _batch_geometry(crops: list[np.ndarray], cfg: RecConfig) -> tuple[int, list[int]]:
    """The padded batch width and each crop's resized width (at ``cfg.image_height``, aspect kept)."""
    height = cfg.image_height
    ratios = [c.shape[1] / max(c.shape[0], 1) for c in crops]
    widest = max(cfg.image_width, int(math.ceil(height * max(ratios))))
    batch_w = min(cfg.max_width, int(math.ceil(widest / cfg.width_step)) * cfg.width_step)
    return batch_w, [min(batch_w, max(1, int(math.ceil(height * ratio)))) for ratio in ratios]


def _step_widths(crops: list[np.ndarray], cfg: RecConfig, time_steps: int) -> list[float]:
    """Crop pixels per CTC time step, for each crop of one batch.

    The model sees the padded batch (``batch_w`` wide) and gives ``time_steps`` outputs, each covering
    ``batch_w / time_steps`` pixels of it; a crop fills the first ``resized_w`` of those pixels (the
    rest is right padding) after a resize by ``resized_w / crop_w``.
    """
    batch_w, widths = _batch_geometry(crops, cfg)
    return [batch_w / time_steps * crop.shape[1] / w for crop, w in zip(crops, widths)]


def _kept_runs(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last time step (inclusive) of each run of one non-blank class: the kept characters.

    Collapsing repeats and dropping blanks keeps exactly one character per such run.
    """
    change = np.flatnonzero(indices[1:] != indices[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change - 1, [len(indices) - 1]))
    kept = indices[starts] != 0
    return starts[kept], ends[kept]


def _decode_one(indices: np.ndarray, scores: np.ndarray, charset: list[str]) -> RecognizedText:
    """The text, score and character time steps of one crop's best path."""
    starts, ends = _kept_runs(indices)
    chars, steps = [], []
    for index, start, end in zip(indices[starts].tolist(), starts.tolist(), ends.tolist()):
        if index < len(charset):
            chars.append(charset[index])
            steps.extend([(start, end)] * len(charset[index]))
    score = float(scores[starts].mean()) if len(starts) else 0.0
    return RecognizedText(text="".join(chars), score=score, char_steps=tuple(steps))


def ctc_greedy_decode(probs: np.ndarray, charset: list[str]) -> list[RecognizedText]:
    """Best-path CTC decoding of a (batch, time, classes) probability tensor.

    Each result also carries its characters' time steps (``char_steps``), from the same argmax.
    """
    best = probs.argmax(axis=2)
    best_prob = probs.max(axis=2)
    return [_decode_one(indices, scores, charset) for indices, scores in zip(best, best_prob)]


class TextRecognizer:
    """Reads the text of line crops with a CTC recognition model from the registry."""

    def __init__(self, predictor: Predictor, charset: list[str], cfg: RecConfig) -> None:
        self._predictor = predictor
        self._charset = charset
        self._cfg = cfg
        self._width_budget = cfg.width_budget(predictor.threads)

    def __call__(self, crops: list[np.ndarray]) -> list[RecognizedText]:
        """Recognize crops (HWC uint8 BGR); the result is in the order of the input."""
        results: list[RecognizedText | None] = [None] * len(crops)
        for chunk in self._batches(crops):
            batch_crops = [crops[i] for i in chunk]
            probs = self._predictor(_normalize_batch(batch_crops, self._cfg))
            step_widths = _step_widths(batch_crops, self._cfg, probs.shape[1])
            for i, rec, step_width in zip(chunk, ctc_greedy_decode(probs, self._charset), step_widths):
                results[i] = replace(rec, step_width=step_width)
        return [r for r in results if r is not None]

    def _batches(self, crops: list[np.ndarray]) -> list[list[int]]:
        """Group crop indices into batches of similar width within the size and width budgets.

        Sorting by aspect ratio keeps padding small. The width budget matters on the CPU: a batch
        wider than its cores' cache holds gets slower per crop (measured with 2 threads: 6 ms/crop at
        8×320 px, 84 ms/crop at 16×1280 px), so it grows with the predictor's threads
        (:meth:`RecConfig.width_budget`).
        """
        cfg = self._cfg
        widths = [
            min(cfg.max_width, max(cfg.image_width, math.ceil(cfg.image_height * c.shape[1] / max(c.shape[0], 1))))
            for c in crops
        ]
        batches: list[list[int]] = []
        for i in sorted(range(len(crops)), key=widths.__getitem__):
            current = batches[-1] if batches else None
            if current and len(current) < cfg.batch_size and (len(current) + 1) * widths[i] <= self._width_budget:
                current.append(i)
            else:
                batches.append([i])
        return batches
