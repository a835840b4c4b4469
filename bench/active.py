"""Does reviewing the most uncertain documents first pay? (issue 15) Simulated reviewers on FUNSD.

The first 139 FUNSD training forms are the pool of documents waiting for review; the last 10 are the
learning job's frozen holdout (as in ``bench/loop.py``). Each run starts from the base models and
10 forms drawn with the run's seed; every round, the learning job — the scheduled job's own code,
``service.learning.run_learning_job`` with its holdout gate — retrains SER and RE (``--tasks``) on all
forms labelled so far, and the strategy (:mod:`service.review.active`) picks the next 10 from the
rest: ``uncertainty`` (the queue's order: each form is processed by the pipeline in service and
scored by :func:`service.review.routing.document_uncertainty`), ``random``, or ``mixed``
(uncertainty, no two near-identical forms in one batch). The gold labels of the picked forms stand
in for the reviewers' corrections. ``uncertainty@sum`` is the same order with each form's uncertainty
summed over its scored items instead of averaged (``review.uncertainty_aggregate: sum``): the expected
number of corrections, which grows with the form. A diagnosis after the first round says which
uncertainty points at the models' errors (:func:`diagnose`).

Grouping is not retrained by default: in short rounds (2 epochs) its candidates were refused by the
gate round after round, freezing a 10-form grouper that decided the end-to-end figures, and with
the service's 8 epochs the benchmark would not fit in a session; at full data the grouping stage
moves end-to-end pair F1 by 0.011 (``bench/results/pairs.md``). ``--tasks group,ser,re`` puts it back.

After every round, on the 50 FUNSD test forms: SER and RE Hmean on ground-truth segments, and the
key–value pair F1 of ``bench/pairs.py`` from the images end to end (OCR in service → [grouping] → SER
→ RE), strict and lenient, plus from ground-truth lines. The OCR (base det/rec) is not retrained in
this simulation, so each page is read once and its lines reused by every round.

Usage, from the project root::

    .venv/bin/python bench/active.py [--seeds 0,1,2] [--rounds 5] [--epochs 8] [--tasks ser,re]

Runs are cached in ``--work`` (default ``/tmp/paperloop-bench-active``; delete it to start over), so
an interrupted benchmark resumes. It writes ``bench/results/active.{json,md,png}`` and prints
``labels to reach 95% of full data: uncertainty X%, random Y%, mixed Z%``.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from bench.common import machine_info, utc_date, versions, write_results  # noqa: E402
from bench.pairs import from_gold_lines, run_document_stages, score_documents  # noqa: E402
from service.base_models import install_base_models  # noqa: E402
from service.config import PaperloopConfig  # noqa: E402
from service.document import Document  # noqa: E402
from service.formats import read_funsd  # noqa: E402
from service.funsd import split_pairs  # noqa: E402
from service.kie.evaluation import evaluate_gold, unlabelled_copy  # noqa: E402
from service.labels import LabelStore  # noqa: E402
from service.learning import run_learning_job  # noqa: E402
from service.pipeline import DocumentPipeline  # noqa: E402
from service.registry import ModelRegistry  # noqa: E402
from service.review.active import STRATEGIES, Candidate, document_words, pick_batch  # noqa: E402
from service.review.routing import document_uncertainty, review_uncertainty, segment_uncertainty  # noqa: E402
from service.store import Store  # noqa: E402

POOL_FORMS = 139
HOLDOUT_FORMS = 10
BATCH = 10
TASKS = "ser,re"  # grouping too with --tasks group,ser,re (see --group-epochs)
DOCUMENT_STAGES = ("group", "ser", "re")
TARGET_SHARE = 0.95
METRICS = ("pairs_lenient", "pairs_strict", "pairs_gold_lines", "ser_hmean", "re_hmean")
PRIMARY = "pairs_lenient"


# -- the forms, read once -------------------------------------------------------------------------


def read_forms(pairs: list[tuple[Path, Path]], prefix: str) -> list[Document]:
    """Gold documents with ids unique to the bench (``<prefix>-<k>``)."""
    return [read_funsd(annotation, image, document_id=f"{prefix}-{k:03d}") for k, (image, annotation) in enumerate(pairs)]


def ocr_documents(work: Path, pairs: list[tuple[Path, Path]], prefix: str) -> list[Document]:
    """The base OCR's reading of each image (no grouping / SER / RE), cached as JSON in ``work``."""
    cache = work / f"ocr-{prefix}.json"
    if cache.is_file():
        return [Document.from_dict(d) for d in json.loads(cache.read_text())]
    cfg = PaperloopConfig.model_validate({"paths": {"root": str(work / "ocr-root")}})
    install_base_models(ModelRegistry(cfg.paths.resolve("models")))
    pipeline = DocumentPipeline(cfg)
    documents = [pipeline.process_file(image, f"{prefix}-{k:03d}", "-", image.name, skip=DOCUMENT_STAGES)
                 for k, (image, _) in enumerate(pairs)]
    cache.write_text(json.dumps([d.to_dict() for d in documents]))
    return documents


# -- one run: a strategy and a seed ---------------------------------------------------------------


def _config(root: Path, seed: int, args: argparse.Namespace, variant: str = "") -> PaperloopConfig:
    """The run's config; ``variant`` ``sum`` sets ``review.uncertainty_aggregate``, ``a+b`` ``review.uncertainty_from``."""
    review: dict[str, Any] = {}
    if variant == "sum":
        review["uncertainty_aggregate"] = "sum"
    elif variant:
        review["uncertainty_from"] = variant.split("+")
    return PaperloopConfig.model_validate({
        "paths": {"root": str(root)}, "learning": {"tasks": args.tasks.split(","), "min_new_documents": 1},
        "review": review,
        "kie": {"training": {"epochs": args.epochs, "group_epochs": args.group_epochs, "seed": seed,
                             "service_view": False}}})


def fresh_service(root: Path, seed: int, args: argparse.Namespace, holdout: list[Document],
                  variant: str = "") -> tuple[PaperloopConfig, LabelStore]:
    """A new service folder at ``root``: base models, no labels but the frozen holdout."""
    shutil.rmtree(root, ignore_errors=True)
    cfg = _config(root, seed, args, variant)
    install_base_models(ModelRegistry(cfg.paths.resolve("models")))
    labels = LabelStore(Store(cfg.paths.database))
    for document in holdout:
        labels.put(document, "funsd", "holdout")
    return cfg, labels


def evaluate(pipeline: DocumentPipeline, test_gold: list[Document], test_ocr: list[Document]) -> dict[str, float]:
    """The round's figures on the test forms (see the module docstring)."""
    cfg = pipeline.cfg
    pipeline.models.refresh()
    gold_scores = evaluate_gold(pipeline.models.kie, test_gold, cfg.kie.labels, cfg.kie.other_label)
    from_images = [run_document_stages(pipeline, copy.deepcopy(d)) for d in test_ocr]
    from_lines = [run_document_stages(pipeline, from_gold_lines(g)) for g in test_gold]
    images, lines = score_documents(from_images, test_gold), score_documents(from_lines, test_gold)
    return {"pairs_lenient": images["all links / lenient"]["f1"], "pairs_strict": images["all links / strict"]["f1"],
            "pairs_gold_lines": lines["all links / strict"]["f1"],
            "ser_hmean": round(gold_scores["ser"]["hmean"], 4), "re_hmean": round(gold_scores["re"]["hmean"], 4)}


def candidates(pipeline: DocumentPipeline, pool_ocr: dict[str, Document], ids: list[str]) -> list[Candidate]:
    """The unlabelled forms as the queue sees them: processed in service, with their uncertainty."""
    found = []
    for document_id in ids:
        processed = run_document_stages(pipeline, copy.deepcopy(pool_ocr[document_id]))
        found.append(Candidate(document_id, review_uncertainty(processed, pipeline.cfg.review), document_words(processed)))
    return found


def run_strategy(work: Path, strategy: str, seed: int, rounds: int, args: argparse.Namespace,
                 pool_gold: dict[str, Document], holdout: list[Document], pool_ocr: dict[str, Document],
                 test_gold: list[Document], test_ocr: list[Document]) -> dict[str, Any]:
    """Rounds of learning job → evaluation → pick the next batch; ``strategy`` ``full`` trains on the whole pool once.

    ``uncertainty@label+group+link`` (or ``mixed@...``) orders by the uncertainty of those scores only
    (``review.uncertainty_from``) instead of the configured ones; ``uncertainty@sum`` by the document's
    total uncertainty (``review.uncertainty_aggregate``)."""
    done = work / f"run-{strategy}-{seed}.json"
    if done.is_file():
        return json.loads(done.read_text())
    base_strategy, _, variant = strategy.partition("@")
    cfg, labels = fresh_service(work / f"root-{strategy}-{seed}", seed, args, holdout, variant)
    pipeline = DocumentPipeline(cfg)
    rng = random.Random(seed)
    pool = sorted(pool_gold)
    batch = pool if strategy == "full" else rng.sample(pool, BATCH)  # the first batch is the same for every strategy
    labelled: list[str] = []
    history = []
    for round_number in range(1 if strategy == "full" else rounds):
        started = time.perf_counter()
        for document_id in batch:
            labels.put(pool_gold[document_id], "funsd", "train")
        labelled += batch
        jobs = run_learning_job(cfg)
        train_seconds = time.perf_counter() - started
        figures = evaluate(pipeline, test_gold, test_ocr)
        history.append({"round": round_number + 1, "labelled": len(labelled), **figures,
                        "decisions": {j.task: j.status for j in jobs}, "train_seconds": round(train_seconds, 1),
                        "picked": list(batch)})
        print(f"{strategy} seed {seed}: {len(labelled)} forms {figures} "
              f"({ {j.task: j.status for j in jobs} }, {train_seconds:.0f} s)", flush=True)
        rest = [d for d in pool if d not in set(labelled)]
        if round_number + 1 < rounds and rest:
            batch = pick_batch(candidates(pipeline, pool_ocr, rest) if base_strategy != "random" else
                               [Candidate(d, 0.0) for d in rest], BATCH, base_strategy, rng)
    result = {"strategy": strategy, "seed": seed, "rounds": history}
    done.write_text(json.dumps(result, indent=1))
    shutil.rmtree(cfg.paths.root, ignore_errors=True)
    return result


# -- why an order works or not -------------------------------------------------------------------


# The uncertainties the diagnosis compares: name → the scores it reads (review.uncertainty_from) and
# how it aggregates them over the document (review.uncertainty_aggregate).
UNCERTAINTIES = {"queue (rec+label+link, mean)": (("rec", "label", "link"), "mean"), "rec": (("rec",), "mean"),
                 "label+link": (("label", "link"), "mean"), "label+link_choice": (("label", "link_choice"), "mean"),
                 "queue, summed": (("rec", "label", "link"), "sum"), "segments (length)": ((), "count")}
ERRORS = ("ser_error_rate", "re_miss_rate", "ser_errors", "re_misses")


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (ties broken by position; enough for a diagnosis)."""
    import numpy as np

    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return round(float(np.corrcoef(ranks_a, ranks_b)[0, 1]), 3)


def diagnose(work: Path, seed: int, args: argparse.Namespace, pool_gold: dict[str, Document],
             holdout: list[Document], pool_ocr: dict[str, Document]) -> dict[str, Any]:
    """After the first round of ``seed`` (10 forms): does each uncertainty predict where the models err?

    For every form not yet labelled: its uncertainty as the queue computes it (recognition, label and
    kept-link scores) and from other scores (:data:`UNCERTAINTIES`); the share of segments
    whose uncertainty is the recognizer's; and the SER errors and RE link misses (counts and rates) of the same
    models on the form's ground-truth segments. Spearman correlations say which order points at errors.
    """
    cache = work / f"diagnosis-{seed}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    root = work / f"root-diagnosis-{seed}"
    cfg, labels = fresh_service(root, seed, args, holdout)
    pool = sorted(pool_gold)
    first = random.Random(seed).sample(pool, BATCH)
    for document_id in first:
        labels.put(pool_gold[document_id], "funsd", "train")
    run_learning_job(cfg)
    pipeline = DocumentPipeline(cfg)
    pipeline.models.refresh()
    rows = [_diagnosis_row(pipeline, pool_ocr[d], pool_gold[d]) for d in pool if d not in set(first)]
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    result = {"forms": len(rows), "rec_driven_segment_share": round(statistics.mean(columns["rec_driven"]), 3),
              "spearman": {f"{u} vs {e}": spearman(columns[u], columns[e])
                           for u in UNCERTAINTIES for e in ERRORS}}
    cache.write_text(json.dumps(result, indent=1))
    shutil.rmtree(root, ignore_errors=True)
    return result


def _diagnosis_row(pipeline: DocumentPipeline, ocr: Document, gold: Document) -> dict[str, float]:
    """One form's uncertainties (from the service's reading) and errors (on its ground-truth segments)."""
    processed = run_document_stages(pipeline, copy.deepcopy(ocr))
    strategy = pipeline.cfg.review.uncertainty
    segments = [s for s in processed.segments if s.rec_score is not None and s.label_score is not None]
    rec_driven = [segment_uncertainty(s, strategy, ("rec",)) >= segment_uncertainty(s, strategy, ("label",))
                  for s in segments]
    predicted = pipeline.models.kie.predict(unlabelled_copy(gold))
    by_id = {s.id: s.label for s in predicted.segments}
    ser_errors = sum(by_id[s.id] != s.label for s in gold.segments)
    found = {(link.key, link.value) for link in predicted.links}
    re_misses = sum((link.key, link.value) not in found for link in gold.links)
    uncertainties = {name: float(len(processed.segments)) if aggregate == "count" else
                     document_uncertainty(processed, strategy, sources, aggregate)
                     for name, (sources, aggregate) in UNCERTAINTIES.items()}
    return {**uncertainties, "rec_driven": statistics.mean(rec_driven) if rec_driven else 0.0,
            "ser_errors": ser_errors, "ser_error_rate": ser_errors / max(len(gold.segments), 1),
            "re_misses": re_misses, "re_miss_rate": re_misses / max(len(gold.links), 1)}


# -- the report -----------------------------------------------------------------------------------


def labels_to_reach(history: list[dict[str, Any]], target: float, metric: str = PRIMARY) -> int | None:
    """Labelled forms at the first round whose ``metric`` reaches ``target`` (``None`` if none does)."""
    return next((r["labelled"] for r in history if r[metric] >= target), None)


def curves(runs: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, list[float]]]]:
    """Per strategy, per labelled count, per metric: the values over the seeds."""
    table: dict[str, dict[int, dict[str, list[float]]]] = {}
    for run in runs:
        for r in run["rounds"]:
            cell = table.setdefault(run["strategy"], {}).setdefault(r["labelled"], {m: [] for m in METRICS})
            for metric in METRICS:
                cell[metric].append(r[metric])
    return table


def summarize(runs: list[dict[str, Any]], full: list[dict[str, Any]], pool_size: int) -> dict[str, Any]:
    """Full-data figures; per metric and strategy, the forms each seed needed to reach 95 % of them;
    whether each strategy's mean beats random's at every round from 30 labelled forms on."""
    full_mean = {m: statistics.mean(r["rounds"][0][m] for r in full) for m in METRICS}
    reach: dict[str, dict[str, list[int | None]]] = {m: {} for m in METRICS}
    for metric in METRICS:
        for run in runs:
            reached = labels_to_reach(run["rounds"], TARGET_SHARE * full_mean[metric], metric)
            reach[metric].setdefault(run["strategy"], []).append(reached)
    table = curves(runs)
    most = max(r["labelled"] for run in runs for r in run["rounds"])
    beats: dict[str, dict[str, dict[int, bool]]] = {m: {} for m in METRICS}
    for metric in METRICS:
        for strategy in (s for s in table if s != "random"):
            beats[metric][strategy] = {
                n: statistics.mean(table[strategy][n][metric]) > statistics.mean(table["random"][n][metric])
                for n in sorted(table[strategy]) if n >= 30 and n in table.get("random", {})}
    return {"full": full_mean, "target": TARGET_SHARE * full_mean[PRIMARY], "reach": reach, "beats_random_from_30": beats,
            "reach_share": {m: {s: _share(v, pool_size, most) for s, v in by_strategy.items()} for m, by_strategy in reach.items()}}


def gate_decisions(runs: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per task, how often the learning job's gate promoted or rejected the candidate after the first round."""
    counts: dict[str, dict[str, int]] = {}
    for run in runs:
        for r in run["rounds"][1:]:
            for task, status in r["decisions"].items():
                counts.setdefault(task, {}).setdefault(status, 0)
                counts[task][status] += 1
    return counts


def _share(reached: list[int | None], pool_size: int, most: int) -> str:
    """Mean share of the pool over the seeds; '>X%' when no seed got there within ``most`` labelled
    forms, '≥X% (k seed(s) never)' when some did not."""
    found = [v for v in reached if v is not None]
    if not found:
        return f">{most / pool_size:.0%}"
    share = f"{statistics.mean(found) / pool_size:.0%}"
    return share if len(found) == len(reached) else f"≥{share} ({len(reached) - len(found)} seed(s) never)"


def plot(runs: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    """One panel per metric: mean over seeds per strategy with the min–max spread, full data dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = curves(runs)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6))
    for axis, metric in zip(axes, METRICS):
        for strategy, cells in sorted(table.items()):
            xs = sorted(cells)
            values = [cells[x][metric] for x in xs]
            axis.plot(xs, [statistics.mean(v) for v in values], marker="o", label=strategy)
            axis.fill_between(xs, [min(v) for v in values], [max(v) for v in values], alpha=0.2)
        axis.axhline(summary["full"][metric], linestyle="--", color="grey", label=f"all {POOL_FORMS} forms")
        axis.set_title(metric.replace("_", " "))
        axis.set_xlabel("labelled forms")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page."""
    summary, table = report["summary"], curves(report["runs"])
    header = "| strategy | labelled | " + " | ".join(METRICS) + " |"
    rows = [header, "|---|---|" + "---|" * len(METRICS)]
    for strategy, cells in sorted(table.items()):
        for n in sorted(cells):
            rows.append(f"| {strategy} | {n} | " + " | ".join(
                f"{statistics.mean(cells[n][m]):.3f} ± {statistics.pstdev(cells[n][m]):.3f}" for m in METRICS) + " |")
    full = " | ".join(f"{summary['full'][m]:.3f}" for m in METRICS)
    strategies = sorted(table)
    reach_rows = ["| metric | 95 % of all forms | " + " | ".join(strategies) + " |", "|---|---|" + "---|" * len(strategies)]
    beat_rows = ["| metric | " + " | ".join(s for s in strategies if s != "random") + " |",
                 "|---|" + "---|" * (len(strategies) - 1)]
    for m in METRICS:
        reach_rows.append(f"| {m} | {TARGET_SHARE * summary['full'][m]:.3f} | " + " | ".join(
            f"{summary['reach_share'][m].get(s, '-')} {summary['reach'][m].get(s)}" for s in strategies) + " |")
        beat_rows.append(f"| {m} | " + " | ".join(
            " ".join(f"{n}:{'yes' if b else 'no'}" for n, b in summary["beats_random_from_30"][m].get(s, {}).items())
            for s in strategies if s != "random") + " |")
    return "\n".join([
        "# Active learning on FUNSD: which forms to review first (issue 15)", "",
        f"Date: {report['date']}  ", f"Machine: {report['machine']}  ", f"Versions: {report['versions']}  ",
        f"Run time of this invocation: {report['seconds']} s (finished runs are read back from `--work`); "
        f"learning jobs of all runs together: {report.get('train_seconds', '?')} s on a shared machine", "", f"Setting: {report['setting']}", "",
        "Pool: the first 139 FUNSD training forms; holdout of the learning job's gate: the last 10. Every run "
        "starts from the base models and 10 forms drawn with its seed (the same for every strategy); each round "
        f"the learning job retrains {report['setting']['tasks']} on everything labelled (gated on the holdout, so a "
        "rejected candidate leaves the previous model in service), the figures are taken on the 50 FUNSD test "
        "forms, and the strategy picks the next 10 forms. Values: mean ± standard deviation over the seeds. "
        "`pairs_*`: key–value pair F1 as `bench/pairs.py` counts it (all links), from the images end to end "
        "(base OCR), lenient and strict, and strict from ground-truth lines; `ser_hmean`, `re_hmean`: on "
        "ground-truth segments.", "",
        "| metric | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS),
        f"| all {POOL_FORMS} forms (mean over the seeds) | {full} |", "",
        f"Share of the {POOL_FORMS}-form pool needed to reach 95 % of the full-data figure (mean over the seeds; "
        "'>' when no seed got there within the rounds; forms per seed in brackets, None = not reached):", "",
        *reach_rows, "", "Mean over the seeds above random's at each round from 30 labelled forms on:", "", *beat_rows, "",
        *diagnosis_rows(report.get("diagnosis", {})),
        "The learning job's gate (holdout of 10 forms) after the first round, all strategies and seeds: "
        f"{gate_decisions(report['runs'])}. A rejected candidate leaves the previous model in service, so a "
        "curve can stay flat for a round or two whatever the strategy picked.", "",
        "![learning curves](active.png)", "", *rows, "", report["line"], ""])


def diagnosis_rows(diagnosis: dict[str, Any]) -> list[str]:
    """The diagnosis (see :func:`diagnose`) as a Markdown table, one row per seed."""
    if not diagnosis:
        return []
    pairs = list(next(iter(diagnosis.values()))["spearman"])
    rows = ["| seed | forms | segments whose uncertainty is the recognizer's | " + " | ".join(pairs) + " |",
            "|---|---|---|" + "---|" * len(pairs)]
    for seed, d in diagnosis.items():
        rows.append(f"| {seed} | {d['forms']} | {d['rec_driven_segment_share']:.0%} | "
                    + " | ".join(f"{d['spearman'][p]:+.3f}" for p in pairs) + " |")
    return ["Does an uncertainty point at the models' errors? After the first round (10 forms, SER + RE "
            "trained), on every form not yet labelled: Spearman correlation of the form's uncertainty (as "
            "the queue computes it from recognition, label and kept-link scores, and from other choices of "
            "scores; `link_choice` is RE's decision for every segment, missed links included; 'summed': the "
            "queue's scores added up over the document instead of averaged; 'length': the plain number of "
            "segments) with the same models' SER errors and RE link misses on the form's ground-truth "
            "segments, as rates and as counts.", "", *rows, ""]


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) every strategy × seed and the full-data runs; write ``active.{json,md,png}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--strategies", default=",".join(STRATEGIES + ("uncertainty@sum",)))
    parser.add_argument("--rounds", type=int, default=5, help="rounds of 10 forms (5: up to 50 labelled forms, 36 %% of the pool)")
    parser.add_argument("--epochs", type=int, default=8, help="kie.training.epochs (SER, RE) in every round")
    parser.add_argument("--group-epochs", type=int, default=8, help="kie.training.group_epochs (with --tasks group,...)")
    parser.add_argument("--tasks", default=TASKS, help="the learning job's tasks in every round")
    parser.add_argument("--runs-only", action="store_true",
                        help="only the strategies' runs (cached in --work), e.g. in a second process; no report")
    parser.add_argument("--work", type=Path, default=Path("/tmp/paperloop-bench-active"))
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench/results")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    training = split_pairs("training")
    pool_pairs, holdout_pairs = training[:POOL_FORMS], training[POOL_FORMS:POOL_FORMS + HOLDOUT_FORMS]
    pool_gold = {d.id: d for d in read_forms(pool_pairs, "pool")}
    holdout = read_forms(holdout_pairs, "holdout")
    test_pairs = split_pairs("testing")
    test_gold = read_forms(test_pairs, "test")
    print("reading the forms with the base OCR (cached)...", flush=True)
    pool_ocr = {d.id: d for d in ocr_documents(args.work, pool_pairs, "pool")}
    test_ocr = ocr_documents(args.work, test_pairs, "test")
    seeds = [int(s) for s in args.seeds.split(",")]
    shared = (pool_gold, holdout, pool_ocr, test_gold, test_ocr)
    runs = [run_strategy(args.work, strategy, seed, args.rounds, args, *shared)
            for seed in seeds for strategy in args.strategies.split(",")]
    if args.runs_only:
        return 0
    full = [run_strategy(args.work, "full", seed, 1, args, *shared) for seed in seeds]
    diagnosis = {seed: diagnose(args.work, seed, args, pool_gold, holdout, pool_ocr) for seed in seeds}
    summary = summarize(runs, full, POOL_FORMS)
    line = "labels to reach 95% of full data: " + ", ".join(
        f"{s} {summary['reach_share'][PRIMARY].get(s, '-')}" for s in args.strategies.split(","))
    report = {"date": utc_date(), "machine": machine_info(), "versions": versions(),
              "seconds": round(time.perf_counter() - started, 1),
              "train_seconds": round(sum(r["train_seconds"] for run in runs + full for r in run["rounds"])),
              "setting": {"pool_forms": POOL_FORMS, "holdout_forms": HOLDOUT_FORMS, "batch": BATCH,
                          "rounds": args.rounds, "seeds": seeds, "epochs": args.epochs,
                          "group_epochs": args.group_epochs, "service_view": False, "tasks": args.tasks.split(","),
                          "primary_metric": PRIMARY},
              "summary": summary, "line": line, "diagnosis": diagnosis, "runs": runs, "full": full}
    args.out.mkdir(parents=True, exist_ok=True)
    plot(runs, summary, args.out / "active.png")
    write_results(args.out, "active", report, markdown(report))
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
