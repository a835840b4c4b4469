"""Fine-tuning the shipped PP-OCRv4 detector: weight loading and parity, DB targets, training
steps, and export back into the original old-IR program."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from paddle import nn

from service.config import DetConfig
from service.finetune.det_model import (
    DBDetector,
    WeightMismatch,
    inference_probability_map,
    load_detector,
    load_inference_weights,
    probability_map,
)
from service.finetune.det_train import (
    DetTrainConfig,
    box_to_polygon,
    crop_with_polygons,
    db_offset,
    evaluate_loss,
    export_det,
    finetune_det,
    make_targets,
    prepare_sample,
)
from service.funsd import load_gt_lines
from service.ocr.detector import TextDetector, resize_for_detection, to_detector_input
from service.ocr.engine import Predictor

SHIPPED_PARAMETERS = 234


def _annotation(page: Path) -> Path:
    return page.parents[1] / "annotations" / f"{page.stem}.json"


@pytest.fixture(scope="module")
def base_dir(models_dir: Path) -> Path:
    return models_dir / "det" / "base"


@pytest.mark.slow
def test_weights_load_and_match_the_inference_program(base_dir: Path, funsd_page_path: Path) -> None:
    model = DBDetector()
    pairing = load_inference_weights(model, base_dir)
    assert pairing.mismatches == 0
    assert len(pairing.pairs) == SHIPPED_PARAMETERS
    assert pairing.pairs[0] == ("conv2d_0.w_0", "backbone.stem_conv.weight")
    assert pairing.pairs[-1] == ("conv2d_transpose_1.b_0", "binarize.up2.bias")
    model.eval()

    page = cv2.imread(str(funsd_page_path))
    batch = to_detector_input(resize_for_detection(page, DetConfig())[0])
    ours = probability_map(model, batch)
    service = Predictor(base_dir)(batch)  # oneDNN + fusion passes, as the service runs it
    plain = inference_probability_map(base_dir, batch, optimized=False)  # the program as written
    assert ours.shape == service.shape == (1, 1, *batch.shape[2:])
    assert float(np.abs(ours - service).max()) <= 1e-4
    assert float(np.abs(ours - plain).max()) <= 1e-6
    assert (service > 0.3).mean() > 0.01  # a real page: text was found at all


def test_a_different_architecture_is_refused_before_copying(base_dir: Path) -> None:
    model = DBDetector()
    model.binarize.up2 = nn.Conv2DTranspose(24, 2, 2, stride=2)  # two output maps instead of one
    before = model.backbone.stem_conv.weight.numpy().copy()
    with pytest.raises(WeightMismatch, match="binarize.up2.weight"):
        load_inference_weights(model, base_dir)
    np.testing.assert_array_equal(model.backbone.stem_conv.weight.numpy(), before)


def test_targets_of_a_rectangle() -> None:
    h, w = 160, 200
    rect = box_to_polygon((50, 60, 150, 100))  # 100 × 40
    assert db_offset(rect) == pytest.approx(100 * 40 * (1 - 0.4**2) / 280)  # 12.0
    thin = box_to_polygon((10, 130, 60, 135))  # 5 px high: below min_text_size, ignored
    marked = box_to_polygon((160, 10, 190, 50))  # explicitly ignored
    t = make_targets([rect, thin, marked], h, w, ignore=[False, False, True])

    for arr in (t.shrink_map, t.shrink_mask, t.threshold_map, t.threshold_mask):
        assert arr.shape == (h, w) and arr.dtype == np.float32
    # Shrink map: the rectangle shrunk by 12 px on each side (x 62..138, y 72..88), nothing else.
    ys, xs = np.nonzero(t.shrink_map)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (62, 138, 72, 88)
    assert set(np.unique(t.shrink_map)) == {0.0, 1.0}
    assert t.shrink_map[80, 100] == 1 and t.shrink_map[65, 55] == 0
    # Shrink mask: the thin and the ignored polygons are cut out, the rest counts.
    assert t.shrink_mask[132, 30] == 0 and t.shrink_mask[30, 175] == 0
    assert t.shrink_mask[80, 100] == 1 and t.shrink_mask[5, 5] == 1
    # Threshold map: 0.7 on the edges, 0.3 at least 12 px away, linear in between; only around
    # the rectangle (grown by 12 px).
    assert t.threshold_map[60, 100] == pytest.approx(0.7)
    assert t.threshold_map[54, 100] == pytest.approx(0.5, abs=1e-6)  # 6 px outside the top edge
    assert t.threshold_map[66, 100] == pytest.approx(0.5, abs=1e-6)  # 6 px inside
    assert t.threshold_map[80, 100] == pytest.approx(0.3)
    assert t.threshold_map[5, 5] == pytest.approx(0.3)
    assert float(t.threshold_map.min()) == pytest.approx(0.3) and float(t.threshold_map.max()) == pytest.approx(0.7)
    assert t.threshold_mask[80, 100] == 1 and t.threshold_mask[50, 100] == 1 and t.threshold_mask[47, 100] == 0
    assert t.threshold_mask[132, 30] == 0 and t.threshold_mask[30, 175] == 0


def test_crop_keeps_whole_polygons_and_ignores_cut_ones() -> None:
    image = np.zeros((100, 100, 3), dtype=np.uint8)
    inside = box_to_polygon((10, 10, 30, 20))
    cut = box_to_polygon((40, 10, 80, 20))
    outside = box_to_polygon((70, 70, 90, 90))
    crop, polygons, ignore = crop_with_polygons(image, [inside, cut, outside], 5, 5, 50, 40)
    assert crop.shape == (40, 50, 3)
    assert ignore == [False, True]
    np.testing.assert_array_equal(polygons[0], inside - 5)


@pytest.fixture(scope="module")
def finetuned(base_dir: Path, funsd_page_path: Path) -> SimpleNamespace:
    """The base detector fine-tuned for a few steps on a 320×320 crop of a FUNSD page's gold lines."""
    page = cv2.imread(str(funsd_page_path))
    lines = load_gt_lines(_annotation(funsd_page_path))
    crop, polygons, ignore = crop_with_polygons(page, [box_to_polygon(line.box) for line in lines], 100, 100, 320, 320)
    sample = prepare_sample(crop, polygons, ignore)
    assert sample.image.shape == (3, 320, 320)
    assert sample.targets.shrink_map.sum() > 500  # the crop holds text lines
    model = load_detector(base_dir)
    before = evaluate_loss(model, [sample])
    # A rate ten times the learning job's, so that 10 steps on one crop show a clear fall.
    log = finetune_det(model, [sample], DetTrainConfig(steps=10, learning_rate=5e-5, threshold_warmup_steps=3))
    after = evaluate_loss(model, [sample])
    return SimpleNamespace(model=model, sample=sample, before=before, after=after, log=log)


@pytest.mark.slow
def test_a_few_steps_lower_the_db_loss(finetuned: SimpleNamespace) -> None:
    assert len(finetuned.log.steps) == 10
    assert all(np.isfinite(step["loss"]) for step in finetuned.log.steps)
    assert finetuned.after["loss"] < 0.9 * finetuned.before["loss"], (finetuned.before, finetuned.after)
    # Not only the new threshold branch: the shipped probability map itself fits better.
    assert finetuned.after["shrink"] < finetuned.before["shrink"], (finetuned.before, finetuned.after)


@pytest.fixture(scope="module")
def exported(finetuned: SimpleNamespace, base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_det(finetuned.model, base_dir, tmp_path_factory.mktemp("export") / "det-ft")


@pytest.mark.slow
def test_export_writes_the_weights_into_the_original_program(finetuned: SimpleNamespace, exported: Path,
                                                              base_dir: Path) -> None:
    out = exported
    assert sorted(p.name for p in out.iterdir()) == ["inference.pdiparams", "inference.pdmodel", "inference.yml"]
    for name in ("inference.pdmodel", "inference.yml"):
        assert filecmp.cmp(out / name, base_dir / name, shallow=False)
    base_size = (base_dir / "inference.pdiparams").stat().st_size
    assert (out / "inference.pdiparams").stat().st_size == base_size  # same names, shapes, format

    batch = finetuned.sample.image[np.newaxis]
    exported_map = Predictor(out)(batch)  # the service's oneDNN old-IR path loads it
    ours = probability_map(finetuned.model, batch)
    assert float(np.abs(exported_map - ours).max()) <= 1e-4
    assert float(np.abs(exported_map - Predictor(base_dir)(batch)).max()) > 1e-3  # the weights did change


PADDLEOCR_CHILD = r"""
import json, os, sys
os.environ["PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK"] = "True"
from paddleocr import TextDetection
model_dir, page = sys.argv[1:3]
det = TextDetection(model_name="PP-OCRv4_mobile_det", model_dir=model_dir, limit_side_len=64, limit_type="min",
                    thresh=0.3, box_thresh=0.6, unclip_ratio=1.5, engine="paddle_static", device="cpu",
                    engine_config={"run_mode": "mkldnn", "enable_new_ir": False, "cpu_threads": 2})
print(json.dumps({"boxes": len(det.predict(page)[0]["dt_polys"])}))
"""


@pytest.mark.slow
def test_paddleocr_loads_the_exported_folder(exported: Path, funsd_page_path: Path) -> None:
    ours = TextDetector(Predictor(exported), DetConfig())(cv2.imread(str(funsd_page_path)))
    result = subprocess.run([sys.executable, "-c", PADDLEOCR_CHILD, str(exported), str(funsd_page_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    theirs = json.loads(result.stdout.strip().splitlines()[-1])["boxes"]
    assert len(ours) > 10
    assert abs(theirs - len(ours)) <= max(2, len(ours) // 20)


def test_exporting_the_base_weights_reproduces_the_base_file(base_dir: Path, tmp_path: Path) -> None:
    out = export_det(load_detector(base_dir), base_dir, tmp_path / "det-same")
    assert filecmp.cmp(out / "inference.pdiparams", base_dir / "inference.pdiparams", shallow=False)
    with pytest.raises(ValueError):
        export_det(load_detector(base_dir), base_dir, base_dir)


def test_matched_shrink_ratio_kernels_grow_back_to_the_gold_box() -> None:
    from service.finetune.det_train import SHRINK_RATIO, matched_shrink_ratio
    from service.ocr.detector import boxes_from_probability_map

    line = box_to_polygon((20, 40, 620, 70))  # 600 × 30 px
    post = DetConfig().resolved({})  # the shipped post-processing: unclip 1.5

    def round_trip(shrink_ratio: float) -> float:
        kernel = make_targets([line], 120, 640, shrink_ratio=shrink_ratio).shrink_map
        (box,) = boxes_from_probability_map(kernel, 120, 640, post)
        return float(np.ptp(box.points[:, 1]))

    assert abs(round_trip(matched_shrink_ratio(post.unclip_ratio)) - 30) <= 3
    assert round_trip(SHRINK_RATIO) < 20  # DB's own ratio: boxes come back far too thin
