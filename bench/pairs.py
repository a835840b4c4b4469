"""Key–value pairs end to end (issue 11): FUNSD test forms from their images, judged as a reader would.

FUNSD training forms stand in for reviewed documents, imported as the entities they are (words,
labels, links). One run of the learning job — the same code as the scheduled one, with
``--tasks`` (default: every task: det, rec, group, ser, re) — trains from the base OCR models.
Then each of the 50 test images is processed by the service's own pipeline
(:class:`service.pipeline.DocumentPipeline`), and the JSON's key–value pairs are compared with the
gold pairs (:mod:`service.kie.pairs`): strict (texts equal after case and whitespace folding) and
lenient (both texts within normalized edit distance 0.2, spaces ignored), all links and only
question → answer ones. To show what is left to the OCR and what to the models, the same models
are also run on the ground-truth lines (gold words and texts, grouping + SER + RE) and on the gold
entities (SER + RE). Entity grouping is scored end to end (box IoU ≥ 0.5 and text, and boxes only).

Usage, from the project root::

    .venv/bin/python bench/pairs.py [--tasks det,rec,group,ser,re] [--forms 139] [--holdout 10] [--epochs N]

It writes ``bench/results/pairs.{json,md}`` and prints
``pair F1 end to end: STRICT (strict), LENIENT (lenient)``.
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
from typing import Any  # noqa: E402

from bench.common import machine_info, utc_date, versions, write_results  # noqa: E402
from service.base_models import install_base_models  # noqa: E402
from service.config import PaperloopConfig  # noqa: E402
from service.document import Document  # noqa: E402
from service.formats import read_funsd  # noqa: E402
from service.funsd import split_pairs  # noqa: E402
from service.kie.data import split_into_lines  # noqa: E402
from service.kie.evaluation import unlabelled_copy  # noqa: E402
from service.kie.pairs import PairCounts, document_pairs, entity_counts, pair_counts  # noqa: E402
from service.labels import LabelStore  # noqa: E402
from service.learning import run_learning_job  # noqa: E402
from service.pipeline import DocumentPipeline  # noqa: E402
from service.registry import ModelRegistry  # noqa: E402
from service.store import Store  # noqa: E402
from service.tasks import Prediction, all_tasks  # noqa: E402

TRAIN_FORMS = 139  # as bench/loop.py: the first 139 training forms are reviewed, the last 10 the holdout
HOLDOUT_FORMS = 10
SETTINGS = ("all links", "question → answer")
DEV_FORMS = 30  # --dev: evaluated on this many training forms after the trained and holdout ones


def score_documents(predicted: list[Document], gold: list[Document]) -> dict[str, Any]:
    """Pair counts (strict, lenient; all links and question → answer) and entity counts."""
    result: dict[str, Any] = {}
    for setting, labels in zip(SETTINGS, ((None, None), ("question", "answer"))):
        for mode in ("strict", "lenient"):
            total = PairCounts()
            for p, g in zip(predicted, gold):
                total.add(pair_counts(document_pairs(p, *labels), document_pairs(g, *labels), mode == "lenient"))
            result[f"{setting} / {mode}"] = total.as_dict()
    for name, with_text in (("entities (box + text)", True), ("entities (box)", False)):
        total = PairCounts()
        for p, g in zip(predicted, gold):
            total.add(entity_counts(p, g, with_text=with_text))
        result[name] = total.as_dict()
    return result


def run_document_stages(pipeline: DocumentPipeline, document: Document, skip: tuple[str, ...] = ()) -> Document:
    """The document-level stages in service (grouping, SER, RE, less ``skip``) on a document with text."""
    versions = pipeline.models.refresh()
    prediction = Prediction(document, versions)
    for task in all_tasks():
        if task.level == "document" and task.name not in skip:
            task.predict(pipeline.models, prediction)
    document.model_versions.update(versions)
    return document


def from_gold_lines(gold: Document) -> Document:
    """The gold document as OCR lines would come: lines of gold words and texts, no labels or links."""
    lines = unlabelled_copy(split_into_lines(gold))
    for segment in lines.segments:
        segment.det_score = segment.rec_score = 1.0
    return lines


def from_gold_entities(gold: Document) -> Document:
    """The gold entities without labels or links (grouping is skipped: they are entities already)."""
    return unlabelled_copy(gold)


def measure(cfg: PaperloopConfig, pairs: list[tuple[Path, Path]]) -> dict[str, Any]:
    """Process the evaluation forms (image, annotation) three ways with the models in service and score each."""
    pipeline = DocumentPipeline(cfg)
    gold = [read_funsd(annotation, image) for image, annotation in pairs]
    started = time.perf_counter()
    from_images = [pipeline.process_file(image, f"test-{k:03d}", "-", image.name) for k, (image, _) in enumerate(pairs)]
    seconds = (time.perf_counter() - started) / max(len(pairs), 1)
    without_grouping = [pipeline.process_file(image, f"lines-{k:03d}", "-", image.name, skip=("group",))
                        for k, (image, _) in enumerate(pairs)]
    lines = [run_document_stages(pipeline, from_gold_lines(g)) for g in gold]
    entities = [run_document_stages(pipeline, from_gold_entities(g), skip=("group",)) for g in gold]
    return {"images": score_documents(from_images, gold),
            "images_without_grouping": score_documents(without_grouping, gold), "gold_lines": score_documents(lines, gold),
            "gold_entities": score_documents(entities, gold), "seconds_per_page": round(seconds, 3),
            "model_versions": from_images[0].model_versions if from_images else {},
            "examples": [p for d in from_images[:2] for p in d.key_values()[:8]]}


def run(forms: int, holdout: int, tasks: list[str], epochs: int | None, dev: bool = False) -> dict[str, Any]:
    """Base models → learning job on FUNSD training entities → pairs on the test forms.

    ``dev``: evaluate on the training forms after ``forms + holdout`` instead (for choosing settings
    without looking at the test forms)."""
    training = split_pairs("training")
    evaluation = training[forms + holdout:][:DEV_FORMS] if dev else split_pairs("testing")
    with tempfile.TemporaryDirectory(prefix="paperloop-bench-pairs-") as scratch:
        root = Path(scratch)
        overrides: dict[str, Any] = {"epochs": epochs} if epochs else {}
        cfg = PaperloopConfig.model_validate({
            "paths": {"root": str(root)}, "learning": {"tasks": tasks, "min_new_documents": 1},
            "kie": {"training": overrides}})
        registry = ModelRegistry(cfg.paths.resolve("models"))
        install_base_models(registry)
        labels = LabelStore(Store(cfg.paths.database))
        for i, (image, annotation) in enumerate(training[: forms + holdout]):
            labels.put(read_funsd(annotation, image), "funsd", "holdout" if i >= forms else "train")
        print(f"running the learning job on {forms} forms ({', '.join(tasks)})...", flush=True)
        started = time.perf_counter()
        runs = run_learning_job(cfg)
        job_seconds = time.perf_counter() - started
        for job in runs:
            print(f"{job.task}: {job.status} — {job.reason}", flush=True)
        print("processing the test forms...", flush=True)
        scores = measure(cfg, evaluation)
        jobs = {job.task: {"status": job.status, "reason": job.reason, "holdout": job.metrics,
                           "card": registry.card(job.task, job.candidate).metrics if job.candidate else {},
                           "data": registry.card(job.task, job.candidate).data_counts if job.candidate else {}}
                for job in runs}
    return {"date": utc_date(), "machine": machine_info(), "versions": versions(),
            "setting": {"train_forms": forms, "holdout_forms": holdout, "tasks": tasks,
                        "evaluated_on": f"{len(evaluation)} " + ("training forms after those (dev)" if dev else "test forms"),
                        "kie_training": cfg.kie.training.model_dump()},
            "job_seconds": round(job_seconds, 1), "jobs": jobs, **scores}


def _row(name: str, figures: dict[str, Any]) -> str:
    return (f"| {name} | {figures['precision']:.4f} | {figures['recall']:.4f} | **{figures['f1']:.4f}** | "
            f"{figures['hits']} / {figures['predicted']} / {figures['gold']} |")


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page."""
    header = ["| input | precision | recall | F1 | hits / predicted / gold |", "|---|---|---|---|---|"]
    sections = []
    for key in [f"{s} / {m}" for s in SETTINGS for m in ("strict", "lenient")] + ["entities (box + text)", "entities (box)"]:
        rows = [_row(name, report[source][key]) for name, source in
                (("images (the service end to end)", "images"),
                 ("images, grouping left out (OCR lines as entities)", "images_without_grouping"),
                 ("ground-truth lines", "gold_lines"),
                 ("ground-truth entities", "gold_entities"))]
        sections += [f"### {key}", "", *header, *rows, ""]
    jobs = ["| task | decision | holdout: candidate | data |", "|---|---|---|---|"]
    for task, job in report["jobs"].items():
        candidate = (job["holdout"] or {}).get("candidate") or {}
        jobs.append(f"| {task} | **{job['status']}**: {job['reason']} | "
                    f"{ {k: round(v, 4) for k, v in list(candidate.items())[:3]} } | {job['data']} |")
    examples = ["| key | value | score |", "|---|---|---|"] + [
        f"| {p['key']} | {p['value']} | {p['score']} |" for p in report["examples"]]
    return "\n".join([
        "# Key–value pairs end to end (FUNSD)", "",
        f"Date: {report['date']}  ", f"Machine: {report['machine']}  ", f"Versions: {report['versions']}", "",
        f"Setting: {report['setting']}", "",
        f"The learning job ({report['job_seconds']} s):", "", *jobs, "",
        f"Evaluated on {report['setting']['evaluated_on']}. Models in service: {report['model_versions']}; "
        f"{report['seconds_per_page']} s per page from image to JSON.", "",
        "A pair counts when its key text and its value text both match a gold pair of the form, one to one: "
        "*strict* after case and whitespace folding, *lenient* within normalized edit distance 0.2 (spaces "
        "ignored). Rows: from the images (what a user gets), from the ground-truth lines (gold words and texts, "
        "through grouping, SER and RE: the OCR's share of what is lost is the gap to the first row), from the "
        "ground-truth entities (SER and RE only: the grouping's share is the gap to the second row).", "",
        *sections, "Pairs of the first two test forms, as the JSON gives them:", "", *examples, ""])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``pairs.json`` and ``pairs.md``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forms", type=int, default=TRAIN_FORMS, help="training forms used as reviewed documents")
    parser.add_argument("--holdout", type=int, default=HOLDOUT_FORMS, help="further training forms frozen as holdout")
    parser.add_argument("--tasks", default="det,rec,group,ser,re", help="comma-separated learning tasks")
    parser.add_argument("--epochs", type=int, default=None, help="override kie.training.epochs (SER, RE; grouping has group_epochs)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench/results")
    parser.add_argument("--name", default="pairs", help="results file name (pairs.json / pairs.md)")
    parser.add_argument("--dev", action="store_true",
                        help="evaluate on the training forms after --forms + --holdout, not the test forms")
    args = parser.parse_args(argv)
    report = run(args.forms, args.holdout, args.tasks.split(","), args.epochs, args.dev)
    write_results(args.out, args.name, report, markdown(report))
    strict, lenient = report["images"]["all links / strict"]["f1"], report["images"]["all links / lenient"]["f1"]
    print(f"pair F1 end to end: {strict:.3f} (strict), {lenient:.3f} (lenient)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
