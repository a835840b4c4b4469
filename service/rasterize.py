"""Turn an input file (PDF, TIFF, PNG, JPEG) into page images, guarding against bad input.

The type is decided by the file's leading bytes, never by its name. Every check that can be made
before decoding (size, page count, pixel count) is made first, so a hostile file is rejected cheaply.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from pdf2image import convert_from_path, pdfinfo_from_path
from pdf2image.exceptions import PDFInfoNotInstalledError, PDFPageCountError, PDFPopplerTimeoutError
from PIL import Image, ImageSequence, UnidentifiedImageError

from service.config import IngestConfig
from service.errors import IngestError, Reason

_MAGIC = {
    b"%PDF-": "pdf",
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpeg",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
}
_IMAGE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}
_PAGE_SIZE = re.compile(r"^Page\s+\d+\s+size$")
_POPPLER_TIMEOUT_S = 120

# We enforce our own, configurable pixel limit; Pillow's global one would fire first otherwise.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class SourceInfo:
    """What a file is, found without decoding its pages."""

    kind: str  # "pdf" | "png" | "jpeg" | "tiff"
    page_count: int


def sniff_kind(path: Path) -> str:
    """File type from the leading bytes; raises for empty or unsupported files."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1024)
    except FileNotFoundError as exc:
        raise IngestError(Reason.FILE_MISSING, f"{path.name} disappeared before it was read") from exc
    if not head:
        raise IngestError(Reason.EMPTY_FILE, f"{path.name} is empty (0 bytes)")
    for magic, kind in _MAGIC.items():
        if head.startswith(magic) or (kind == "pdf" and magic in head):
            return kind
    raise IngestError(
        Reason.UNSUPPORTED_TYPE,
        f"{path.name} is not a PDF, TIFF, PNG or JPEG (leading bytes {head[:8]!r})",
    )


def _poppler_message(text: str) -> str:
    """poppler's stderr on one line, each distinct complaint once."""
    lines = [line.strip() for line in text.replace("Unable to get page count.", "").splitlines()]
    return "; ".join(dict.fromkeys(line for line in lines if line))


def _pdf_info(path: Path, last_page: int | None = None) -> dict:
    """``pdfinfo`` output as a dict; maps poppler's complaints to reasons."""
    try:
        return pdfinfo_from_path(str(path), first_page=1 if last_page else None,
                                 last_page=last_page, timeout=_POPPLER_TIMEOUT_S)
    except PDFInfoNotInstalledError as exc:
        raise RuntimeError("poppler-utils (pdfinfo, pdftoppm) is not installed") from exc
    except PDFPopplerTimeoutError as exc:
        raise IngestError(Reason.PDF_DAMAGED, f"{path.name}: poppler timed out reading it") from exc
    except PDFPageCountError as exc:
        detail = _poppler_message(str(exc))
        if "password" in detail.lower() or "encrypt" in detail.lower():
            raise IngestError(Reason.PDF_ENCRYPTED, f"{path.name} is encrypted with a password") from exc
        if "page count 0" in detail:
            raise IngestError(Reason.PDF_NO_PAGES, f"{path.name} is a PDF with no pages") from exc
        raise IngestError(Reason.PDF_DAMAGED, f"{path.name} is not a readable PDF: {detail or 'no page count'}") from exc


def _check_page_count(path: Path, count: int, cfg: IngestConfig) -> None:
    if count > cfg.max_pages:
        raise IngestError(Reason.TOO_MANY_PAGES, f"{path.name} has {count} pages; the limit is {cfg.max_pages}")


def _check_pixels(path: Path, page: int, width: float, height: float, cfg: IngestConfig) -> None:
    pixels = int(width) * int(height)
    if pixels > cfg.max_pixels_per_page:
        raise IngestError(
            Reason.PAGE_TOO_LARGE,
            f"{path.name} page {page} would be {int(width)}×{int(height)} = {pixels:,} pixels; "
            f"the limit is {cfg.max_pixels_per_page:,}",
        )


def _probe_pdf(path: Path, cfg: IngestConfig) -> SourceInfo:
    count = int(_pdf_info(path).get("Pages", 0))
    if count == 0:
        raise IngestError(Reason.PDF_NO_PAGES, f"{path.name} is a PDF with no pages")
    _check_page_count(path, count, cfg)
    info = _pdf_info(path, last_page=count)
    sizes = [v for k, v in info.items() if _PAGE_SIZE.match(k)] or [info.get("Page size", "")]
    for number, size in enumerate(sizes, start=1):
        match = re.match(r"([\d.]+) x ([\d.]+) pts", str(size))
        if match:
            w_pts, h_pts = float(match.group(1)), float(match.group(2))
            _check_pixels(path, number, w_pts / 72 * cfg.dpi, h_pts / 72 * cfg.dpi, cfg)
    return SourceInfo(kind="pdf", page_count=count)


def _open_image(path: Path, kind: str) -> Image.Image:
    try:
        image = Image.open(path, formats=[_IMAGE_FORMATS[kind]])
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise IngestError(Reason.IMAGE_DAMAGED, f"{path.name} is not a readable {kind.upper()}: {exc}") from exc
    return image


def _probe_image(path: Path, kind: str, cfg: IngestConfig) -> SourceInfo:
    with _open_image(path, kind) as image:
        count = getattr(image, "n_frames", 1)
        _check_page_count(path, count, cfg)
        for number, frame in enumerate(ImageSequence.Iterator(image), start=1):
            _check_pixels(path, number, frame.width, frame.height, cfg)
    return SourceInfo(kind=kind, page_count=count)


def probe(path: Path, cfg: IngestConfig) -> SourceInfo:
    """Check a file against the limits without rasterizing it."""
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise IngestError(Reason.FILE_MISSING, f"{path.name} disappeared before it was read") from exc
    if size > cfg.max_file_bytes:
        raise IngestError(Reason.FILE_TOO_LARGE, f"{path.name} is {size:,} bytes; the limit is {cfg.max_file_bytes:,}")
    kind = sniff_kind(path)
    return _probe_pdf(path, cfg) if kind == "pdf" else _probe_image(path, kind, cfg)


def _pdf_page(path: Path, number: int, cfg: IngestConfig) -> Image.Image:
    try:
        # The crop box: what a viewer shows, and what pdfinfo's page size (checked by probe) measures.
        images = convert_from_path(str(path), dpi=cfg.dpi, first_page=number, last_page=number,
                                   thread_count=1, timeout=_POPPLER_TIMEOUT_S, use_cropbox=True)
    except (PDFPageCountError, PDFPopplerTimeoutError) as exc:
        raise IngestError(Reason.PDF_DAMAGED, f"{path.name} page {number} cannot be rasterized: {exc}") from exc
    if not images:
        raise IngestError(Reason.PDF_DAMAGED, f"{path.name} page {number} produced no image")
    return to_rgb(images[0])


_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB page from whatever mode a scanner or converter wrote.

    16-bit and 32-bit grey (``I;16``, ``I``, ``F``) are scaled to 8 bits rather than clipped, which
    would turn a 16-bit scan almost white; transparent pixels (``RGBA``, ``LA``, ``P`` with a
    transparent colour) are laid on white paper rather than on black.
    """
    if image.mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(_grey_to_8_bit(np.asarray(image)), mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, rgba).convert("RGB")
    return image.convert("RGB")


def _grey_to_8_bit(samples: np.ndarray) -> np.ndarray:
    values = samples.astype(np.float64)
    peak = float(values.max()) if values.size else 0.0
    if peak <= 1.0 and samples.dtype.kind == "f":
        values = values * 255.0  # float images in [0, 1]
    elif peak > 255.0:
        # Samples of 9 to 16 bits (a 12-bit scanner writes 0..4095 into a 16-bit file): scale the
        # smallest bit depth that holds the peak to 0..255, as an 8-bit copy of the scan would be.
        bits = min(32, math.ceil(math.log2(peak + 1)))
        values = values * (255.0 / (2.0 ** bits - 1.0))
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def iter_pages(path: Path, info: SourceInfo, cfg: IngestConfig) -> Iterator[Image.Image]:
    """Yield each page as an RGB image, one at a time to bound memory."""
    if info.kind == "pdf":
        for number in range(1, info.page_count + 1):
            yield _pdf_page(path, number, cfg)
        return
    with _open_image(path, info.kind) as image:
        for number, frame in enumerate(ImageSequence.Iterator(image), start=1):
            try:
                page = to_rgb(frame)
            except (OSError, SyntaxError, ValueError) as exc:
                raise IngestError(Reason.IMAGE_DAMAGED, f"{path.name} page {number} cannot be decoded: {exc}") from exc
            yield page
