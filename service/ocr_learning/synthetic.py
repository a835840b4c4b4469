"""Synthetic text lines rendered with real fonts: the recognition fine-tune's forgetting guard.

Fine-tuning on one team's forms alone teaches the recognizer their fonts and vocabulary and can
make it forget the rest (the failure most reported for PaddleOCR fine-tuning). Every rec run
therefore mixes in lines rendered with the machine's TrueType fonts (Debian's DejaVu and
Liberation families, installed by ``./run``): words from the gold texts in other orders and
cases, dates, amounts, phone numbers, codes and random printable strings, on varied
backgrounds with a little blur and noise. Only printable ASCII is rendered: those fonts cover it
fully, so every label matches its pixels; other scripts are learned from gold lines only.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from service.finetune.rec_train import RecSample

PRINTABLE = set(string.ascii_letters + string.digits + string.punctuation + " ")
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


class NoFontsError(RuntimeError):
    """No usable TrueType font in the configured folders."""


def find_fonts(folders: Sequence[str | Path]) -> list[Path]:
    """The ``.ttf`` / ``.otf`` files under ``folders``, sorted (missing folders are ignored)."""
    found = {p for folder in folders if Path(folder).is_dir()
             for p in Path(folder).rglob("*") if p.suffix.lower() in (".ttf", ".otf")}
    return sorted(found)


def vocabulary(texts: Sequence[str]) -> list[str]:
    """Distinct printable-ASCII words of ``texts``, in first-seen order."""
    words = dict.fromkeys(w for text in texts for w in text.split() if set(w) <= PRINTABLE)
    return list(words)


def _words_line(words: Sequence[str], rng: random.Random) -> str:
    line = " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
    style = rng.random()
    return line.upper() if style < 0.15 else line.title() if style < 0.3 else line


def _number_line(rng: random.Random) -> str:
    makers: list[Callable[[], str]] = [
        lambda: f"{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}/{rng.randint(1960, 2030)}",
        lambda: f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {rng.randint(1960, 2030)}",
        lambda: f"${rng.randint(0, 99999):,}.{rng.randint(0, 99):02d}",
        lambda: f"({rng.randint(200, 999)}) {rng.randint(200, 999)}-{rng.randint(0, 9999):04d}",
        lambda: f"{rng.choice(string.ascii_uppercase)}{rng.choice(string.ascii_uppercase)}-{rng.randint(0, 999999):06d}",
        lambda: f"{rng.randint(0, 100)}.{rng.randint(0, 9)}%",
    ]
    return rng.choice(makers)()


def _random_line(rng: random.Random) -> str:
    alphabet = sorted(PRINTABLE - {" "})
    tokens = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(rng.randint(1, 4))]
    return " ".join(tokens)


def synthetic_texts(words: Sequence[str], count: int, rng: random.Random) -> list[str]:
    """``count`` line texts: half word sequences (when there are words), the rest numbers and
    random strings."""
    texts = []
    for _ in range(count):
        kind = rng.random()
        if words and kind < 0.5:
            texts.append(_words_line(words, rng))
        elif kind < 0.8:
            texts.append(_number_line(rng))
        else:
            texts.append(_random_line(rng))
    return texts


@lru_cache(maxsize=512)
def _font(font_path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path), size)


def render_line(text: str, font_path: Path, size: int, rng: random.Random) -> np.ndarray:
    """``text`` drawn in dark ink on a light background, tightly padded, as an HWC uint8 BGR crop."""
    font = _font(font_path, size)
    left, top, right, bottom = font.getbbox(text)
    pad_x, pad_y = rng.randint(2, size // 2), rng.randint(2, max(3, size // 4))
    background, ink = rng.randint(190, 255), rng.randint(0, 80)
    canvas = Image.new("L", (right - left + 2 * pad_x, bottom - top + 2 * pad_y), background)
    ImageDraw.Draw(canvas).text((pad_x - left, pad_y - top), text, fill=ink, font=font)
    pixels = np.asarray(canvas, dtype=np.float32)
    if rng.random() < 0.3:
        pixels = cv2.GaussianBlur(pixels, (3, 3), 0)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0.0, rng.uniform(0.0, 8.0), pixels.shape)
    gray = np.clip(pixels + noise, 0, 255).astype(np.uint8)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def synthetic_samples(gold_texts: Sequence[str], count: int, font_folders: Sequence[str | Path],
                      seed: int = 0) -> list[RecSample]:
    """``count`` rendered lines (fonts and sizes drawn at random), seeded for reproducible runs.

    Raises :class:`NoFontsError` when ``count > 0`` and no font is found.
    """
    if count <= 0:
        return []
    fonts = find_fonts(font_folders)
    if not fonts:
        raise NoFontsError(f"no .ttf/.otf fonts in {list(map(str, font_folders))}: install fonts-dejavu-core "
                           "and fonts-liberation (./run setup does), or set learning.rec_synthetic_ratio: 0")
    rng = random.Random(seed)
    texts = synthetic_texts(vocabulary(gold_texts), count, rng)
    return [RecSample(render_line(text, rng.choice(fonts), rng.randint(18, 40), rng), text) for text in texts]
