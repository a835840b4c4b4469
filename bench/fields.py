"""Fields on receipts (issue 12): labels bootstrapped from known values, SER trained, receipts processed.

On ``../shared/datasets/sroie-dev`` (100 SROIE receipts, sorted by id): the first 55 are the train
split and the next 15 the holdout split, both labelled by ``paperloop import values`` from their
``entities/`` values (read by the base OCR; the values are found among the OCR words); the last 30
are the test receipts, processed from their images by ``paperloop process``'s pipeline. With
``configs/receipt.yaml``: ``train group`` (when the grouping task is registered), ``train ser``
(which sets the straight-through thresholds on the holdout), then per field on the test receipts:
exact accuracy (after case and whitespace folding; dates and amounts as values), lenient accuracy
(normalized edit distance ≤ 0.1), the OCR ceiling (the value is among the OCR words, exactly /
leniently) and the share that goes straight through with the accuracy of what did.

Writes ``bench/results/fields.{md,json}`` and prints
``fields exact: company A, address B, date C, total D, overall E; straight-through at 0.98: F``.
Everything runs in a temporary folder; nothing of SROIE or the models trained on it is kept.
"""

from __future__ import annotations

import csv
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from bench.common import machine_info, utc_date, versions, write_results  # noqa: E402
from service.base_models import install_base_models  # noqa: E402
from service.cli import cli  # noqa: E402
from service.config import load_config  # noqa: E402
from service.document import Document  # noqa: E402
from service.evaluation import levenshtein  # noqa: E402
from service.fields.matching import find_value  # noqa: E402
from service.fields.values import fold, normalize  # noqa: E402
from service.pipeline import DocumentPipeline  # noqa: E402
from service.registry import ModelRegistry  # noqa: E402
from service.tasks import TASK_NAMES  # noqa: E402

SROIE = PROJECT.parent / "shared/datasets/sroie-dev"
CONFIG = PROJECT / "configs/receipt.yaml"
FIELDS = ("company", "address", "date", "total")
TRAIN, HOLDOUT = slice(0, 55), slice(55, 70)
TEST = slice(70, 100)


def judge(cfg: Any, name: str, predicted: str | None, gold: str) -> tuple[bool, bool]:
    """(exact, lenient) of a predicted normalized value against the gold value as printed."""
    spec = cfg.fields.get(name)
    if predicted is None:
        return False, False
    if spec.type != "text":
        same = predicted == normalize(spec, gold, cfg.fields)
        return same, same
    a, b = fold(predicted), fold(gold)
    return a == b, levenshtein(a, b) <= 0.1 * max(len(b), 1)


def ceiling(cfg: Any, document: Document, name: str, gold: str) -> tuple[bool, bool]:
    """Whether the gold value is among the document's OCR words (exactly / leniently)."""
    spec = cfg.fields.get(name)
    match = find_value(document, spec, gold, cfg.fields)
    if match is None:
        return False, False
    by_id = {s.id: s for s in document.segments}
    raw = " ".join(by_id[sid].words[i].text for sid, i in match.words)
    if spec.type != "text":
        return judge(cfg, name, normalize(spec, raw, cfg.fields), gold)
    return judge(cfg, name, raw, gold)


def receipts() -> list[tuple[Path, dict[str, str]]]:
    """(image, entity values) of the 100 receipts, sorted by id."""
    found = []
    for entities in sorted((SROIE / "entities").glob("*.txt")):
        values = json.loads(entities.read_text(encoding="utf-8"))
        found.append((SROIE / "img" / f"{entities.stem}.jpg", {k: str(values.get(k, "")) for k in FIELDS}))
    return found


def write_values(path: Path, rows: list[tuple[Path, dict[str, str]]]) -> None:
    """The values file a team would export: document, field, value."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["document", "field", "value"])
        for image, values in rows:
            writer.writerows([str(image), name, value] for name, value in values.items() if value)


def run_cli(root: Path, args: list[str]) -> str:
    """One ``paperloop --config <root>/config.yaml ARGS`` in process; its output (raises on failure)."""
    result = CliRunner().invoke(cli, ["--config", str(root / "config.yaml"), *args], catch_exceptions=False)
    if result.exit_code != 0:
        raise RuntimeError(f"paperloop {' '.join(args)} failed:\n{result.output}")
    print(result.output, flush=True)
    return without_progress_bars(result.output)


def without_progress_bars(output: str) -> str:
    """The output less tqdm's progress bars (lines redrawn with carriage returns: ``NN%|``)."""
    return "\n".join(line.strip() for line in output.splitlines() if line.strip() and not re.search(r"\d+%\|", line))


def evaluate(cfg: Any, test: list[tuple[Path, dict[str, str]]]) -> dict[str, Any]:
    """Process the test receipts; per field exact / lenient / ceiling; straight-through and its accuracy."""
    pipeline = DocumentPipeline(cfg)
    per_field = {name: {"exact": 0, "lenient": 0, "ceiling_exact": 0, "ceiling_lenient": 0, "n": 0} for name in FIELDS}
    through = {"documents": 0, "accepted": 0, "fields": 0, "right": 0, "documents_right": 0}
    started = time.perf_counter()
    for k, (image, values) in enumerate(test):
        document = pipeline.process_file(image, f"test-{k:03d}", f"sha-{image.stem}", image.name)
        decision = pipeline.route(document).decision
        passed = not decision.needs_review or decision.audit
        right_all = True
        for name in FIELDS:
            gold = values[name]
            if not gold:
                continue
            value = next((f.value for f in document.fields if f.name == name), None)
            exact, lenient = judge(cfg, name, value, gold)
            c_exact, c_lenient = ceiling(cfg, document, name, gold)
            row = per_field[name]
            row["n"] += 1
            row["exact"] += exact
            row["lenient"] += lenient
            row["ceiling_exact"] += c_exact
            row["ceiling_lenient"] += c_lenient
            right_all &= exact
            if passed:
                through["fields"] += 1
                through["right"] += exact
        through["documents"] += 1
        through["accepted"] += passed
        through["documents_right"] += passed and right_all
    result = {name: {key: (row[key] / row["n"] if row["n"] else 0.0) for key in row if key != "n"} | {"n": row["n"]}
              for name, row in per_field.items()}
    total = sum(r["n"] for r in per_field.values())
    overall = {"exact": sum(r["exact"] for r in per_field.values()) / total,
               "lenient": sum(r["lenient"] for r in per_field.values()) / total}
    share = through["accepted"] / through["documents"]
    accuracy = through["right"] / through["fields"] if through["fields"] else None
    return {"fields": result, "overall": overall, "straight_through": share, "accepted": through["accepted"],
            "documents": through["documents"], "accepted_field_accuracy": accuracy,
            "accepted_documents_all_right": through["documents_right"], "seconds": round(time.perf_counter() - started, 1)}


def bootstrap_stats(output: str) -> str:
    """The import's 'found / not found' lines."""
    return "\n".join(line for line in output.splitlines() if "found" in line)


def page(report: dict[str, Any]) -> str:
    """The results page."""
    r, lines = report["result"], []
    lines += ["# Fields on SROIE receipts (issue 12)", "",
              f"{report['date']}; {report['machine']['cpu_model']}, {report['machine']['usable_cores']} cores usable "
              f"(shared with other jobs; load {report['machine']['load_average_1_5_15']}); "
              + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), "",
              "Split of `../shared/datasets/sroie-dev` (100 receipts sorted by id): 0–54 train, 55–69 holdout "
              "(straight-through thresholds), 70–99 test (processed from the images). Labels of train and holdout: "
              "`paperloop import values` of their `entities/` values, read by the base det/rec models. Config: "
              "`configs/receipt.yaml`; tasks trained: " + ", ".join(report["trained"]) + ".", "",
              "Values found among the OCR words by the import (train + holdout, 70 receipts):", "", "```",
              report["import"], "```", "",
              "| field | exact | lenient | OCR ceiling exact / lenient |", "|---|---|---|---|"]
    for name in FIELDS:
        f = r["fields"][name]
        lines.append(f"| {name} | {f['exact']:.2f} | {f['lenient']:.2f} | {f['ceiling_exact']:.2f} / {f['ceiling_lenient']:.2f} |")
    lines.append(f"| overall | {r['overall']['exact']:.2f} | {r['overall']['lenient']:.2f} | |")
    accuracy = r["accepted_field_accuracy"]
    lines += ["", f"Straight through at target accuracy {report['target']}: {r['accepted']} of {r['documents']} test "
              f"receipts ({r['straight_through']:.2f}); field accuracy of those: "
              f"{'-' if accuracy is None else f'{accuracy:.3f}'}, all four fields right on "
              f"{r['accepted_documents_all_right']} of them.", "",
              "Exact: equal after case and whitespace folding (dates as ISO dates, totals as decimal amounts). "
              "Lenient: normalized edit distance ≤ 0.1. OCR ceiling: the value is among the test receipt's OCR words "
              "(`service.fields.matching.find_value`), judged the same way.", "",
              "Training output (`train ser`: per-field validation figures and holdout thresholds):", "", "```",
              report["train_output"].strip(), "```", "", f"`{report['line']}`", ""]
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark in a temporary folder."""
    rows = receipts()
    with tempfile.TemporaryDirectory(prefix="paperloop-fields-") as scratch:
        root = Path(scratch)
        text = CONFIG.read_text(encoding="utf-8") + f"\npaths:\n  root: {root}\n"
        (root / "config.yaml").write_text(text, encoding="utf-8")
        cfg = load_config(root / "config.yaml")
        install_base_models(ModelRegistry(cfg.paths.resolve("models")))
        write_values(root / "train.csv", rows[TRAIN])
        write_values(root / "holdout.csv", rows[HOLDOUT])
        imported = run_cli(root, ["import", "values", str(root / "train.csv"), "--split", "train"])
        imported += run_cli(root, ["import", "values", str(root / "holdout.csv"), "--split", "holdout"])
        trained, train_output = [], ""
        if "group" in TASK_NAMES:
            try:
                train_output += run_cli(root, ["train", "group"])
                trained.append("group")
            except RuntimeError as exc:  # the grouping task is new: report, and measure without it
                train_output += f"train group failed, measured without grouping: {exc}\n"
        train_output += run_cli(root, ["train", "ser"])
        trained.append("ser")
        result = evaluate(cfg, rows[TEST])
    f = result["fields"]
    line = (f"fields exact: company {f['company']['exact']:.2f}, address {f['address']['exact']:.2f}, "
            f"date {f['date']['exact']:.2f}, total {f['total']['exact']:.2f}, overall {result['overall']['exact']:.2f}; "
            f"straight-through at {cfg.routing.target_accuracy}: {result['straight_through']:.2f}")
    report = {"date": utc_date(), "machine": machine_info(), "versions": versions(), "result": result,
              "import": bootstrap_stats(imported), "train_output": train_output, "trained": trained,
              "target": cfg.routing.target_accuracy, "line": line,
              "split": {"train": "0:55", "holdout": "55:70", "test": "70:100"}}
    write_results(PROJECT / "bench/results", "fields", report, page(report))
    print(line)


if __name__ == "__main__":
    main()
