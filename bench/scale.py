"""Throughput of the daemon (1 worker × 2 threads, 2 workers × 1 thread, and 1 worker × 1 thread for the
thread scaling that bounds what more workers can add) and of ``paperloop batch`` on a local Ray instance
with 2 CPUs, on the 50 FUNSD test pages, in one run.

Each setting runs as its own child process (``paperloop serve`` on a fresh root whose inbox holds the
pages, or ``paperloop batch`` on a folder of them) against the same model registry. From the jobs'
finish times in SQLite:

- pages/min: ``(N - 1) / (last finish - first finish)``, the steady rate once the first page is out;
- start-up: launch to the first finished page, less one page at the steady rate (models, Ray, actors);
- wall: launch to the last page, start-up included;
- peak RSS: the largest resident set of one process, and of the whole process tree (sampled every 0.2 s).

The ``daemon.workers`` settings are measured only where the config has that key (parallel workers,
issue 14 part 1). The machine this was built on is shared and drifts by 10-30 % between minutes, so
``--repeat R`` runs all settings R times, interleaved: each figure is the median over the rounds, and a
speed-up is the median of each round's own ratio to 1 worker × 2 threads. Run it niced:
``nice .venv/bin/python bench/scale.py --repeat 3``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_info, utc_date, versions, write_results  # noqa: E402
from service.config import DaemonConfig  # noqa: E402
from service.registry import ModelRegistry  # noqa: E402
from service.store import FINISHED_STATES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAGES = REPO.parent / "shared" / "datasets" / "funsd" / "dataset" / "testing_data" / "images"
PAPERLOOP = REPO / ".venv" / "bin" / "paperloop"


def _config(root: Path, models: Path, workers: int | None, threads: int) -> Path:
    data: dict[str, Any] = {
        "paths": {"root": str(root), "models": str(models)},
        "ocr": {"threads": threads},
        "learning": {"enabled": False},
        "watcher": {"quiet_seconds": 0.2},
    }
    if workers is not None:
        data["daemon"] = {"workers": workers}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _finish_times(database: Path) -> list[float]:
    """Finish times of the finished jobs, read-only (the process measured creates and migrates the database;
    a poll while it does so, or while it is locked, reads nothing)."""
    if not database.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1)) as db:
            rows = db.execute(f"SELECT updated_at FROM jobs WHERE state IN ({','.join('?' * len(FINISHED_STATES))})",
                              [str(state) for state in FINISHED_STATES]).fetchall()
    except sqlite3.Error:
        return []
    return sorted(datetime.fromisoformat(updated_at).timestamp() for (updated_at,) in rows)


def _tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """(largest single RSS, sum of RSS) over ``proc`` and its descendants, in bytes."""
    rss = []
    for p in [proc, *proc.children(recursive=True)]:
        try:
            rss.append(p.memory_info().rss)
        except psutil.Error:
            pass
    return (max(rss, default=0), sum(rss))


def run_setting(name: str, command: list[str], root: Path, count: int, timeout: float) -> dict[str, Any]:
    database = root / "data" / "paperloop.db"
    log = (root / "run.log").open("w")
    launched = time.time()
    child = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc = psutil.Process(child.pid)
    peak_one = peak_all = 0
    processes = 0
    finished: list[float] = []
    try:
        while time.time() - launched < timeout:
            one, total = _tree_rss(proc)
            peak_one, peak_all = max(peak_one, one), max(peak_all, total)
            try:
                processes = max(processes, 1 + len(proc.children(recursive=True)))
            except psutil.Error:
                pass
            if child.poll() is not None:
                break
            finished = _finish_times(database)
            if len(finished) >= count and name.startswith("daemon"):
                break
            time.sleep(0.2)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        log.close()
    finished = _finish_times(database)
    if len(finished) < count:
        raise RuntimeError(f"{name}: {len(finished)} of {count} pages finished; see {root / 'run.log'}")
    steady = (count - 1) / (finished[-1] - finished[0]) * 60
    gaps = [b - a for a, b in zip(finished, finished[1:])]
    startup = finished[0] - launched - 60 / steady
    return {
        "setting": name,
        "pages": count,
        "pages_per_minute": round(steady, 1),
        "wall_pages_per_minute": round(count / (finished[-1] - launched) * 60, 1),
        "wall_seconds": round(finished[-1] - launched, 1),
        "startup_seconds": round(startup, 1),
        "median_gap_seconds": round(statistics.median(gaps), 3),
        "peak_rss_mib_one_process": round(peak_one / 2**20),
        "peak_rss_mib_all_processes": round(peak_all / 2**20),
        "processes": processes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=Path, default=PAGES)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--daemon", default="1x2,2x1,1x1",
                        help="daemon settings WORKERSxTHREADS, comma-separated (1x1 bounds what more workers can add)")
    parser.add_argument("--no-ray", action="store_true", help="leave out `paperloop batch` on Ray")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of all settings, interleaved; each figure is the median over the rounds and "
                             "the speed-ups are medians of each round's own ratios (a shared machine drifts)")
    args = parser.parse_args()
    if "1x2" not in args.daemon.split(","):  # checked before minutes of runs, not after them
        parser.error("--daemon must include 1x2: the single worker every speed-up is measured against")

    pages = sorted(args.pages.glob("*.png"))[:args.limit]
    has_workers = "workers" in DaemonConfig.model_fields
    settings: list[tuple[str, int | None, int, str]] = []
    for setting in args.daemon.split(","):
        workers, threads = (int(n) for n in setting.split("x"))
        if workers == 1 and threads == 2 or has_workers:
            settings.append((_daemon_name(workers, threads), workers if has_workers else None, threads, "serve"))
    if not args.no_ray:
        settings.append(("batch, local Ray 2 CPUs (2 actors x 1 thread)", None, 1, "batch"))

    load_start = [round(v, 2) for v in os.getloadavg()]
    runs = []
    for round_number in range(1, args.repeat + 1):
        for name, workers, threads, mode in settings:
            print(f"round {round_number}: {name} ...", file=sys.stderr, flush=True)
            run = _run_once(name, workers, threads, mode, pages, args)
            runs.append({"round": round_number, **run})
            print(runs[-1], file=sys.stderr, flush=True)
    load_end = [round(v, 2) for v in os.getloadavg()]

    rows = [_median_row([r for r in runs if r["setting"] == name]) for name, *_ in settings]
    by = {row["setting"]: row for row in rows}
    speedups = _speedups(runs, _daemon_name(1, 2))
    one = by[_daemon_name(1, 2)]
    two = by.get(_daemon_name(2, 1))
    ray = next((r for r in rows if r["setting"].startswith("batch")), None)
    single = by.get("daemon, 1 worker x 1 thread")
    ceiling = _ceiling(one, single, os.cpu_count() or 1) if single else ""
    line = (f"pages/min: 1 worker {one['pages_per_minute']}, "
            f"2 workers {two['pages_per_minute'] if two else 'n/a (daemon.workers not in this version)'}, "
            f"ray {ray['pages_per_minute'] if ray else 'not run'}")
    machine = machine_info()
    in_service = ModelRegistry(args.models).in_service()
    report = {"date": utc_date(), "machine": machine, "versions": {**versions(), "ray": _ray_version()},
              "pages": [p.name for p in pages], "models": str(args.models), "in_service": in_service, "load_average_start": load_start,
              "load_average_end": load_end, "rounds": args.repeat, "results": rows, "runs": runs,
              "speedup_over_one_worker": speedups, "summary": line}
    columns = ["pages_per_minute", "pages_per_minute_range", "wall_pages_per_minute", "wall_seconds", "startup_seconds", "median_gap_seconds",
               "peak_rss_mib_one_process", "peak_rss_mib_all_processes", "processes"]
    table = ["| setting | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    table += [f"| {name} | " + " | ".join(str(by[name][c]) for c in columns) + " |" for name in by]
    page = "\n".join([
        "# Scale benchmark: daemon workers and `paperloop batch` on Ray (50 FUNSD test pages)",
        "",
        f"- date: {report['date']}",
        f"- machine: {machine['cpu_model']}, {machine['logical_cores']} logical cores "
        f"({machine['usable_cores']} usable), {machine['ram_gib']} GiB RAM, {machine['platform']}",
        f"- load average at start / end: {load_start} / {load_end} (the machine is shared: timings may be "
        "disturbed by concurrent load)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"- pages: {len(pages)} FUNSD test pages; models in service ({args.models}): "
        + ", ".join(f"{task} {version or 'none'}" for task, version in in_service.items()),
        "- each setting is a child process on a fresh root (`paperloop serve` with the pages in its inbox, or "
        "`paperloop batch` on a folder of them); pages/min = (N - 1) / (last finish - first finish) from the jobs' "
        "finish times; start-up = launch to first finished page less one steady page; peak RSS sampled every 0.2 s "
        "over the process tree (Ray: driver, GCS, raylet, workers)",
        f"- rounds: {args.repeat}, the settings interleaved in each; a figure is the median over the rounds"
        if args.repeat > 1 else "- rounds: 1",
        "",
        *table,
        "",
        _speedup_text(speedups, args.repeat),
        "",
        ceiling,
        "",
        line,
        "",
    ])
    write_results(args.out, "scale", report, page)
    print(line)


def _run_once(name: str, workers: int | None, threads: int, mode: str, pages: list[Path],
              args: argparse.Namespace) -> dict[str, Any]:
    """One setting on a fresh root holding copies of ``pages``."""
    root = Path(tempfile.mkdtemp(prefix="paperloop-scale-"))
    try:
        config = _config(root, args.models.resolve(), workers, threads)
        folder = root / ("inbox" if mode == "serve" else "backlog")
        folder.mkdir(parents=True)
        for page in pages:
            shutil.copy2(page, folder / page.name)
        command = [str(PAPERLOOP), "--config", str(config), "serve"] if mode == "serve" else [
            str(PAPERLOOP), "--config", str(config), "batch", str(folder), "--num-cpus", "2", "--no-progress"]
        return run_setting(name, command, root, len(pages), args.timeout)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One setting's runs as one row: the median of each figure (and the spread of pages/min)."""
    row: dict[str, Any] = {"setting": runs[0]["setting"], "pages": runs[0]["pages"]}
    for key, value in runs[0].items():
        if isinstance(value, int) and key not in ("round", "pages"):
            row[key] = statistics.median_low(r[key] for r in runs)  # a count or MiB: one of the runs' own
        elif isinstance(value, float):
            row[key] = round(statistics.median(r[key] for r in runs), 3 if key == "median_gap_seconds" else 1)
    rates = [r["pages_per_minute"] for r in runs]
    row["pages_per_minute_range"] = f"{min(rates)}–{max(rates)}" if len(rates) > 1 else str(rates[0])
    return row


def _speedups(runs: list[dict[str, Any]], baseline: str) -> dict[str, float]:
    """Each setting's pages/min over the baseline's in the same round, median over the rounds."""
    ratios: dict[str, list[float]] = {}
    for round_number in sorted({r["round"] for r in runs}):
        in_round = {r["setting"]: r["pages_per_minute"] for r in runs if r["round"] == round_number}
        for name, rate in in_round.items():
            ratios.setdefault(name, []).append(rate / in_round[baseline])
    return {name: round(statistics.median(values), 2) for name, values in ratios.items() if name != baseline}


def _speedup_text(speedups: dict[str, float], rounds: int) -> str:
    how = f"median of {rounds} rounds' own ratios" if rounds > 1 else "one round"
    return "Speed-up over 1 worker x 2 threads (" + how + "): " + ", ".join(
        f"{name} {ratio:.2f}×" for name, ratio in speedups.items()) + "."


def _daemon_name(workers: int, threads: int) -> str:
    return f"daemon, {workers} worker{'s' if workers > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"


def _ceiling(one: dict[str, Any], single: dict[str, Any], cores: int) -> str:
    """What parallel workers can add on this machine at most: ``cores`` one-thread workers, each as fast
    as one thread alone, against one worker using its threads."""
    scaling = one["pages_per_minute"] / single["pages_per_minute"]
    best = cores * single["pages_per_minute"]
    return (f"Thread scaling: one worker with 2 threads runs {scaling:.2f}× one thread; {cores} one-thread workers "
            f"can at most reach {cores} × {single['pages_per_minute']} = {best:.1f} pages/min on {cores} cores, "
            f"{best / one['pages_per_minute']:.2f}× the single worker.")


def _ray_version() -> str:
    from importlib import metadata

    return metadata.version("ray")


if __name__ == "__main__":
    main()
