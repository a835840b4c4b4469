"""What every benchmark records beside its numbers: the machine, the versions, the date."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, RAM and load of this machine."""
    cpu_model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    return {
        "cpu_model": cpu_model,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(mem_kib / 1024**2, 1),
        "platform": platform.platform(),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
    }


def versions() -> dict[str, str]:
    """Versions of Python and the libraries measured."""
    import cv2

    found = {"python": platform.python_version(), "opencv (cv2)": cv2.__version__}
    for dist in ("paddlepaddle", "paddleocr", "paddlex", "numpy", "paperloop"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found



def utc_date() -> str:
    """Now, in ISO-8601 UTC, for the report."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_results(out_dir: Path, name: str, report: dict[str, Any], page: str) -> None:
    """Write ``<name>.json`` (the report) and ``<name>.md`` (its page) into ``out_dir`` and print the page."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2))
    (out_dir / f"{name}.md").write_text(page)
    print(page)


def report_header(title: str, report: dict[str, Any]) -> list[str]:
    """A results page's first lines: its title, then the date, machine and versions of ``report``."""
    return [f"# {title}", "", f"Date: {report['date']}  ", f"Machine: {report['machine']}  ",
            f"Versions: {report['versions']}  "]
