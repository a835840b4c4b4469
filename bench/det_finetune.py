"""Detection weight fine-tuning on FUNSD: which setting should the learning job use?

The learning job fine-tunes the det weights (``learning.det_steps`` at ``learning.det_learning_rate``,
DB targets shrunk by the ratio that the inference unclip grows back to the gold box) and then
calibrates the post-processing. This benchmark is the evidence for those settings: it fine-tunes
the shipped PP-OCRv4 detector (DB loss, BatchNorm frozen, random 640 px crops around gold boxes)
with each setting of a small grid on one slice of FUNSD training forms, and measures P/R/Hmean
(IoU 0.5, shipped post-processing) on a disjoint validation slice of training forms, and on the
training pages themselves (can it even fit the pages it was trained on?).

Both slices lie inside the forms that ``bench/loop.py`` treats as reviewed documents: the loop's
frozen holdout (the last 10 training forms, which gate its det promotion) and the 50 test forms are
never read here, so choosing settings with this study does not bias the loop's gate. The script
refuses slices that would touch that holdout.

Every setting is fine-tuned with two seeds by default (crop positions and sample order), and
differences are given with a paired bootstrap over the validation pages (95 % interval of the
Hmean difference to the learning job's default setting): the ten validation forms of the first
study were few to tell settings apart.

Usage, from the project root (one command writes ``bench/results/det_finetune.{json,md}``)::

    nice -n 19 .venv/bin/python bench/det_finetune.py [--train 0:20] [--validation 20:139] [--seeds 2]
        [--settings adam:100:5e-6:matched,...] [--quick] [--out DIR]

A setting is ``optimizer:steps:learning_rate[:shrink]`` with optimizer ``adam`` (AdamW, as the job
uses) or ``sgd`` (momentum 0.9), and shrink ``db`` (DB's own 0.4, the default), ``matched``
(1/√(1 + unclip) = 0.632 for the shipped unclip 1.5, as the job uses) or a number. ``--quick`` is
a smoke run (3 + 3 forms, 5 steps) written to a temporary folder unless ``--out`` is given.
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

from bench.common import machine_info, report_header, utc_date, versions, write_results  # noqa: E402
from bench.loop import HOLDOUT_FORMS, TRAIN_FORMS  # noqa: E402
from service.base_models import install_base_models  # noqa: E402
from service.config import SHIPPED_DET_POSTPROCESS, LearningConfig, PaperloopConfig  # noqa: E402
from service.evaluation import DetectionCounts  # noqa: E402
from service.finetune import det_train  # noqa: E402
from service.finetune.det_model import load_detector  # noqa: E402
from service.formats import read_funsd  # noqa: E402
from service.funsd import split_pairs  # noqa: E402
from service.kie.data import split_into_lines  # noqa: E402
from service.ocr_learning.det import RandomCrops, detection_counts, page_detector  # noqa: E402
from service.ocr_learning.pages import GoldPage  # noqa: E402
from service.registry import ModelRegistry  # noqa: E402

MATCHED_SHRINK = det_train.matched_shrink_ratio(SHIPPED_DET_POSTPROCESS["unclip_ratio"])
BOOTSTRAP_SAMPLES = 2000


def _rate(value: float) -> str:
    return f"{value:g}"


def default_setting() -> str:
    """The learning job's own setting (``LearningConfig`` defaults), in this script's notation."""
    learning = LearningConfig()
    return f"adam:{learning.det_steps}:{_rate(learning.det_learning_rate)}:matched"


def default_grid() -> list[str]:
    """DB's own shrink at the default rate, and the matched shrink at three rates (default in the middle)."""
    learning = LearningConfig()
    steps, rate = learning.det_steps, learning.det_learning_rate
    return [f"adam:{steps}:{_rate(rate)}:db", f"adam:{steps}:{_rate(rate * 0.4)}:matched", default_setting(),
            f"adam:{steps}:{_rate(rate * 2)}:matched"]


def parse_slice(text: str) -> tuple[int, int]:
    """``START:END`` (0-based, END excluded) of the FUNSD training split."""
    start, end = (int(part) for part in text.split(":"))
    if not 0 <= start < end:
        raise argparse.ArgumentTypeError(f"bad slice {text!r}: want START:END with 0 <= START < END")
    return start, end


def check_slices(train: tuple[int, int], validation: tuple[int, int]) -> None:
    """Refuse slices that overlap each other or reach the loop's holdout (or beyond)."""
    for name, (start, end) in (("train", train), ("validation", validation)):
        if end > TRAIN_FORMS:
            raise SystemExit(f"--{name} {start}:{end} reaches bench/loop.py's holdout (training forms "
                             f"{TRAIN_FORMS}:{TRAIN_FORMS + HOLDOUT_FORMS}); stay below {TRAIN_FORMS}")
    if train[0] < validation[1] and validation[0] < train[1]:
        raise SystemExit(f"--train {train[0]}:{train[1]} and --validation {validation[0]}:{validation[1]} overlap")


def parse_setting(setting: str) -> tuple[str, int, float, float]:
    """(optimizer, steps, learning rate, shrink ratio) of ``optimizer:steps:rate[:shrink]``."""
    optimizer, steps, learning_rate, *shrink = setting.split(":")
    if optimizer not in ("adam", "sgd"):
        raise SystemExit(f"unknown optimizer {optimizer!r} in {setting!r}")
    name = shrink[0] if shrink else "db"
    ratio = {"db": det_train.SHRINK_RATIO, "matched": MATCHED_SHRINK}.get(name)
    return optimizer, int(steps), float(learning_rate), float(name) if ratio is None else ratio


def load_pages(pairs: Sequence[tuple[Path, Path]]) -> list[GoldPage]:
    """FUNSD forms as gold pages of line boxes."""
    return [GoldPage(cv2.imread(str(image)), split_into_lines(read_funsd(annotation, image)).pages[0].segments)
            for image, annotation in pairs]


def page_counts(cfg: PaperloopConfig, model_dir: Path, pages: Sequence[GoldPage]) -> list[list[int]]:
    """[matched, predicted, ground truth] of each page, shipped post-processing, IoU 0.5."""
    detector = page_detector(cfg, model_dir, {})
    counts = []
    for page in pages:
        c = detection_counts([detector.probability_map(page.image)], [page], detector.config)
        counts.append([c.matched, c.predicted, c.ground_truth])
    return counts


def summary(counts: Sequence[Sequence[int]]) -> dict[str, float]:
    """Micro-averaged Hmean, precision and recall of per-page counts."""
    total = DetectionCounts(*(int(v) for v in np.asarray(counts).sum(axis=0)))
    return {"hmean": round(total.hmean, 4), "precision": round(total.precision, 4), "recall": round(total.recall, 4)}


def _hmeans(counts: np.ndarray) -> np.ndarray:
    """Hmean 2m / (p + g) of summed counts, along the last-but-one axis."""
    matched, predicted, gold = np.moveaxis(counts.sum(axis=-2), -1, 0)
    return np.where(predicted + gold > 0, 2 * matched / np.maximum(predicted + gold, 1), 0.0)


def paired_bootstrap(counts: Sequence[Sequence[int]], reference: Sequence[Sequence[int]],
                     samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict[str, float]:
    """Hmean difference ``counts`` − ``reference`` on the same pages, and its 95 % bootstrap interval."""
    a, b = np.asarray(counts, dtype=float), np.asarray(reference, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(a), size=(samples, len(a)))
    diffs = _hmeans(a[picks]) - _hmeans(b[picks])
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"delta": round(float(_hmeans(a) - _hmeans(b)), 4), "low": round(float(low), 4),
            "high": round(float(high), 4)}


def _sgd(learning_rate: float, parameters: Any, weight_decay: float = 0.0, grad_clip: Any = None) -> Any:
    return paddle.optimizer.Momentum(learning_rate, momentum=0.9, parameters=parameters, grad_clip=grad_clip)


def fine_tune(cfg: PaperloopConfig, base: Path, pages: Sequence[GoldPage], optimizer: str, steps: int,
              learning_rate: float, shrink_ratio: float, seed: int, out: Path) -> dict[str, Any]:
    """One setting and seed (crop positions and sample order): fine-tune from the shipped weights, export to ``out``."""
    model = load_detector(base)
    settings = det_train.DetTrainConfig(steps=steps, learning_rate=learning_rate,
                                        threshold_warmup_steps=min(50, steps // 4), seed=seed)
    adamw = paddle.optimizer.AdamW
    if optimizer == "sgd":  # finetune_det builds its optimizer for the shipped weights with AdamW
        paddle.optimizer.AdamW = _sgd
    started = time.perf_counter()
    try:
        crops = RandomCrops(pages, 640, cfg.ocr.det, seed=seed, shrink_ratio=shrink_ratio)
        log = det_train.finetune_det(model, crops, settings)
    finally:
        paddle.optimizer.AdamW = adamw
    det_train.export_det(model, base, out)
    losses = [step["loss"] for step in log.steps]
    return {"seconds": round(time.perf_counter() - started, 1), "loss_first_20": round(float(np.mean(losses[:20])), 3),
            "loss_last_20": round(float(np.mean(losses[-20:])), 3)}


def run(train: tuple[int, int], validation: tuple[int, int], settings: list[str], seeds: int) -> dict[str, Any]:
    """Every setting, with each seed, on the same train/validation slices of the FUNSD training split.

    A setting's page counts are summed over its seeds, so its P/R/Hmean pool the seeds' detections.
    """
    started = time.perf_counter()
    cfg = PaperloopConfig()
    pairs = split_pairs("training")
    train_pairs, held_pairs = pairs[slice(*train)], pairs[slice(*validation)]
    train_pages, held = load_pages(train_pairs), load_pages(held_pairs)
    rows = []
    with tempfile.TemporaryDirectory(prefix="paperloop-bench-det-") as scratch:
        registry = ModelRegistry(Path(scratch) / "models")
        install_base_models(registry)
        base = registry.version_dir("det", "base")
        rows.append({"setting": "shipped", "validation_pages": page_counts(cfg, base, held),
                     "train_pages": page_counts(cfg, base, train_pages)})
        for setting in settings:
            optimizer, steps, learning_rate, ratio = parse_setting(setting)
            row: dict[str, Any] = {"setting": setting, "optimizer": optimizer, "steps": steps,
                                   "learning_rate": learning_rate, "shrink_ratio": round(ratio, 4), "seeds": []}
            for seed in range(seeds):
                model_dir = Path(scratch) / f"ft-{len(rows)}-{seed}"
                run_ = {"seed": seed, **fine_tune(cfg, base, train_pages, optimizer, steps, learning_rate, ratio,
                                                  seed, model_dir)}
                run_["validation_pages"] = page_counts(cfg, model_dir, held)
                run_["train_pages"] = page_counts(cfg, model_dir, train_pages)
                run_["validation"], run_["train"] = summary(run_["validation_pages"]), summary(run_["train_pages"])
                print(setting, {k: v for k, v in run_.items() if not k.endswith("_pages")}, flush=True)
                row["seeds"].append(run_)
            for key in ("validation_pages", "train_pages"):
                row[key] = np.sum([run_[key] for run_ in row["seeds"]], axis=0).tolist()
            row["seconds"] = round(float(np.mean([run_["seconds"] for run_ in row["seeds"]])), 1)
            row["loss_first_20"] = round(float(np.mean([run_["loss_first_20"] for run_ in row["seeds"]])), 3)
            row["loss_last_20"] = round(float(np.mean([run_["loss_last_20"] for run_ in row["seeds"]])), 3)
            rows.append(row)
        for row in rows:
            row["validation"], row["train"] = summary(row["validation_pages"]), summary(row["train_pages"])
        print({k: v for k, v in rows[0].items() if not k.endswith("_pages")}, flush=True)
    default = default_setting()
    reference = next((row for row in rows if row["setting"] == default), None)
    for row in rows:
        if reference is not None:
            row["vs_default"] = paired_bootstrap(row["validation_pages"], reference["validation_pages"])
        row["vs_shipped"] = paired_bootstrap(row["validation_pages"], rows[0]["validation_pages"])
    return {"date": utc_date(), "machine": machine_info(), "versions": versions(),
            "command": " ".join(["bench/det_finetune.py", *sys.argv[1:]]),
            "train_slice": list(train), "validation_slice": list(validation),
            "train_forms": [image.stem for image, _ in train_pairs],
            "validation_forms": [image.stem for image, _ in held_pairs],
            "loop_holdout_slice": [TRAIN_FORMS, TRAIN_FORMS + HOLDOUT_FORMS],
            "loop_holdout_forms": [image.stem for image, _ in pairs[TRAIN_FORMS:TRAIN_FORMS + HOLDOUT_FORMS]],
            "matched_shrink_ratio": round(MATCHED_SHRINK, 4), "default_setting": default, "seeds": seeds,
            "bootstrap_samples": BOOTSTRAP_SAMPLES, "wall_seconds": round(time.perf_counter() - started, 1),
            "rows": rows}


def interval_text(d: dict[str, float] | None) -> str:
    """A paired difference as ``+0.0123 [+0.0010, +0.0250]`` (— when there is none)."""
    return "—" if d is None else f"{d['delta']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def _verdict(d: dict[str, float], better: str, worse: str) -> str:
    if d["low"] > 0:
        return f"the interval excludes 0, {better}"
    if d["high"] < 0:
        return f"the interval excludes 0, {worse}"
    return "the interval includes 0, no clear difference"


def reading(report: dict[str, Any]) -> list[str]:
    """What the table says about the learning job's default, in words computed from the numbers."""
    rows, default = report["rows"], report["default_setting"]
    reference = next((row for row in rows if row["setting"] == default), None)
    if reference is None:
        return [f"The learning job's default ({default}) was not in this grid."]
    best = max(rows, key=lambda row: row["validation"]["hmean"])
    shipped = rows[0]
    lines = [f"The learning job's default ({default}, i.e. `learning.det_steps` / `det_learning_rate` with the "
             f"matched shrink {report['matched_shrink_ratio']}): validation Hmean {reference['validation']['hmean']} "
             f"against {shipped['validation']['hmean']} for the shipped weights "
             f"(difference {interval_text(reference['vs_shipped'])}: "
             + _verdict(reference["vs_shipped"], "fine-tuning with it helps", "fine-tuning with it hurts") + ")."]
    if best is reference:
        lines.append("It is the best setting of the grid on the validation slice.")
    else:
        d = best["vs_default"]
        clear = d["low"] > 0
        name = "the shipped weights (no fine-tuning)" if best is shipped else best["setting"]
        lines.append(f"Best on the validation slice: {name} with Hmean {best['validation']['hmean']}, "
                     f"{interval_text(d)} against the default; "
                     + ("the interval excludes 0, so it wins clearly on this slice."
                        if clear else "the interval includes 0, so the default is within noise of the best."))
    return [" ".join(lines)]


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page."""
    default = report["default_setting"]
    lines = ["| setting | validation P / R / Hmean | Hmean per seed | Δ Hmean vs default [95 %] | "
             "Δ Hmean vs shipped [95 %] | train pages P / R / Hmean | loss first→last 20 steps | s per run |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        v, t = row["validation"], row["train"]
        loss = f"{row['loss_first_20']} → {row['loss_last_20']}" if "loss_first_20" in row else "—"
        name = row["setting"] + (" (shipped weights, no fine-tuning)" if row["setting"] == "shipped" else "")
        name += " (**learning default**)" if row["setting"] == default else ""
        per_seed = " / ".join(str(run_["validation"]["hmean"]) for run_ in row.get("seeds", [])) or "—"
        lines.append(f"| {name} | {v['precision']} / {v['recall']} / **{v['hmean']}** | {per_seed} | "
                     f"{interval_text(row.get('vs_default'))} | {interval_text(row.get('vs_shipped'))} | "
                     f"{t['precision']} / {t['recall']} / {t['hmean']} | {loss} | {row.get('seconds', '—')} |")
    train, held, holdout = report["train_slice"], report["validation_slice"], report["loop_holdout_slice"]
    return "\n".join([
        *report_header("Detection weight fine-tuning on FUNSD (settings study)", report),
        f"Command: `nice -n 19 .venv/bin/python {report['command']}`, {report['wall_seconds']} s in all "
        "(at low priority on shared cores: timings are indicative)", "",
        "Slices of the FUNSD training split (149 forms sorted by name, 0-based, end excluded): "
        f"fine-tuned on forms {train[0]}:{train[1]} ({train[1] - train[0]} forms), validated on forms "
        f"{held[0]}:{held[1]} ({held[1] - held[0]} forms). Both lie inside the forms that `bench/loop.py` uses "
        f"as reviewed documents; its frozen holdout (forms {holdout[0]}:{holdout[1]}, which gates the det "
        "promotion) and the 50 test forms are not read. Form names are in `det_finetune.json`.", "",
        "Gold line boxes; IoU 0.5; shipped post-processing (the learning job calibrates it afterwards, "
        "this study does not). Settings are `optimizer:steps:learning_rate:shrink`, shrink `db` = DB's own "
        f"0.4, `matched` = {report['matched_shrink_ratio']} (kernels the shipped unclip 1.5 grows back to "
        "the gold box). Δ columns: Hmean difference on the validation pages with a 95 % paired bootstrap "
        f"interval over those pages ({report['bootstrap_samples']} resamples). Each setting is fine-tuned "
        f"with {report['seeds']} seed(s) (crop positions and sample order); its P/R/Hmean and Δ pool the "
        "detections of its seeds (counts summed page by page), and the seeds' own validation Hmeans are listed.", "",
        *lines, "", *reading(report), "",
    ])


def main(argv: list[str] | None = None) -> int:
    """Run the study and write ``det_finetune.json`` and ``det_finetune.md``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=parse_slice, default=(0, 20),
                        help="START:END of the training split to fine-tune on")
    parser.add_argument("--validation", type=parse_slice, default=(20, TRAIN_FORMS),
                        help="START:END of the training split to validate on (disjoint, below the loop's holdout)")
    parser.add_argument("--settings", default=",".join(default_grid()), help="comma-separated settings")
    parser.add_argument("--seeds", type=int, default=2, help="fine-tuning runs per setting (seeds 0, 1, ...)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 + 3 forms, 5 steps, temporary output")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    if args.quick:
        args.train, args.validation, args.settings = (0, 3), (3, 6), "adam:5:5e-6:matched,adam:5:5e-6:db"
    out = args.out or (Path(tempfile.mkdtemp(prefix="paperloop-det-quick-")) if args.quick
                       else PROJECT_ROOT / "bench/results")
    check_slices(args.train, args.validation)
    report = run(args.train, args.validation, args.settings.split(","), args.seeds)
    write_results(out, "det_finetune", report, markdown(report))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
