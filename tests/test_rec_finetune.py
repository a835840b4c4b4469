"""Recognition fine-tuning: the dygraph PP-OCRv4 model matches the shipped inference program,
CTC fine-tuning on FUNSD line crops lowers the loss, and the export runs on the oneDNN old-IR path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import paddle
import pytest

from service.config import RecConfig
from service.finetune.common import read_inference_params, write_params_file
from service.finetune.rec_model import (
    PPOCRv4RecModel,
    WeightMismatchError,
    load_inference_weights,
    load_rec_model,
    parity,
    run_program,
)
from service.finetune.rec_train import (
    FinetuneSettings,
    FrozenBackbone,
    LabelEncoder,
    RecSample,
    ctc_losses,
    export_rec,
    finetune_rec,
    load_charset,
    make_batch,
    mean_ctc_loss,
)
from service.evaluation import char_accuracy
from service.funsd import load_gt_lines, split_pairs
from service.ocr import OcrEngine
from service.ocr.engine import Predictor
from service.ocr.recognizer import _normalize_batch, crop_quad, ctc_greedy_decode

from conftest import FUNSD_ROOT

# PaddleOCR runs in a child process, as in test_paddleocr_compat, to keep its global set-up out of ours.
PADDLEOCR_CHILD = r"""
import json, os, sys
os.environ["PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK"] = "True"
from paddleocr import TextRecognition
model_dir, crop = sys.argv[1:3]
rec = TextRecognition(model_name="PP-OCRv4_mobile_rec", model_dir=model_dir, engine="paddle_static", device="cpu",
                      engine_config={"run_mode": "mkldnn", "enable_new_ir": False, "cpu_threads": 2})
print(json.dumps({"text": rec.predict(crop)[0]["rec_text"]}))
"""

PARITY_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def base_dir(models_dir: Path) -> Path:
    return models_dir / "rec" / "base"


@pytest.fixture(scope="module")
def page_batches(ocr_engine: OcrEngine, pages: list[Path]) -> list[np.ndarray]:
    """Detected line crops of the synthetic form pages, pre-processed as inference does: the 8
    narrowest, 8 from the middle, the 4 widest (the long line, over 1,000 px)."""
    images = [cv2.imread(str(path)) for path in pages]
    crops = [crop_quad(page, box.points) for page in images for box in ocr_engine.detect(page)]
    crops.sort(key=lambda c: c.shape[1] / c.shape[0])
    assert len(crops) >= 24
    picked = [crops[:8], crops[len(crops) // 2:len(crops) // 2 + 8], crops[-4:]]
    return [_normalize_batch(group, RecConfig()) for group in picked]


def _gt_line_samples(count: int) -> list[RecSample]:
    """FUNSD training-form lines whose gold text has spaces, cropped from their boxes with a margin."""
    samples = []
    for image_path, annotation in split_pairs("training", FUNSD_ROOT):
        page = cv2.imread(str(image_path))
        for line in load_gt_lines(annotation):
            if " " not in line.text or len(line.text) < 6:
                continue
            x0, y0, x1, y1 = line.box
            margin = 0.15 * (y1 - y0)
            quad = np.array([[x0 - margin, y0 - margin], [x1 + margin, y0 - margin],
                             [x1 + margin, y1 + margin], [x0 - margin, y1 + margin]], dtype=np.float32)
            samples.append(RecSample(crop_quad(page, quad), line.text))
            if len(samples) == count:
                return samples
    raise AssertionError("not enough FUNSD lines with spaces")


def test_weights_load_with_no_mismatch_and_match_the_inference_program(
        base_dir: Path, page_batches: list[np.ndarray]) -> None:
    program, records = read_inference_params(base_dir)
    model = PPOCRv4RecModel()
    pairs = load_inference_weights(model, base_dir)
    assert len(pairs) == len(program.use_order) == len(model.state_dict()) == 234
    state = model.state_dict()
    assert all(np.array_equal(state[ours].numpy(), records[graph].value) for ours, graph in pairs)

    model.eval()
    predictor = Predictor(base_dir)  # the service's oneDNN old-IR path
    for batch in page_batches:
        with paddle.no_grad():
            ours = model.probabilities(paddle.to_tensor(batch)).numpy()
        theirs = predictor(batch)
        assert ours.shape == theirs.shape == (len(batch), batch.shape[3] // 8, 6625)
        assert (ours.argmax(-1) == theirs.argmax(-1)).all()
        difference = float(np.abs(ours - theirs).max())
        # Against the program as written the network agrees to a few 1e-6 (2.6e-5 at 1,760 px).
        # The service's fused passes (conv+BN folding, fused self-attention) add their own
        # rounding, which grows with the sequence length: ~1e-5 up to 800 px, 3.3e-4 at 1,760 px.
        written = run_program(base_dir, batch[:2], optimized=False)  # plain kernels: slow, so 2 crops
        assert float(np.abs(ours[:2] - written).max()) <= PARITY_TOLERANCE
        assert difference <= (PARITY_TOLERANCE if batch.shape[3] <= 800 else 1e-3), (batch.shape, difference)


def test_a_network_that_does_not_fit_is_refused(base_dir: Path) -> None:
    model = PPOCRv4RecModel(num_classes=100)
    before = model.head.weight.numpy().copy()
    with pytest.raises(WeightMismatchError, match="shape mismatch"):
        load_inference_weights(model, base_dir)
    assert np.array_equal(model.head.weight.numpy(), before)  # nothing assigned


def test_parameters_file_round_trips_byte_for_byte(base_dir: Path, tmp_path: Path) -> None:
    program, records = read_inference_params(base_dir)
    write_params_file(tmp_path / "p.pdiparams", program.file_order, records, {})
    assert (tmp_path / "p.pdiparams").read_bytes() == (base_dir / "inference.pdiparams").read_bytes()


def test_labels_use_the_registry_alphabet(base_dir: Path) -> None:
    charset = load_charset(base_dir)
    assert len(charset) == 6625 and charset[0] == "<blank>" and charset[-1] == " "
    encoder = LabelEncoder(charset)
    ids = encoder.encode("Fax: 12 34")
    assert ids[-3] == 6624 and 0 not in ids and encoder.decode(ids) == "Fax: 12 34"
    assert encoder.encode("a\u2603b") == encoder.encode("ab")  # unknown characters are dropped
    batch = make_batch([RecSample(np.zeros((20, 100, 3), np.uint8), "ab"),
                        RecSample(np.zeros((20, 300, 3), np.uint8), "abc d")], encoder, RecConfig())
    assert batch.images.shape[:3] == (2, 3, 48) and batch.label_lengths.tolist() == [2, 5]
    assert batch.labels.shape == (2, 5) and batch.labels[0, 2:].tolist() == [0, 0, 0]


@pytest.fixture(scope="module")
def finetuned(base_dir: Path) -> dict:
    """The base model fine-tuned for a few steps on 20 FUNSD training lines with spaces."""
    samples = _gt_line_samples(20)
    encoder = LabelEncoder(load_charset(base_dir))
    model = load_rec_model(base_dir)
    bn_before = {k: v.numpy().copy() for k, v in model.state_dict().items() if "_mean" in k or "_variance" in k}
    backbone_before = {k: v.numpy().copy() for k, v in model.backbone.state_dict().items()}
    before = mean_ctc_loss(model, samples, encoder)
    report = finetune_rec(model, samples, encoder, FinetuneSettings(epochs=2, batch_size=8, learning_rate=1e-4))
    after = mean_ctc_loss(model, samples, encoder)
    return {"model": model, "samples": samples, "before": before, "after": after, "report": report,
            "bn_before": bn_before, "backbone_before": backbone_before}


@pytest.mark.slow
def test_finetuning_lowers_the_ctc_loss_with_batchnorm_frozen(finetuned: dict) -> None:
    report = finetuned["report"]
    assert report.samples == 20 and report.skipped == 0 and report.steps == 6
    assert all(np.isfinite(report.step_losses))
    assert finetuned["after"] < 0.8 * finetuned["before"], (finetuned["before"], finetuned["after"])
    state = finetuned["model"].state_dict()
    assert all(np.array_equal(state[k].numpy(), v) for k, v in finetuned["bn_before"].items())
    # by default only the neck and head learn (PP-OCRv4's CTC branch detaches the backbone)
    backbone = finetuned["model"].backbone.state_dict()
    assert all(np.array_equal(backbone[k].numpy(), v) for k, v in finetuned["backbone_before"].items())
    assert not finetuned["model"].training


@pytest.mark.slow
def test_backbone_training_keeps_batchnorm_statistics(base_dir: Path) -> None:
    samples = _gt_line_samples(4)
    model = load_rec_model(base_dir)
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    report = finetune_rec(model, samples, LabelEncoder(load_charset(base_dir)),
                          FinetuneSettings(epochs=1, batch_size=4, learning_rate=1e-4, train_backbone=True))
    assert report.steps == 1 and model.neck.guide  # the guide is restored after training
    after = model.state_dict()
    stats = [k for k in before if k.endswith(("_mean", "_variance"))]
    assert len(stats) == 2 * 6  # the stem's BatchNorm and five in the neck
    assert all(np.array_equal(after[k].numpy(), before[k]) for k in stats)
    assert not np.array_equal(after["backbone.stem_conv.weight"].numpy(), before["backbone.stem_conv.weight"])


@pytest.mark.slow
def test_export_runs_on_the_old_ir_path_with_the_finetuned_outputs(
        finetuned: dict, base_dir: Path, page_batches: list[np.ndarray], tmp_path: Path) -> None:
    out = export_rec(finetuned["model"], base_dir, tmp_path / "rec-ft")
    assert sorted(p.name for p in out.iterdir()) == ["inference.pdiparams", "inference.pdmodel", "inference.yml"]
    for name in ("inference.pdmodel", "inference.yml"):
        assert (out / name).read_bytes() == (base_dir / name).read_bytes()
    assert (out / "inference.pdiparams").stat().st_size == (base_dir / "inference.pdiparams").stat().st_size

    batch = page_batches[1]
    with paddle.no_grad():
        ours = finetuned["model"].probabilities(paddle.to_tensor(batch)).numpy()
    exported = Predictor(out)(batch)
    assert float(np.abs(exported - ours).max()) <= PARITY_TOLERANCE
    assert float(np.abs(exported - Predictor(base_dir)(batch)).max()) > 1e-3  # the new weights are in use

    with pytest.raises(FileExistsError):
        export_rec(finetuned["model"], base_dir, out)

    # PaddleOCR 3.7 loads the exported folder and reads what our service path reads with it.
    crop = finetuned["samples"][3].image
    cv2.imwrite(str(tmp_path / "crop.png"), crop)
    result = subprocess.run([sys.executable, "-c", PADDLEOCR_CHILD, str(out), str(tmp_path / "crop.png")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    theirs = json.loads(result.stdout.strip().splitlines()[-1])["text"]
    ours_text = ctc_greedy_decode(Predictor(out)(_normalize_batch([crop], RecConfig())), load_charset(out))[0].text
    assert char_accuracy(ours_text, theirs) >= 0.95, (ours_text, theirs)


def test_unchanged_weights_export_to_the_base_model(base_dir: Path, page_batches: list[np.ndarray],
                                                     tmp_path: Path) -> None:
    out = export_rec(load_rec_model(base_dir), base_dir, tmp_path / "rec-same")
    assert (out / "inference.pdiparams").read_bytes() == (base_dir / "inference.pdiparams").read_bytes()
    batch = page_batches[0]
    assert np.array_equal(Predictor(out)(batch), Predictor(base_dir)(batch))
    assert parity(out, batch) <= PARITY_TOLERANCE  # the helper: fresh model from the folder vs Predictor


@pytest.mark.slow
def test_the_model_after_epoch_n_is_the_model_an_n_epoch_run_makes(base_dir: Path) -> None:
    """bench/rec_finetune.py reads every epoch of one run as if each were a run of its own."""
    samples = _gt_line_samples(8)
    encoder = LabelEncoder(load_charset(base_dir))
    settings = dict(batch_size=4, learning_rate=1e-4)
    one_epoch = load_rec_model(base_dir)
    finetune_rec(one_epoch, samples, encoder, FinetuneSettings(epochs=1, **settings))
    longer, seen, after_first = load_rec_model(base_dir), [], {}

    def on_epoch(epoch: int) -> None:
        seen.append(epoch)
        if epoch == 1:
            after_first.update({k: v.numpy().copy() for k, v in longer.state_dict().items()})

    report = finetune_rec(longer, samples, encoder, FinetuneSettings(epochs=3, **settings), on_epoch=on_epoch)
    assert seen == [1, 2, 3] and report.steps == 6
    expected = one_epoch.state_dict()
    assert all(np.allclose(expected[k].numpy(), v, atol=1e-6) for k, v in after_first.items())
    assert not np.allclose(longer.state_dict()["head.weight"].numpy(), after_first["head.weight"])


@pytest.mark.slow
def test_the_compiled_frozen_backbone_gives_the_dygraph_losses(base_dir: Path) -> None:
    """Training a frozen backbone runs it compiled; the CTC losses must be the ones dygraph computes."""
    samples = _gt_line_samples(6)
    encoder = LabelEncoder(load_charset(base_dir))
    model = load_rec_model(base_dir)
    batch = make_batch(samples, encoder, RecConfig())
    backbone = FrozenBackbone(model, threads=1)
    try:
        with paddle.no_grad():
            reference = model.backbone(paddle.to_tensor(batch.images)).numpy()
            compiled = backbone(batch.images)
            losses = ctc_losses(model, batch, backbone).numpy()
            expected = ctc_losses(model, batch).numpy()
    finally:
        backbone.close()
    assert compiled.shape == reference.shape
    assert np.abs(compiled - reference).max() < 1e-2 * np.abs(reference).max()
    assert np.allclose(losses, expected, rtol=1e-2, atol=1e-2), (losses, expected)
