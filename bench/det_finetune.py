"""Detection weight fine-tuning on FUNSD: does any setting beat the shipped detector?

The learning job calibrates det post-processing by default and fine-tunes det weights only when
``learning.det_steps`` > 0. This benchmark is the evidence for that default: it fine-tunes the
shipped PP-OCRv4 detector (DB loss, BatchNorm frozen, random 640 px crops around gold boxes) on
FUNSD training forms with each setting, and measures P/R/Hmean (IoU 0.5, shipped post-processing)
on a validation slice of the training split, and on the training pages themselves (can it even
fit the pages it was trained on?). Test forms are not used: this is for choosing settings.

Usage, from the project root::

    .venv/bin/python bench/det_finetune.py [--forms 20] [--validation 10] [--settings adam:100:5e-5,...]

A setting is ``optimizer:steps:learning_rate[:shrink_ratio]`` with optimizer ``adam`` (AdamW, as
the job uses) or ``sgd`` (momentum 0.9); the shrink ratio of the DB targets defaults to DB's 0.4
(0.632 = 1/√(1 + 1.5) makes kernels that the shipped unclip ratio grows back to the gold box). Results go to ``bench/results/det_finetune.{json,md}``.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import paddle  # noqa: E402

from bench.common import machine_info, utc_date, versions, write_results  # noqa: E402
from service.base_models import install_base_models  # noqa: E402
from service.config import PaperloopConfig  # noqa: E402
from service.finetune import det_train  # noqa: E402
from service.finetune.det_model import load_detector  # noqa: E402
from service.formats import read_funsd  # noqa: E402
from service.funsd import split_pairs  # noqa: E402
from service.kie.data import split_into_lines  # noqa: E402
from service.ocr_learning.det import RandomCrops, folder_metrics  # noqa: E402
from service.ocr_learning.pages import GoldPage  # noqa: E402
from service.registry import ModelRegistry  # noqa: E402


def load_pages(pairs: Sequence[tuple[Path, Path]]) -> list[GoldPage]:
    """FUNSD forms as gold pages of line boxes."""
    return [GoldPage(cv2.imread(str(image)), split_into_lines(read_funsd(annotation, image)).pages[0].segments)
            for image, annotation in pairs]


def scores(cfg: PaperloopConfig, model_dir: Path, pages: Sequence[GoldPage]) -> dict[str, float]:
    """P/R/Hmean of a det folder on gold pages with the shipped post-processing."""
    return {key: round(value, 4) for key, value in folder_metrics(cfg, model_dir, {}, pages).items()}


def _sgd(learning_rate: float, parameters: Any, weight_decay: float = 0.0, grad_clip: Any = None) -> Any:
    return paddle.optimizer.Momentum(learning_rate, momentum=0.9, parameters=parameters, grad_clip=grad_clip)


def fine_tune(cfg: PaperloopConfig, base: Path, pages: Sequence[GoldPage], optimizer: str, steps: int,
              learning_rate: float, shrink_ratio: float, out: Path) -> dict[str, Any]:
    """One setting: fine-tune from the shipped weights and export to ``out``."""
    model = load_detector(base)
    settings = det_train.DetTrainConfig(steps=steps, learning_rate=learning_rate,
                                        threshold_warmup_steps=min(50, steps // 4))
    adamw = paddle.optimizer.AdamW
    if optimizer == "sgd":  # finetune_det builds its optimizer for the shipped weights with AdamW
        paddle.optimizer.AdamW = _sgd
    started = time.perf_counter()
    try:
        log = det_train.finetune_det(model, RandomCrops(pages, 640, cfg.ocr.det, shrink_ratio=shrink_ratio), settings)
    finally:
        paddle.optimizer.AdamW = adamw
    det_train.export_det(model, base, out)
    losses = [step["loss"] for step in log.steps]
    return {"seconds": round(time.perf_counter() - started, 1), "loss_first_20": round(float(np.mean(losses[:20])), 3),
            "loss_last_20": round(float(np.mean(losses[-20:])), 3)}


def run(forms: int, validation: int, settings: list[str]) -> dict[str, Any]:
    """Every setting on the same train/validation forms."""
    cfg = PaperloopConfig()
    pairs = split_pairs("training")
    train, held = load_pages(pairs[:forms]), load_pages(pairs[-validation:])
    rows = []
    with tempfile.TemporaryDirectory(prefix="paperloop-bench-det-") as scratch:
        registry = ModelRegistry(Path(scratch) / "models")
        install_base_models(registry)
        base = registry.version_dir("det", "base")
        rows.append({"setting": "shipped", "validation": scores(cfg, base, held), "train": scores(cfg, base, train)})
        print(rows[-1], flush=True)
        for i, setting in enumerate(settings):
            optimizer, steps, learning_rate, *shrink = setting.split(":")
            ratio = float(shrink[0]) if shrink else det_train.SHRINK_RATIO
            out = Path(scratch) / f"ft-{i}"
            cost = fine_tune(cfg, base, train, optimizer, int(steps), float(learning_rate), ratio, out)
            rows.append({"setting": setting, "validation": scores(cfg, out, held), "train": scores(cfg, out, train),
                         **cost})
            print(rows[-1], flush=True)
    return {"date": utc_date(), "machine": machine_info(), "versions": versions(),
            "train_forms": forms, "validation_forms": validation, "rows": rows}


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page."""
    lines = ["| setting | validation P / R / Hmean | train pages P / R / Hmean | loss first→last 20 steps | s |",
             "|---|---|---|---|---|"]
    for row in report["rows"]:
        v, t = row["validation"], row["train"]
        loss = f"{row['loss_first_20']} → {row['loss_last_20']}" if "loss_first_20" in row else "—"
        lines.append(f"| {row['setting']} | {v['precision']} / {v['recall']} / **{v['hmean']}** | "
                     f"{t['precision']} / {t['recall']} / {t['hmean']} | {loss} | {row.get('seconds', '—')} |")
    return "\n".join([
        "# Detection weight fine-tuning on FUNSD (settings study)", "",
        f"Date: {report['date']}  ", f"Machine: {report['machine']}  ", f"Versions: {report['versions']}", "",
        f"{report['train_forms']} FUNSD training forms to train on, the last {report['validation_forms']} of the "
        "training split to validate on; gold line boxes; IoU 0.5; shipped post-processing.", "", *lines, "",
    ])


def main(argv: list[str] | None = None) -> int:
    """Run the study and write ``det_finetune.json`` and ``det_finetune.md``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forms", type=int, default=20)
    parser.add_argument("--validation", type=int, default=10)
    parser.add_argument("--settings", default="adam:30:5e-6,adam:30:5e-6:0.632,adam:100:5e-5,adam:100:5e-5:0.632,sgd:100:1e-3,"
                        "adam:100:2e-6:0.632,adam:100:5e-6:0.632,adam:200:5e-6:0.632,adam:100:1e-5:0.632")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench/results")
    args = parser.parse_args(argv)
    report = run(args.forms, args.validation, args.settings.split(","))
    write_results(args.out, "det_finetune", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
