"""Word boxes inside a recognized line, from the recognizer's CTC character positions.

The recognizer keeps, for every character it reads, the CTC time steps that produced it
(:attr:`RecognizedText.char_steps`) and how many crop pixels a time step covers
(:attr:`RecognizedText.step_width`). A word (a run of characters between spaces) spans the crop
from its first character's first time step to its last character's last time step, widened by
:data:`PAD_STEPS` time steps on each side: CTC peaks sit inside a character, not on its edges.
Measured on rendered DejaVu / Liberation lines read by the base PP-OCRv4 recognizer (edges compared
with the ink, in line heights; a time step is about 0.2 of one): unpadded spans start 0.22 late and
end 0.23 early; ¾ of a step leaves 0.08 / 0.10, one step 0.03 / 0.06 (horizontal IoU with the
ink: 0.87 unpadded, 0.92 with half a step, 0.95 with one).

That span of the crop is mapped back to the page through the inverse of the perspective warp that
:func:`crop_quad` made from the line's quad, and the word gets the axis-aligned page box around it.
Tall crops, which :func:`crop_quad` turns by 90°, are handled: their reading direction runs down
the quad. A word's height is the quad's, taller than the ink by the detector's unclip margin.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from service.ocr.recognizer import RecognizedText, crop_rectangle, crop_size, is_rotated

PAD_STEPS = 1.0  # time steps added on each side of a word's span (measured: see above)


@dataclass(frozen=True)
class OcrWord:
    """One word of a recognized line: its text and axis-aligned page box ``(x0, y0, x1, y1)``."""

    text: str
    box: tuple[float, float, float, float]


def word_steps(text: str, char_steps: tuple[tuple[int, int], ...]) -> list[tuple[str, int, int]]:
    """The words of ``text`` (split at spaces) with their first and last time step."""
    words: list[tuple[str, int, int]] = []
    start: int | None = None
    for i, char in enumerate(text + " "):
        if char != " " and start is None:
            start = i
        elif char == " " and start is not None:
            words.append((text[start:i], char_steps[start][0], char_steps[i - 1][1]))
            start = None
    return words


def _crop_spans(steps: list[tuple[str, int, int]], step_width: float, length: int) -> np.ndarray:
    """Each word's ``[x0, x1]`` along the reading direction of the crop, padded and clipped."""
    spans = np.array([(first - PAD_STEPS, last + 1 + PAD_STEPS) for _, first, last in steps], dtype=np.float32)
    return np.clip(spans * step_width, 0, length)


def _span_corners(spans: np.ndarray, width: int, height: int) -> np.ndarray:
    """The four corners of each span's rectangle in the warped (unrotated) crop, shape (n, 4, 2).

    A tall crop was turned by ``np.rot90`` (counter-clockwise) before recognition: column ``x`` of the
    turned crop is row ``x`` of the warped one, so a span there covers rows, across the full width.
    """
    x0, x1 = spans[:, 0], spans[:, 1]
    if is_rotated(width, height):
        zero, full = np.zeros_like(x0), np.full_like(x0, width)
        corners = [(zero, x0), (full, x0), (full, x1), (zero, x1)]
    else:
        zero, full = np.zeros_like(x0), np.full_like(x0, height)
        corners = [(x0, zero), (x1, zero), (x1, full), (x0, full)]
    return np.stack([np.stack(c, axis=1) for c in corners], axis=1)


def word_boxes(rec: RecognizedText, quad: np.ndarray) -> list[OcrWord]:
    """The words of a line read from the crop of ``quad``, each with its axis-aligned page box.

    Empty when the line has no words or the recognizer gave no character positions.
    """
    steps = word_steps(rec.text, rec.char_steps) if len(rec.char_steps) == len(rec.text) else []
    if not steps or rec.step_width <= 0:
        return []
    width, height = crop_size(quad)
    length = height if is_rotated(width, height) else width
    corners = _span_corners(_crop_spans(steps, rec.step_width, length), width, height)
    to_page = cv2.getPerspectiveTransform(crop_rectangle(width, height), quad.astype(np.float32))
    points = cv2.perspectiveTransform(corners.reshape(1, -1, 2), to_page).reshape(-1, 4, 2)
    low, high = points.min(axis=1), points.max(axis=1)
    return [OcrWord(text=text, box=(float(a[0]), float(a[1]), float(b[0]), float(b[1])))
            for (text, _, _), a, b in zip(steps, low, high)]
