"""Learning-loop benchmark: does the job make recognition better on FUNSD?

FUNSD training forms stand in for reviewed documents: their gold lines (entity words regrouped
into lines, texts with spaces) are the reviewers' corrections. Starting from the base models, the
learning job (``learning.tasks: [rec]``) fine-tunes recognition on them, gates the candidate on a
holdout slice of the training forms, and promotes it if it is better. The 50 FUNSD test forms are
read with the OCR pipeline before and after: detection P/R/Hmean, character accuracy and line
exact-match (spaces count) of matched lines.

Usage, from the project root::

    .venv/bin/python bench/loop.py [--forms N] [--holdout N] [--epochs N] [--out bench/results]

It prints ``line exact-match BEFORE -> AFTER`` (fractions) on a line of its own. Detection, SER and
RE are not fine-tuned by the job yet.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402

from bench.common import machine_info, utc_date, versions  # noqa: E402
from service.base_models import install_base_models  # noqa: E402
from service.config import PaperloopConfig  # noqa: E402
from service.evaluation import detection_scores, evaluate_page, recognition_over_pages  # noqa: E402
from service.formats import read_funsd  # noqa: E402
from service.funsd import load_gt_lines, split_pairs  # noqa: E402
from service.kie.data import split_into_lines  # noqa: E402
from service.labels import LabelStore  # noqa: E402
from service.learning import run_learning_job  # noqa: E402
from service.ocr import OcrEngine  # noqa: E402
from service.registry import ModelRegistry  # noqa: E402
from service.store import Store  # noqa: E402


def read_test_forms(cfg: PaperloopConfig, registry: ModelRegistry) -> dict[str, float]:
    """Det and rec figures of the rec/det versions in service on the 50 FUNSD test forms."""
    engine = OcrEngine(registry, cfg.ocr)
    pages = []
    for image, annotation in split_pairs("testing"):
        lines = engine.read_page(cv2.imread(str(image)))
        gt = load_gt_lines(annotation)
        pages.append(evaluate_page([l.points for l in lines], [l.text for l in lines],
                                   [g.box for g in gt], [g.text for g in gt]))
    det, rec = detection_scores(pages), recognition_over_pages(pages)
    return {"det_precision": det.precision, "det_recall": det.recall, "det_hmean": det.hmean,
            "char_accuracy": rec.char_accuracy, "line_exact_match": rec.exact_match, "matched_lines": rec.lines,
            "versions": dict(engine.versions)}


def run(forms: int, holdout: int, epochs: int) -> dict[str, Any]:
    """Base models → learning job on FUNSD training forms → before/after on the test forms."""
    with tempfile.TemporaryDirectory(prefix="paperloop-bench-loop-") as scratch:
        root = Path(scratch)
        cfg = PaperloopConfig.model_validate({
            "paths": {"root": str(root)},
            "learning": {"tasks": ["rec"], "min_new_documents": 1, "rec_epochs": epochs},
        })
        registry = ModelRegistry(cfg.paths.resolve("models"))
        install_base_models(registry)
        labels = LabelStore(Store(cfg.paths.database))
        pairs = split_pairs("training")
        for i, (image, annotation) in enumerate(pairs[: forms + holdout]):
            lines = split_into_lines(read_funsd(annotation, image))
            labels.put(lines, "funsd", "holdout" if i >= forms else "train")
        print("reading the test forms with the base models...", flush=True)
        before = read_test_forms(cfg, registry)
        print(f"running the learning job on {forms} forms ({epochs} epoch(s))...", flush=True)
        started = time.perf_counter()
        (job,) = run_learning_job(cfg)
        seconds = time.perf_counter() - started
        print(f"job: {job.status} — {job.reason}", flush=True)
        after = read_test_forms(cfg, registry)
        card = registry.card("rec", job.candidate).metrics if job.candidate else {}
    return {"date": utc_date(), "machine": machine_info(), "versions": versions(),
            "setting": {"train_forms": forms, "holdout_forms": holdout, "rec_epochs": epochs,
                        "learning_rate": cfg.learning.rec_learning_rate},
            "job": {"status": job.status, "reason": job.reason, "candidate": job.candidate,
                    "seconds": round(seconds, 1), "holdout": job.metrics, "card": card},
            "before": before, "after": after}


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page."""
    rows = ["| metric | before | after |", "|---|---|---|"]
    for key in ("det_precision", "det_recall", "det_hmean", "char_accuracy", "line_exact_match", "matched_lines"):
        fmt = "{:.0f}" if key == "matched_lines" else "{:.4f}"
        rows.append(f"| {key} | {fmt.format(report['before'][key])} | {fmt.format(report['after'][key])} |")
    job = report["job"]
    return "\n".join([
        "# Learning-loop benchmark (recognition, FUNSD)", "",
        f"Date: {report['date']}  ", f"Machine: {report['machine']}  ", f"Versions: {report['versions']}", "",
        f"Setting: {report['setting']}", "",
        f"Job: **{job['status']}** — {job['reason']} (candidate {job['candidate']}, {job['seconds']} s)", "",
        f"Holdout metrics: {job['holdout']}", "",
        "50 FUNSD test forms, OCR pipeline (det + rec), lines matched at IoU 0.5:", "", *rows, "",
        f"Versions before: {report['before']['versions']}, after: {report['after']['versions']}", "",
    ])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``loop.json`` and ``loop.md``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forms", type=int, default=139, help="training forms used as reviewed documents")
    parser.add_argument("--holdout", type=int, default=10, help="further training forms frozen as holdout")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench/results")
    args = parser.parse_args(argv)
    report = run(args.forms, args.holdout, args.epochs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loop.json").write_text(json.dumps(report, indent=2))
    (args.out / "loop.md").write_text(markdown(report))
    print(markdown(report))
    print(f"line exact-match {report['before']['line_exact_match']:.3f} -> {report['after']['line_exact_match']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
