"""OCR benchmark on the FUNSD test pages: Paperloop's engine against PaddleOCR's own pipeline.

Both engines run the same registry model folders (``models/det/<current>``, ``models/rec/<current>``)
with the same detection parameters, each in its own freshly spawned process so that peak RSS is
per engine. For each engine: detection precision / recall / Hmean at IoU 0.5 against FUNSD lines,
character accuracy and exact line match on matched lines, pages per minute end to end (image load
included, one warm-up page from the training split excluded) and peak RSS.

Usage, from the project root::

    .venv/bin/python bench/ocr.py [--limit N] [--out bench/results]

Nothing is downloaded: the model-hoster check is disabled and outbound connections fail loudly in
the engine processes.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

# PaddleX (under PaddleOCR) pings model hosters at import unless told not to.
os.environ.setdefault("PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK", "True")

from bench.common import machine_info, versions  # noqa: E402
from service.config import OcrConfig  # noqa: E402
from service.evaluation import (  # noqa: E402
    PageEvaluation,
    detection_scores,
    evaluate_page,
    recognition_over_pages,
    recognition_scores,
)
from service.funsd import load_gt_lines, split_pairs  # noqa: E402
from service.registry import ModelRegistry  # noqa: E402

ENGINES = ("paperloop", "paddleocr")
IOU_THRESHOLD = 0.5

# One page's predictions: (4-point quads as nested lists, texts).
Prediction = tuple[list[list[list[float]]], list[str]]
Reader = Callable[[Any], Prediction]


@dataclass
class EngineRun:
    """What one engine process reports back: predictions, timings and memory."""

    engine: str
    predictions: list[Prediction] = field(default_factory=list)
    page_seconds: list[float] = field(default_factory=list)
    elapsed_seconds: float = 0.0
    load_seconds: float = 0.0
    peak_rss_kib: int = 0
    settings: dict[str, Any] = field(default_factory=dict)


# --- engine processes ------------------------------------------------------------------------


def _forbid_network() -> None:
    """Make any outbound TCP/UDP connection attempt in this process raise instead of downloading."""
    original = socket.socket.connect

    def guarded(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise RuntimeError(f"benchmark is offline; blocked a connection to {address!r}")
        return original(sock, address)

    socket.socket.connect = guarded  # type: ignore[method-assign]


def _model_dirs() -> tuple[Path, Path]:
    """The det and rec folders in service in the project's registry."""
    registry = ModelRegistry(PROJECT_ROOT / "models")
    return registry.current_dir("det")[1], registry.current_dir("rec")[1]


def _paperloop_reader() -> tuple[Reader, dict[str, Any]]:
    """Paperloop's OcrEngine with the default OcrConfig."""
    from service.ocr import OcrEngine

    cfg = OcrConfig()
    engine = OcrEngine(ModelRegistry(PROJECT_ROOT / "models"), cfg)

    def read(image: Any) -> Prediction:
        lines = engine.read_page(image)
        return [line.points.tolist() for line in lines], [line.text for line in lines]

    return read, {"versions": engine.versions, "config": cfg.model_dump()}


def paddleocr_kwargs(det_dir: Path, rec_dir: Path, cfg: OcrConfig) -> dict[str, Any]:
    """PaddleOCR 3.7 constructor arguments matching Paperloop's models, parameters and threads.

    The registry holds legacy ``.pdmodel`` programs, which oneDNN cannot run on the new IR (PIR):
    ``engine_config`` keeps Paddle Inference on the old IR. A user ``engine_config`` replaces the
    one PaddleOCR builds from ``cpu_threads`` / ``enable_mkldnn``, so it repeats those settings.
    """
    postprocess = yaml.safe_load((det_dir / "inference.yml").read_text(encoding="utf-8")).get("PostProcess", {})
    det, rec = cfg.det.resolved(postprocess), cfg.rec
    return {
        "text_detection_model_name": "PP-OCRv4_mobile_det",
        "text_detection_model_dir": str(det_dir),
        "text_recognition_model_name": "PP-OCRv4_mobile_rec",
        "text_recognition_model_dir": str(rec_dir),
        "text_recognition_batch_size": rec.batch_size,
        "use_doc_orientation_classify": False,
        "use_doc_unwarping": False,
        "use_textline_orientation": False,
        "text_det_limit_side_len": det.limit_side_len,
        "text_det_limit_type": det.limit_type,
        "text_det_thresh": det.thresh,
        "text_det_box_thresh": det.box_thresh,
        "text_det_unclip_ratio": det.unclip_ratio,
        "text_rec_score_thresh": 0.0,
        "device": "cpu",
        "enable_mkldnn": cfg.use_mkldnn,
        "cpu_threads": cfg.threads,
        "engine_config": {
            "paddle_static": {
                "run_mode": "mkldnn" if cfg.use_mkldnn else "paddle",
                "cpu_threads": cfg.threads,
                "enable_new_ir": False,
                "mkldnn_cache_capacity": 10,
            }
        },
    }


def _paddleocr_reader() -> tuple[Reader, dict[str, Any]]:
    """PaddleOCR's OCR pipeline on the registry's model folders."""
    from paddleocr import PaddleOCR

    kwargs = paddleocr_kwargs(*_model_dirs(), OcrConfig())
    pipeline = PaddleOCR(**kwargs)

    def read(image: Any) -> Prediction:
        result = pipeline.predict(image)[0]
        quads = [[[float(v) for v in point] for point in poly] for poly in result["rec_polys"]]
        return quads, [str(text) for text in result["rec_texts"]]

    return read, {"constructor": kwargs}


def run_engine(engine: str, image_paths: list[str], warmup_path: str) -> EngineRun:
    """Run one engine over the pages (meant to execute in a fresh process)."""
    _forbid_network()
    import cv2

    start = time.perf_counter()
    read, settings = _paperloop_reader() if engine == "paperloop" else _paddleocr_reader()
    run = EngineRun(engine=engine, load_seconds=time.perf_counter() - start, settings=settings)
    read(cv2.imread(warmup_path, cv2.IMREAD_COLOR))  # oneDNN builds its kernels on the first page
    begin = time.perf_counter()
    for path in image_paths:
        page_start = time.perf_counter()
        run.predictions.append(read(cv2.imread(path, cv2.IMREAD_COLOR)))
        run.page_seconds.append(time.perf_counter() - page_start)
    run.elapsed_seconds = time.perf_counter() - begin
    run.peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return run


def run_in_fresh_process(engine: str, image_paths: list[str], warmup_path: str) -> EngineRun:
    """Run one engine in its own spawned process, so its memory peak is its own."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(run_engine, engine, image_paths, warmup_path).result()


# --- scoring ---------------------------------------------------------------------------------


def evaluate_run(run: EngineRun, annotations: list[Path]) -> dict[str, float]:
    """Accuracy, speed and memory figures of one engine run."""
    pages: list[PageEvaluation] = []
    for (quads, texts), annotation in zip(run.predictions, annotations):
        gt = load_gt_lines(annotation)
        boxes, gt_texts = [line.box for line in gt], [line.text for line in gt]
        pages.append(evaluate_page(quads, texts, boxes, gt_texts, IOU_THRESHOLD))
    det = detection_scores(pages)
    rec = recognition_over_pages(pages)
    no_spaces = recognition_scores(
        (g.replace(" ", ""), p.replace(" ", "")) for page in pages for g, p in page.text_pairs
    )
    return {
        "pages": len(pages),
        "gt_lines": det.ground_truth,
        "predicted_lines": det.predicted,
        "matched_lines": det.matched,
        "det_precision": det.precision,
        "det_recall": det.recall,
        "det_hmean": det.hmean,
        "char_accuracy": rec.char_accuracy,
        "line_exact_match": rec.exact_match,
        "char_accuracy_ignoring_spaces": no_spaces.char_accuracy,
        "pages_per_minute": 60.0 * len(pages) / run.elapsed_seconds if run.elapsed_seconds else 0.0,
        "median_seconds_per_page": statistics.median(run.page_seconds) if run.page_seconds else 0.0,
        "model_load_seconds": run.load_seconds,
        "peak_rss_mib": run.peak_rss_kib / 1024.0,
    }


# --- report ----------------------------------------------------------------------------------


METRIC_FORMATS = {
    "pages": "{:.0f}",
    "gt_lines": "{:.0f}",
    "predicted_lines": "{:.0f}",
    "matched_lines": "{:.0f}",
    "det_precision": "{:.4f}",
    "det_recall": "{:.4f}",
    "det_hmean": "{:.4f}",
    "char_accuracy": "{:.4f}",
    "line_exact_match": "{:.4f}",
    "char_accuracy_ignoring_spaces": "{:.4f}",
    "pages_per_minute": "{:.1f}",
    "median_seconds_per_page": "{:.3f}",
    "model_load_seconds": "{:.2f}",
    "peak_rss_mib": "{:.0f}",
}


def table_rows(metrics: dict[str, dict[str, float]]) -> list[list[str]]:
    """Rows of (metric, paperloop, paddleocr, paperloop / paddleocr)."""
    rows = []
    for name, fmt in METRIC_FORMATS.items():
        ours, theirs = metrics["paperloop"][name], metrics["paddleocr"][name]
        ratio = f"{ours / theirs:.3f}" if theirs else "n/a"
        rows.append([name, fmt.format(ours), fmt.format(theirs), ratio])
    return rows


def format_table(rows: list[list[str]]) -> str:
    """A Markdown table (also readable as plain text)."""
    header = ["metric", "paperloop", "paddleocr", "ratio (paperloop/paddleocr)"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(header, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(lines)


def markdown_report(report: dict[str, Any]) -> str:
    """The Markdown version of the JSON report."""
    machine, vers, settings = report["machine"], report["versions"], report["settings"]
    constructor = json.dumps(report["paddleocr_constructor"], indent=2)
    return "\n".join(
        [
            "# OCR benchmark: Paperloop vs PaddleOCR on FUNSD (test split)",
            "",
            f"- date: {report['date']}",
            f"- machine: {machine['cpu_model']}, {machine['logical_cores']} logical cores "
            f"({machine['usable_cores']} usable), {machine['ram_gib']} GiB RAM, {machine['platform']}",
            f"- load average at start / end: {report['load_average_start']} / "
            f"{machine['load_average_1_5_15']} (the machine is shared: timings may be disturbed by "
            "concurrent load)",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
            f"- pages: {settings['pages']} FUNSD test pages (warm-up page from the training split, "
            f"not counted: {settings['warmup_page']})",
            f"- models: det {settings['det_dir']}, rec {settings['rec_dir']}",
            "- matching: polygon IoU >= 0.5, one-to-one, highest IoU first; ground truth = FUNSD entity "
            "words regrouped into lines",
            "- pages_per_minute includes image loading; each engine runs in its own spawned process "
            "(peak RSS is that process's ru_maxrss)",
            "",
            format_table(report["table"]),
            "",
            "PaddleOCR constructor:",
            "",
            "```json",
            constructor,
            "```",
            "",
        ]
    )


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    """Write ``ocr.json`` and ``ocr.md`` into the output folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ocr.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out_dir / "ocr.md").write_text(markdown_report(report), encoding="utf-8")


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N test pages")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench/results", help="output folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run both engines, print the side-by-side table, write the reports."""
    args = parse_args(argv)
    pairs = split_pairs("testing")[: args.limit]
    warmup = split_pairs("training")[0][0]
    images = [str(image) for image, _ in pairs]
    load_start = [round(v, 2) for v in os.getloadavg()]
    runs = {}
    for engine in ENGINES:
        print(f"running {engine} on {len(images)} pages...", file=sys.stderr, flush=True)
        runs[engine] = run_in_fresh_process(engine, images, str(warmup))
    metrics = {engine: evaluate_run(run, [ann for _, ann in pairs]) for engine, run in runs.items()}
    det_dir, rec_dir = _model_dirs()
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average_start": load_start,
        "versions": versions(),
        "settings": {
            "pages": len(images),
            "warmup_page": Path(warmup).name,
            "iou_threshold": IOU_THRESHOLD,
            "det_dir": str(det_dir.relative_to(PROJECT_ROOT)),
            "rec_dir": str(rec_dir.relative_to(PROJECT_ROOT)),
            "paperloop": runs["paperloop"].settings,
        },
        "paddleocr_constructor": runs["paddleocr"].settings["constructor"],
        "metrics": metrics,
        "page_seconds": {engine: [round(t, 4) for t in run.page_seconds] for engine, run in runs.items()},
        "table": table_rows(metrics),
    }
    print(format_table(report["table"]))
    write_report(report, args.out)
    print(f"wrote {args.out / 'ocr.md'} and {args.out / 'ocr.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
