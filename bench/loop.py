"""Learning-loop benchmark: does the job make det, rec, SER and RE better on FUNSD?

FUNSD training forms stand in for reviewed documents: their gold lines (entity words regrouped
into lines, texts with spaces), labels and links are the reviewers' corrections. Starting from the
base OCR models and no KIE models, one run of the learning job with the default settings
(``learning.tasks``: det, rec, SER, RE) fine-tunes detection and recognition, trains SER and RE,
gates every candidate on a holdout slice of the training forms, and promotes what is better.
The 50 FUNSD test forms are read before and after: detection P/R/Hmean, character accuracy and
line exact-match (spaces count) of matched lines, and SER / RE Hmean end to end (our OCR lines,
see :func:`service.kie.evaluation.evaluate_end_to_end`). SER and RE are also measured on the
base OCR, to show what the OCR fine-tuning buys downstream.

Usage, from the project root::

    .venv/bin/python bench/loop.py [--forms N] [--holdout N] [--tasks det,rec,ser,re] [--out bench/results]

It prints ``line exact-match BEFORE -> AFTER`` (fractions) on a line of its own.
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
from datetime import datetime  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402

from bench.common import machine_info, utc_date, versions, write_results  # noqa: E402
from bench.kie import end_to_end  # noqa: E402
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

# The FUNSD training split (149 forms, sorted by name) as the loop uses it by default: the first
# TRAIN_FORMS are the reviewed documents, the next HOLDOUT_FORMS (the last 10) the frozen holdout
# that gates every candidate. bench/det_finetune.py tunes det settings only inside the first slice.
TRAIN_FORMS = 139
HOLDOUT_FORMS = 10


def read_test_forms(cfg: PaperloopConfig, registry: ModelRegistry) -> dict[str, Any]:
    """Det and rec figures of the det/rec versions in service on the 50 FUNSD test forms."""
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


def kie_end_to_end(cfg: PaperloopConfig, registry: ModelRegistry, scratch: Path) -> dict[str, float] | None:
    """SER and RE Hmean end to end on the test forms with the versions in service (None without SER)."""
    if registry.current_version("ser") is None:
        return None
    pairs = split_pairs("testing")
    gold = [read_funsd(annotation, image) for image, annotation in pairs]
    scores, seconds = end_to_end(registry.root, [image for image, _ in pairs], gold, cfg.kie, scratch)
    return {"ser_hmean": scores["ser"]["hmean"], "re_hmean": scores["re"]["hmean"],
            "seconds_per_page": round(seconds, 3)}


def kie_on_base_ocr(cfg: PaperloopConfig, registry: ModelRegistry, scratch: Path) -> dict[str, float] | None:
    """The same with det and rec switched back to ``base`` for the measurement (then restored)."""
    promoted = {task: registry.current_version(task) for task in ("det", "rec")}
    try:
        for task in promoted:
            registry.set_current(task, "base", reason="bench: KIE measured on the base OCR", actor="bench/loop.py")
        return kie_end_to_end(cfg, registry, scratch)
    finally:
        for task, version in promoted.items():
            registry.set_current(task, version, reason="bench: restored after the base-OCR measurement",
                                 actor="bench/loop.py")


def task_seconds(store: Store) -> dict[str, float]:
    """Wall time of each task of the job (training and both holdout evaluations)."""
    with store.transaction() as db:
        rows = db.execute("SELECT task, started_at, finished_at FROM learning_runs").fetchall()
    return {task: round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 1)
            for task, start, end in rows}


def run(forms: int, holdout: int, tasks: list[str]) -> dict[str, Any]:
    """Base models → learning job on FUNSD training forms → before/after on the test forms."""
    with tempfile.TemporaryDirectory(prefix="paperloop-bench-loop-") as scratch:
        root = Path(scratch)
        cfg = PaperloopConfig.model_validate({
            "paths": {"root": str(root)}, "learning": {"tasks": tasks, "min_new_documents": 1},
        })
        registry = ModelRegistry(cfg.paths.resolve("models"))
        install_base_models(registry)
        store = Store(cfg.paths.database)
        labels = LabelStore(store)
        for i, (image, annotation) in enumerate(split_pairs("training")[: forms + holdout]):
            lines = split_into_lines(read_funsd(annotation, image))
            labels.put(lines, "funsd", "holdout" if i >= forms else "train")
        print("reading the test forms with the base models...", flush=True)
        before = read_test_forms(cfg, registry)
        print(f"running the learning job on {forms} forms ({', '.join(tasks)})...", flush=True)
        started = time.perf_counter()
        runs = run_learning_job(cfg)
        seconds = time.perf_counter() - started
        for job in runs:
            print(f"{job.task}: {job.status} — {job.reason}", flush=True)
        print("reading the test forms again...", flush=True)
        after = read_test_forms(cfg, registry)
        after["kie"] = kie_end_to_end(cfg, registry, root / "e2e")
        after["kie_on_base_ocr"] = kie_on_base_ocr(cfg, registry, root / "e2e-base")
        per_task = task_seconds(store)
        jobs = {job.task: {"status": job.status, "reason": job.reason, "candidate": job.candidate,
                           "seconds": per_task.get(job.task), "holdout": job.metrics,
                           "card": registry.card(job.task, job.candidate).metrics if job.candidate else {},
                           "data": registry.card(job.task, job.candidate).data_counts if job.candidate else {}}
                for job in runs}
    learning = cfg.learning
    return {"date": utc_date(), "machine": machine_info(), "versions": versions(),
            "setting": {"train_forms": forms, "holdout_forms": holdout, "tasks": tasks,
                        "det_steps": learning.det_steps, "det_learning_rate": learning.det_learning_rate,
                        "rec_epochs": learning.rec_epochs, "rec_learning_rate": learning.rec_learning_rate,
                        "rec_synthetic_ratio": learning.rec_synthetic_ratio},
            "job_seconds": round(seconds, 1), "jobs": jobs, "before": before, "after": after}


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page."""
    before, after = report["before"], report["after"]
    rows = ["| metric | before (base det/rec, no SER/RE) | after the job |", "|---|---|---|"]
    for key in ("det_precision", "det_recall", "det_hmean", "char_accuracy", "line_exact_match", "matched_lines"):
        rows.append(f"| {key} | {_fmt(before[key])} | {_fmt(after[key])} |")
    for key in ("ser_hmean", "re_hmean"):
        base = (after["kie_on_base_ocr"] or {}).get(key)
        rows.append(f"| {key} end to end | — (no model) | {_fmt((after['kie'] or {}).get(key))} "
                    f"(on base det/rec: {_fmt(base)}) |")
    jobs = ["| task | decision | wall time (s) | holdout: candidate | holdout: in service | data |", "|---|---|---|---|---|---|"]
    for task, job in report["jobs"].items():
        holdout = job["holdout"] or {}
        short = {k: {m: round(v, 4) for m, v in list(d.items())[:3]} for k, d in holdout.items() if d}
        jobs.append(f"| {task} | **{job['status']}**: {job['reason']} | {job['seconds']} | "
                    f"{short.get('candidate', '—')} | {short.get('in_service', '—')} | {job['data']} |")
    return "\n".join([
        "# Learning-loop benchmark (FUNSD)", "",
        f"Date: {report['date']}  ", f"Machine: {report['machine']}  ", f"Versions: {report['versions']}", "",
        f"Setting: {report['setting']}", "",
        f"The job, {report['job_seconds']} s in all:", "", *jobs, "",
        "50 FUNSD test forms, OCR pipeline, lines matched at IoU 0.5:", "", *rows, "",
        f"Versions before: {before['versions']}, after: {after['versions']}", "",
    ])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``loop.json`` and ``loop.md``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forms", type=int, default=TRAIN_FORMS, help="training forms used as reviewed documents")
    parser.add_argument("--holdout", type=int, default=HOLDOUT_FORMS, help="further training forms frozen as holdout")
    parser.add_argument("--tasks", default="det,rec,ser,re", help="comma-separated learning tasks")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench/results")
    args = parser.parse_args(argv)
    report = run(args.forms, args.holdout, args.tasks.split(","))
    write_results(args.out, "loop", report, markdown(report))
    print(f"line exact-match {report['before']['line_exact_match']:.3f} -> {report['after']['line_exact_match']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
