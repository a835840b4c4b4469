"""Recognition fine-tuning on FUNSD: how many epochs, what rate, and which layers should the learning job train?

The learning job fine-tunes the rec weights for ``learning.rec_epochs`` at ``learning.rec_learning_rate``
(CTC, BatchNorm frozen, the backbone left alone unless ``train_backbone``), on the gold lines plus
synthetic lines. Those settings were taken from one run of ``bench/loop.py``; this benchmark is the
evidence for them. It fine-tunes the shipped PP-OCRv4 recognizer with each setting on the gold line
crops of one slice of FUNSD training forms and reads the line crops of a disjoint slice after every
epoch (the rate is constant, so the model after epoch n is the model an n-epoch run makes): line
accuracy (exact, spaces count) and character accuracy, as the learning job's gate measures them.

Both slices lie inside the forms ``bench/loop.py`` treats as reviewed documents; its frozen holdout
(the last 10 training forms) and the 50 test forms are never read. Differences to the learning job's
default are given with a paired bootstrap over the validation lines.

Usage, from the project root (one command writes ``bench/results/rec_finetune.{json,md}``, or ``NAME.*``)::

    nice -n 19 .venv/bin/python bench/rec_finetune.py [--train 0:40] [--validation 100:139]
        [--settings 1e-4:3:neck,3e-4:3:neck,...] [--quick] [--out DIR] [--name NAME]

A setting is ``learning_rate:epochs:layers`` with layers ``neck`` (neck and CTC head train, the
backbone is frozen: the job's default) or ``all``. ``--quick`` is a smoke run (2 + 2 forms, the
default setting and one epoch of ``all``) written to a temporary folder unless ``--out`` is given.
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

import numpy as np  # noqa: E402

from bench.common import machine_info, report_header, utc_date, versions, write_results  # noqa: E402
from bench.det_finetune import check_slices, interval_text, load_pages, parse_slice  # noqa: E402
from bench.loop import HOLDOUT_FORMS, TRAIN_FORMS  # noqa: E402
from service.base_models import install_base_models  # noqa: E402
from service.config import LearningConfig, PaperloopConfig  # noqa: E402
from service.evaluation import char_accuracy  # noqa: E402
from service.finetune.rec_model import load_rec_model  # noqa: E402
from service.finetune.rec_train import FinetuneSettings, LabelEncoder, RecSample, export_rec, finetune_rec, load_charset  # noqa: E402
from service.funsd import split_pairs  # noqa: E402
from service.ocr_learning.rec import page_line_samples, read_crops, training_mix  # noqa: E402
from service.registry import ModelRegistry  # noqa: E402

BOOTSTRAP_SAMPLES = 2000
LAYERS = ("neck", "all")


def default_setting(epochs: int | None = None) -> str:
    """The learning job's own setting (``LearningConfig`` defaults), in this script's notation."""
    learning = LearningConfig()
    return f"{learning.rec_learning_rate:g}:{epochs or learning.rec_epochs}:neck"


def default_grid() -> list[str]:
    """The default rate and layers, a 3x rate, and the backbone trained too; three epochs each."""
    rate = LearningConfig().rec_learning_rate
    return [f"{rate:g}:3:neck", f"{rate * 3:g}:3:neck", f"{rate:g}:3:all"]


def parse_setting(setting: str) -> tuple[float, int, str]:
    """(learning rate, epochs, layers) of ``rate:epochs:layers``."""
    try:
        rate, epochs, layers = setting.split(":")
        parsed = float(rate), int(epochs), layers
    except ValueError:
        raise SystemExit(f"bad setting {setting!r}: want learning_rate:epochs:layers") from None
    if layers not in LAYERS or parsed[1] < 1:
        raise SystemExit(f"bad setting {setting!r}: layers is one of {LAYERS}, epochs at least 1")
    return parsed


def line_scores(texts: Sequence[str], samples: Sequence[RecSample]) -> dict[str, list[float]]:
    """Per validation line: exact (1/0) and character accuracy."""
    return {"exact": [float(t == s.text) for t, s in zip(texts, samples)],
            "chars": [round(char_accuracy(s.text, t), 4) for t, s in zip(texts, samples)]}


def summary(scores: dict[str, list[float]]) -> dict[str, float]:
    """Line accuracy and mean character accuracy."""
    return {"line_accuracy": round(float(np.mean(scores["exact"])), 4),
            "char_accuracy": round(float(np.mean(scores["chars"])), 4)}


def paired_bootstrap(values: Sequence[float], reference: Sequence[float], samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = 0) -> dict[str, float]:
    """Mean difference ``values`` − ``reference`` over the same lines, and its 95 % bootstrap interval."""
    diff = np.asarray(values, dtype=float) - np.asarray(reference, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(diff), size=(samples, len(diff)))
    low, high = np.percentile(diff[picks].mean(axis=1), [2.5, 97.5])
    return {"delta": round(float(diff.mean()), 4), "low": round(float(low), 4), "high": round(float(high), 4)}


def evaluate(cfg: PaperloopConfig, model_dir: Path, samples: Sequence[RecSample]) -> dict[str, list[float]]:
    """Per-line scores of the exported model in ``model_dir``, read as the service reads."""
    return line_scores(read_crops(cfg, model_dir, samples), samples)


def fine_tune(cfg: PaperloopConfig, base: Path, train: list[RecSample], validation: Sequence[RecSample],
              setting: str, scratch: Path) -> dict[str, Any]:
    """One setting from the shipped weights; the validation lines read after every epoch."""
    rate, epochs, layers = parse_setting(setting)
    model = load_rec_model(base)
    epochs_read: list[dict[str, Any]] = []
    started = time.perf_counter()
    train_seconds = 0.0

    def after_epoch(epoch: int) -> None:
        nonlocal train_seconds
        train_seconds = time.perf_counter() - started - sum(e["eval_seconds"] for e in epochs_read)
        t0 = time.perf_counter()
        out = export_rec(model, base, scratch / f"{setting.replace(':', '_')}-e{epoch}")
        scores = evaluate(cfg, out, validation)
        epochs_read.append({"epoch": epoch, "train_seconds": round(train_seconds, 1), **summary(scores),
                            "scores": scores, "eval_seconds": round(time.perf_counter() - t0, 1)})
        print(setting, {k: v for k, v in epochs_read[-1].items() if k != "scores"}, flush=True)

    settings = FinetuneSettings(epochs=epochs, learning_rate=rate, train_backbone=layers == "all", seed=0)
    report = finetune_rec(model, train, LabelEncoder(load_charset(base)), settings, cfg.ocr.rec, on_epoch=after_epoch)
    losses = report.step_losses
    return {"setting": setting, "learning_rate": rate, "epochs": epochs, "layers": layers, "steps": report.steps,
            "loss_first_50": round(float(np.mean(losses[:50])), 3), "loss_last_50": round(float(np.mean(losses[-50:])), 3),
            "epochs_read": epochs_read}


def compare(rows: list[dict[str, Any]], reference: dict[str, list[float]]) -> None:
    """Add each epoch's paired difference to the default's reading (line accuracy, character accuracy)."""
    for row in rows:
        for epoch in row["epochs_read"]:
            epoch["vs_default"] = {"line_accuracy": paired_bootstrap(epoch["scores"]["exact"], reference["exact"]),
                                   "char_accuracy": paired_bootstrap(epoch["scores"]["chars"], reference["chars"])}


def run(train: tuple[int, int], validation: tuple[int, int], settings: list[str]) -> dict[str, Any]:
    """Every setting on the same slices; the shipped weights read first."""
    started = time.perf_counter()
    cfg = PaperloopConfig()
    pairs = split_pairs("training")
    train_pairs, held_pairs = pairs[slice(*train)], pairs[slice(*validation)]
    gold = [s for page in load_pages(train_pairs) for s in page_line_samples(page)]
    held = [s for page in load_pages(held_pairs) for s in page_line_samples(page)]
    mix = training_mix(cfg, gold)
    with tempfile.TemporaryDirectory(prefix="paperloop-bench-rec-") as scratch:
        registry = ModelRegistry(Path(scratch) / "models")
        install_base_models(registry)
        base = registry.version_dir("rec", "base")
        shipped_scores = evaluate(cfg, base, held)
        shipped = {"setting": "shipped", **summary(shipped_scores)}
        print(shipped, flush=True)
        rows = [fine_tune(cfg, base, mix, held, setting, Path(scratch)) for setting in settings]
    default_rate, default_epochs = LearningConfig().rec_learning_rate, LearningConfig().rec_epochs
    reference_row = next((r for r in rows if r["learning_rate"] == default_rate and r["layers"] == "neck"
                          and r["epochs"] >= default_epochs), None)
    if reference_row is not None:
        compare(rows, reference_row["epochs_read"][default_epochs - 1]["scores"])
    for row in rows:
        for epoch in row["epochs_read"]:
            epoch["vs_shipped"] = {"line_accuracy": paired_bootstrap(epoch["scores"]["exact"], shipped_scores["exact"])}
            del epoch["scores"]
    return {"date": utc_date(), "machine": machine_info(), "versions": versions(),
            "command": " ".join(["bench/rec_finetune.py", *sys.argv[1:]]),
            "train_slice": list(train), "validation_slice": list(validation),
            "train_forms": [image.stem for image, _ in train_pairs],
            "validation_forms": [image.stem for image, _ in held_pairs],
            "loop_holdout_slice": [TRAIN_FORMS, TRAIN_FORMS + HOLDOUT_FORMS],
            "gold_lines": len(gold), "synthetic_lines": len(mix) - len(gold), "validation_lines": len(held),
            "default_setting": default_setting(), "bootstrap_samples": BOOTSTRAP_SAMPLES,
            "wall_seconds": round(time.perf_counter() - started, 1), "shipped": shipped, "rows": rows}


def best_epoch(report: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(row, epoch reading) with the highest validation line accuracy."""
    return max(((row, epoch) for row in report["rows"] for epoch in row["epochs_read"]),
               key=lambda pair: (pair[1]["line_accuracy"], pair[1]["char_accuracy"]))


def reading(report: dict[str, Any]) -> str:
    """What the table says about the learning job's default, in words computed from the numbers."""
    row, epoch = best_epoch(report)
    name = f"{row['learning_rate']:g}:{epoch['epoch']}:{row['layers']}"
    text = (f"Best on the validation slice: {name} (rate {row['learning_rate']:g}, {epoch['epoch']} epoch(s), "
            f"layers {row['layers']}) with line accuracy {epoch['line_accuracy']} and character accuracy "
            f"{epoch['char_accuracy']} (shipped weights: {report['shipped']['line_accuracy']} / "
            f"{report['shipped']['char_accuracy']}).")
    d = epoch.get("vs_default")
    if d is None:
        return text + f" The learning job's default ({report['default_setting']}) was not in this grid."
    if name == report["default_setting"]:
        return text + " It is the learning job's default."
    clear = d["line_accuracy"]["low"] > 0
    return text + (f" Against the learning job's default ({report['default_setting']}): line accuracy "
                   f"{interval_text(d['line_accuracy'])}; " + ("the interval excludes 0, so it wins clearly on this slice."
                                                           if clear else "the interval includes 0: within noise."))


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page."""
    shipped = report["shipped"]
    lines = ["| setting | epoch | line accuracy | char accuracy | Δ line acc. vs default [95 %] | "
             "Δ char acc. vs default [95 %] | Δ line acc. vs shipped [95 %] | train s (cumulative) |",
             "|---|---|---|---|---|---|---|---|",
             f"| shipped weights | — | {shipped['line_accuracy']} | {shipped['char_accuracy']} | | | | |"]
    for row in report["rows"]:
        for epoch in row["epochs_read"]:
            name = f"{row['learning_rate']:g}:{epoch['epoch']}:{row['layers']}"
            mark = " (**learning default**)" if name == report["default_setting"] else ""
            d = epoch.get("vs_default", {})
            lines.append(f"| {name}{mark} | {epoch['epoch']} | **{epoch['line_accuracy']}** | {epoch['char_accuracy']} | "
                         f"{interval_text(d.get('line_accuracy'))} | {interval_text(d.get('char_accuracy'))} | "
                         f"{interval_text(epoch['vs_shipped']['line_accuracy'])} | {epoch['train_seconds']} |")
    train, held, holdout = report["train_slice"], report["validation_slice"], report["loop_holdout_slice"]
    return "\n".join([
        *report_header("Recognition fine-tuning on FUNSD (settings study)", report),
        f"Command: `.venv/bin/python {report['command']}`, {report['wall_seconds']} s in all "
        "(timings are indicative: shared 2-core machine)", "",
        "Slices of the FUNSD training split (149 forms sorted by name, 0-based, end excluded): "
        f"fine-tuned on forms {train[0]}:{train[1]} ({report['gold_lines']} gold lines + "
        f"{report['synthetic_lines']} synthetic), validated on forms {held[0]}:{held[1]} "
        f"({report['validation_lines']} gold line crops). Both lie inside the forms `bench/loop.py` uses as "
        f"reviewed documents; its frozen holdout (forms {holdout[0]}:{holdout[1]}) and the 50 test forms are "
        f"not read. Form names are in `{report.get('name', 'rec_finetune')}.json`.", "",
        "A setting is `learning_rate:epochs:layers` (`neck`: the backbone frozen, the job's default; `all`: the "
        "backbone trains too). Every setting starts from the shipped weights; each row is the model after that "
        "epoch of one run (constant rate, so it is the model an n-epoch run makes). Line accuracy: exact, spaces "
        f"count; character accuracy: 1 − normalized edit distance. Δ columns: paired bootstrap over the "
        f"validation lines ({report['bootstrap_samples']} resamples).", "",
        *lines, "", reading(report), "",
    ])


def main(argv: list[str] | None = None) -> int:
    """Run the study and write ``rec_finetune.json`` and ``rec_finetune.md``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=parse_slice, default=(0, 40), help="START:END of the training split to train on")
    parser.add_argument("--validation", type=parse_slice, default=(100, TRAIN_FORMS),
                        help="START:END of the training split to validate on (disjoint, below the loop's holdout)")
    parser.add_argument("--settings", default=",".join(default_grid()), help="comma-separated settings")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 + 2 forms, the default setting and one epoch of all, temporary output")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    parser.add_argument("--name", default="rec_finetune", help="results file name (NAME.json / NAME.md)")
    args = parser.parse_args(argv)
    if args.quick:
        args.train, args.validation, args.settings = (0, 2), (2, 4), f"{default_setting()},1e-4:1:all"
    out = args.out or (Path(tempfile.mkdtemp(prefix="paperloop-rec-quick-")) if args.quick
                       else PROJECT_ROOT / "bench/results")
    check_slices(args.train, args.validation)
    report = {**run(args.train, args.validation, args.settings.split(",")), "name": args.name}
    write_results(out, args.name, report, markdown(report))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
