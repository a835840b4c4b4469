"""Our registry folders must stay usable by PaddleOCR users: PaddleOCR 3.7 loads and runs them.

PaddleOCR runs in a child process so that its global logging and flag set-up stay out of ours.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from service.evaluation import char_accuracy
from service.ocr import OcrEngine
from service.ocr.recognizer import crop_quad

CHILD = r"""
import json, os, sys
os.environ["PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK"] = "True"
from paddleocr import TextDetection, TextRecognition
models, page, crop = sys.argv[1:4]
engine = {"engine": "paddle_static", "device": "cpu",
          "engine_config": {"run_mode": "mkldnn", "enable_new_ir": False, "cpu_threads": 2}}
det = TextDetection(model_name="PP-OCRv4_mobile_det", model_dir=os.path.join(models, "det", "base"),
                    limit_side_len=64, limit_type="min", thresh=0.3, box_thresh=0.6, unclip_ratio=1.5, **engine)
rec = TextRecognition(model_name="PP-OCRv4_mobile_rec", model_dir=os.path.join(models, "rec", "base"), **engine)
boxes = det.predict(page)[0]["dt_polys"]
text = rec.predict(crop)[0]
print(json.dumps({"boxes": len(boxes), "text": text["rec_text"], "score": float(text["rec_score"])}))
"""


@pytest.mark.slow
def test_paddleocr_loads_our_model_folders(models_dir: Path, ocr_engine: OcrEngine,
                                           funsd_page_path: Path, tmp_path: Path) -> None:
    page = cv2.imread(str(funsd_page_path))
    ours = ocr_engine.read_page(page)
    longest = max(ours, key=lambda line: len(line.text))
    crop_path = tmp_path / "crop.png"
    cv2.imwrite(str(crop_path), crop_quad(page, longest.points))

    result = subprocess.run([sys.executable, "-c", CHILD, str(models_dir), str(funsd_page_path), str(crop_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    theirs = json.loads(result.stdout.strip().splitlines()[-1])
    # Same weights, same pre-processing up to a pixel of resize rounding: the same reading.
    assert char_accuracy(longest.text, theirs["text"]) >= 0.95, (longest.text, theirs["text"])
    assert theirs["score"] == pytest.approx(longest.rec_score, abs=0.02)
    assert abs(theirs["boxes"] - len(ours)) <= max(2, len(ours) // 20)
