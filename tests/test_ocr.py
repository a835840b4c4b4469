"""OCR on real FUNSD forms and on every supported format, with the real base models."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from service.config import OcrConfig, PaperloopConfig, RecConfig
from service.document import Document
from service.evaluation import evaluate_page, recognition_scores
from service.funsd import load_gt_lines
from service.ocr import OcrEngine
from service.ocr.engine import Predictor
from service.ocr.recognizer import TextRecognizer, load_charset_from_list
from service.registry import ModelRegistry
from service.pipeline import DocumentPipeline

from conftest import FUNSD_ROOT, write_pdf


def _annotation(image: Path) -> Path:
    return FUNSD_ROOT / "dataset/testing_data/annotations" / f"{image.stem}.json"


@pytest.mark.slow
def test_reads_a_real_form_against_its_ground_truth(ocr_engine: OcrEngine, funsd_page_path: Path) -> None:
    lines = ocr_engine.read_page(cv2.imread(str(funsd_page_path)))
    gt = load_gt_lines(_annotation(funsd_page_path))
    page = evaluate_page([l.points for l in lines], [l.text for l in lines],
                         [g.box for g in gt], [g.text for g in gt])
    # PP-OCRv4 finds most FUNSD lines; on this form it reads them nearly character-perfect,
    # except for the spaces it drops (the fine-tuning loop's job to fix).
    assert page.counts.hmean > 0.6
    scores = recognition_scores(page.text_pairs)
    assert scores.char_accuracy > 0.75
    texts = " ".join(l.text for l in lines)
    assert "12/10/98" in texts and "(336)335-7392" in texts
    assert all(0.0 <= l.rec_score <= 1.0 and 0.0 <= l.det_score <= 1.0 for l in lines)


def test_lines_come_in_reading_order(ocr_engine: OcrEngine, page_path: Path) -> None:
    lines = ocr_engine.read_page(cv2.imread(str(page_path)))
    tops = [float(l.points[:, 1].min()) for l in lines]
    # each line starts no higher than about one line-height above the previous one
    assert all(b >= a - 12 for a, b in zip(tops, tops[1:]))


@pytest.mark.parametrize("kind", ["pdf", "tiff", "jpeg", "png"])
def test_every_format_gives_pages_with_text(
    kind: str, cfg: PaperloopConfig, ocr_engine: OcrEngine, pages: list[Path], tmp_path: Path
) -> None:
    sources = pages[:2]
    if kind == "pdf":
        path = write_pdf(tmp_path / "form.pdf", sources)
    elif kind == "tiff":
        path = tmp_path / "form.tif"
        frames = [Image.open(p).convert("RGB") for p in sources]
        frames[0].save(path, save_all=True, append_images=frames[1:], compression="tiff_deflate")
    else:
        path = tmp_path / f"form.{kind}"
        Image.open(sources[0]).convert("RGB").save(path, quality=95) if kind == "jpeg" else path.write_bytes(sources[0].read_bytes())
    pipeline = DocumentPipeline(cfg, ocr_engine)
    document = pipeline.process_file(path, "doc-000007", "0" * 64, path.name)

    expected_pages = 2 if kind in ("pdf", "tiff") else 1
    assert len(document.pages) == expected_pages
    for page in document.pages:
        assert page.segments, f"no text on page {page.number}"
        assert (cfg.paths.resolve("data") / page.image).is_file()
        assert {s.det_version for s in page.segments} == {"base"}
    if kind == "pdf":  # 100-dpi PDF rasterized at the configured 200 dpi
        with Image.open(sources[0]) as original:
            assert document.pages[0].width == pytest.approx(original.width * 2, abs=2)
    assert Document.from_dict(json.loads(json.dumps(document.to_dict()))) == document


def test_engine_gives_the_same_result_on_another_thread(ocr_engine: OcrEngine, page_path: Path) -> None:
    # oneDNN state is per predictor; a predictor shared across threads once failed mid-document.
    page = cv2.imread(str(page_path))
    here = [(l.text, l.rec_score) for l in ocr_engine.read_page(page)]
    there: list = []
    worker = threading.Thread(target=lambda: there.extend((l.text, l.rec_score) for l in ocr_engine.read_page(page)))
    worker.start()
    worker.join()
    assert there == here


@pytest.mark.parametrize(("threads", "expected_batches"), [(1, 2), (2, 1)])
def test_rec_batches_are_sized_to_the_threads_that_run_them(
    models_dir: Path, threads: int, expected_batches: int
) -> None:
    # One thread has one core's cache: 1,600 px of padded width, five 320 px crops; two threads 3,200 px.
    registry = ModelRegistry(models_dir)
    version, rec_dir = registry.current_dir("rec")
    charset = load_charset_from_list(registry.inference_config("rec", version)["PostProcess"]["character_dict"])
    recognizer = TextRecognizer(Predictor(rec_dir, threads=threads), charset, RecConfig())
    crops = [np.full((48, 320, 3), 255, np.uint8) for _ in range(8)]
    assert len(recognizer._batches(crops)) == expected_batches
    assert RecConfig(batch_width_budget=640).width_budget(threads) == 640


def test_cached_readings_are_kept_apart_per_ocr_setting(ocr_engine: OcrEngine, models_dir: Path, page_path: Path,
                                                        tmp_path: Path) -> None:
    """A page read for training is cached per det/rec version; a deployment that sets its own post-processing
    (a larger unclip ratio for receipts) must get its own reading, not the one cached under the defaults."""
    from service.kie.service_view import read_page_lines

    cache = tmp_path / "ocr-cache"
    default = read_page_lines(ocr_engine, page_path, 1, cache)
    looser = OcrEngine(ModelRegistry(models_dir), OcrConfig.model_validate({"det": {"unclip_ratio": 2.5}}))
    loose = read_page_lines(looser, page_path, 1, cache)
    assert default and loose and len(list(cache.iterdir())) == 2

    def mean_height(segments: list) -> float:
        return float(np.mean([s.bbox[3] - s.bbox[1] for s in segments]))

    assert mean_height(loose) > mean_height(default) * 1.1
    assert read_page_lines(looser, page_path, 1, cache) == loose  # and then read from the cache
